"""[EFL] Table 3's switches (MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.WEIGHTING_FACTOR /
FOCUSING_FACTOR): each component of eq. 4 off on its own, built from a config."""

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import build_dense_classifier
from lt_d2.config import add_lt_config

# accumulated gradients of 3 categories: g = clamp(pos / neg, 0, 1) = 0.25, 1 (1.5 clamped),
# and 1 for a category without negative gradient yet (sec. 3.2)
POS = [1.0, 3.0, 0.0]
NEG = [4.0, 2.0, 0.0]
GAMMA_B, S = 2.0, 8.0
# eq. 3: gamma_j = gamma_b + s (1 - g_j); eq. 4: weight gamma_j / gamma_b
GAMMA = [GAMMA_B + S * (1 - 0.25), GAMMA_B, GAMMA_B]  # 8, 2, 2
WEIGHT = [g / GAMMA_B for g in GAMMA]  # 4, 1, 1


@pytest.mark.parametrize(
    "weighting, focusing, gamma, weight",
    [
        (True, True, GAMMA, WEIGHT),  # EFL (Table 3, last row)
        (True, False, [GAMMA_B] * 3, WEIGHT),  # WF only: gamma_b for every category
        (False, True, GAMMA, [1.0] * 3),  # FF only: no re-weighting
        (False, False, [GAMMA_B] * 3, [1.0] * 3),  # focal loss (the improved baseline)
    ],
)
def test_each_factor_switches_off_alone(weighting, focusing, gamma, weight):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.DENSE_CLASSIFIER.NAME = "EqualizedFocalLoss"
    node = cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS
    assert node.WEIGHTING_FACTOR and node.FOCUSING_FACTOR  # the paper's EFL by default
    node.WEIGHTING_FACTOR, node.FOCUSING_FACTOR = weighting, focusing
    efl = build_dense_classifier(cfg, 3)
    efl.pos_grad.copy_(torch.tensor(POS))
    efl.neg_grad.copy_(torch.tensor(NEG))
    got_gamma, got_weight = efl.factors()
    torch.testing.assert_close(got_gamma, torch.tensor(gamma, dtype=got_gamma.dtype))
    torch.testing.assert_close(got_weight, torch.tensor(weight, dtype=got_weight.dtype))
