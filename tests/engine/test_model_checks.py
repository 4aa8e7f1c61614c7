"""The trainer's model checks: a classifier key that the meta-architecture ignores
(MODEL.CLASSIFIER.NAME on a one-stage detector, MODEL.DENSE_CLASSIFIER.NAME on R-CNN) is
refused, naming the key the architecture reads."""

import os

import pytest

from lt_d2.engine import LTTrainer

from helpers.config import REPO, load_config


@pytest.mark.parametrize(
    "config, key, value, use",
    [
        ("efl/efl_atss_R_18_FPN_demo.yaml", "MODEL.CLASSIFIER.NAME", "EQLv2", "DENSE_CLASSIFIER"),
        ("efl/efl_retinanet_R_18_FPN_demo.yaml", "MODEL.CLASSIFIER.NAME", "BAGS", "DENSE_"),
        (
            "softmax_mask_rcnn_R_18_FPN_demo.yaml",
            "MODEL.DENSE_CLASSIFIER.NAME",
            "EQLv2Focal",
            "MODEL.CLASSIFIER.NAME",
        ),
    ],
)
def test_classifier_key_ignored_by_the_meta_architecture_is_refused(config, key, value, use):
    cfg = load_config(os.path.join(REPO, "configs", "demo", config), key, value)
    with pytest.raises(ValueError, match=rf"{key} = '{value}' is ignored.*{use}"):
        LTTrainer.build_model(cfg)
