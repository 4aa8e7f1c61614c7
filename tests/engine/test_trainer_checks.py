"""The trainer's checks: a config that asks for a GPU the machine lacks, or for a decoupled
stage without the first stage's weights, is refused before anything is built (check_config); a
classifier key that the meta-architecture ignores (MODEL.CLASSIFIER.NAME on a one-stage
detector, MODEL.DENSE_CLASSIFIER.NAME on R-CNN) is refused when the model is built, naming the
key the architecture reads (check_model)."""

import os

import pytest
import torch

from lt_d2.engine import LTTrainer, check_config

from helpers.config import DEMO_CONFIG, REPO, load_config


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_device_without_a_gpu_is_refused():
    with pytest.raises(RuntimeError, match=r"MODEL.DEVICE is 'cuda'.*MODEL.DEVICE cpu"):
        check_config(load_config(DEMO_CONFIG, "MODEL.DEVICE", "cuda"))


def test_decoupled_stage_without_weights_is_refused():
    cfg = load_config(DEMO_CONFIG, "MODEL.DECOUPLE.ENABLED", "True", "MODEL.WEIGHTS", "")
    with pytest.raises(ValueError, match=r"MODEL.DECOUPLE.ENABLED.*set MODEL.WEIGHTS"):
        check_config(cfg)


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
