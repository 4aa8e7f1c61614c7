import math

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import build_classifier
from lt_d2.classifiers.two_stage.background_eql import BackgroundEQL, background_eql_weights
from lt_d2.classifiers.two_stage.eql import EQL
from lt_d2.config import add_lt_config
from lt_d2.data.category_stats import CategoryStats

C = 6
STATS = CategoryStats(
    instance_counts=[2, 5, 30, 60, 400, 2000],
    image_counts=[2, 4, 20, 50, 300, 900],
    num_images=1000,
)
LAMBDA = 0.1  # tail = categories 0-3
TAIL = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def _naive_weights(logits, gt, b):
    """DropLoss eq. 4, per term."""
    w = torch.ones_like(logits)
    for r in range(logits.shape[0]):
        for j in range(C):
            p = 1 / (1 + math.exp(-logits[r, j].item()))
            if gt[r] < C:  # E(r) = 1: eq. 2
                w[r, j] = 1 - TAIL[j] * (0.0 if gt[r] == j else 1.0)
            else:
                w[r, j] = 1 - TAIL[j] * min(-math.log(p) / math.log(b), 1.0)
    return w


def _clf(b=4.0):
    return BackgroundEQL(num_classes=C, image_frequency=STATS.image_frequency, lambda_=LAMBDA, b=b)


def test_loss_and_gradient_match_eq4():
    torch.manual_seed(0)
    logits = (torch.randn(8, C, dtype=torch.float64) * 2).requires_grad_(True)
    gt = torch.tensor([0, 4, 6, 6, 6, 6, 2, 5])
    loss = _clf().losses(logits, gt)["loss_cls"]
    w = _naive_weights(logits.detach(), gt, 4.0)
    p = 1 / (1 + torch.exp(-logits.detach()))
    y = torch.nn.functional.one_hot(gt, C + 1)[:, :C].double()
    expected = -(w * (y * torch.log(p) + (1 - y) * torch.log(1 - p))).sum() / 8
    torch.testing.assert_close(loss, expected)
    # the weight is a constant of the loss: d/dz = w (p - y) / R
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, w * (p - y) / 8)


def test_background_weight_curve():
    # b = 4: a tail score p <= 1/4 drops the term, p = 1/2 halves it, frequent keeps 1
    z = torch.tensor([[math.log(0.2 / 0.8), 0.0, 3.0, -9.0, -9.0, -9.0]], dtype=torch.float64)
    w = background_eql_weights(z, _clf().tail, 4.0)  # as for a background ROI
    expected = [0.0, 0.5, 1 - math.log(1 + math.exp(-3.0)) / math.log(4), 0.0, 1.0, 1.0]
    torch.testing.assert_close(w[0], torch.tensor(expected, dtype=torch.float64))


def test_large_base_reduces_to_eql():
    torch.manual_seed(1)
    logits = torch.randn(5, C)
    gt = torch.tensor([6, 6, 1, 4, 6])
    eql = EQL(num_classes=C, image_frequency=STATS.image_frequency, lambda_=LAMBDA)
    # -log_b(p) = ln(1/p) / ln(b) -> 0 as b -> inf: every weight returns to EQL's 1
    torch.testing.assert_close(
        _clf(b=math.inf).losses(logits, gt)["loss_cls"], eql.losses(logits, gt)["loss_cls"]
    )
    assert _clf(b=1e6).losses(logits, gt)["loss_cls"] < eql.losses(logits, gt)["loss_cls"]


def test_config_extreme_logits_empty_and_bad_input():
    cfg = get_cfg()
    add_lt_config(cfg)
    assert cfg.MODEL.CLASSIFIER.BACKGROUND_EQL.B == 4.0
    cfg.MODEL.CLASSIFIER.NAME = "BackgroundEQL"
    cfg.MODEL.CLASSIFIER.BACKGROUND_EQL.B = 2.0
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = LAMBDA
    assert build_classifier(cfg, C, STATS).b == 2.0
    logits = torch.tensor([[100.0, -100.0] * 3] * 3, requires_grad=True)
    loss = _clf().losses(logits, torch.tensor([0, 6, 6]))["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    empty = torch.zeros(0, C, requires_grad=True)
    loss = _clf().losses(empty, torch.zeros(0, dtype=torch.long))["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="gt_classes must lie in"):
        _clf().losses(torch.zeros(1, C), torch.tensor([7]))
    with pytest.raises(ValueError, match="must be > 1"):
        _clf(b=1.0)
