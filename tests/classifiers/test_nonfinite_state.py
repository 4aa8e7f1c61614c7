"""A non-finite logit (a diverging model) never enters a classifier's accumulated state: that
category's update is skipped, the others applied, and the skip is reported once with the
classifier's name and the categories."""

import pytest
import torch

from lt_d2.classifiers.dense.efl import EqualizedFocalLoss
from lt_d2.classifiers.dense.eqlv2_focal import EQLv2Focal
from lt_d2.classifiers.gradient_stats import GradientStats
from lt_d2.classifiers.two_stage.eqlv2 import EQLv2
from lt_d2.classifiers.two_stage.eqlv2_softmax2c import EQLv2Softmax2C
from lt_d2.classifiers.two_stage.softmax_ce import SoftmaxCE
from lt_d2.engine.hooks import nonfinite_update_warnings

C = 4


def two_stage_batch(bad_value, num_logits=C + 1):
    """Six ROIs, ROI 3 a background ROI whose logit of category 2 is ``bad_value``."""
    torch.manual_seed(0)
    gt = torch.tensor([0, 1, C, C, 3, C])
    logits = torch.randn(len(gt), num_logits)
    logits[3, 2] = bad_value  # a negative of category 2
    return logits, gt


@pytest.mark.parametrize("cls", [EQLv2, EQLv2Softmax2C])
def test_nan_logit_is_not_folded_into_eqlv2_state(cls):
    clf = cls(num_classes=C).train()
    clf.losses(*two_stage_batch(float("nan"), num_logits=clf.num_logits))
    assert torch.isfinite(clf.pos_grad).all() and torch.isfinite(clf.neg_grad).all()
    assert clf.neg_grad[2] == 0  # category 2's update skipped, the others applied
    assert (clf.neg_grad[[0, 1, 3]] > 0).all()
    q, r = clf.weights()
    assert torch.isfinite(q).all() and torch.isfinite(r).all()
    (message,) = nonfinite_update_warnings(clf, names=["a", "b", "c", "d"])
    assert cls.__name__ in message and "categories 2 (c)" in message
    assert nonfinite_update_warnings(clf) == []  # reported once


@pytest.mark.parametrize("cls", [EqualizedFocalLoss, EQLv2Focal])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_logit_is_not_folded_into_dense_state(cls, bad):
    clf = cls(num_classes=C).train()
    torch.manual_seed(0)
    logits = torch.randn(8, C, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 3, C, C, C, -1])
    with torch.no_grad():
        logits[5, 1] = bad
    clf.losses(logits, gt, normalizer=4.0)
    assert torch.isfinite(clf.pos_grad).all() and torch.isfinite(clf.neg_grad).all()
    assert clf.neg_grad[1] == 0 and clf.pos_grad[1] == 0
    assert (clf.neg_grad[[0, 2, 3]] > 0).all()
    (message,) = nonfinite_update_warnings(clf)
    assert cls.__name__ in message and "categories 1 " in message


def test_nan_gradient_is_not_folded_into_gradient_stats():
    stats = GradientStats(SoftmaxCE(num_classes=C)).train()
    logits, gt = two_stage_batch(float("nan"))
    logits.requires_grad_(True)
    watched = stats.observe(logits, gt)
    torch.nn.functional.cross_entropy(watched, gt).backward()
    balance = stats.synced()
    assert torch.isfinite(balance.pos).all() and torch.isfinite(balance.neg).all()
    (message,) = nonfinite_update_warnings(stats)
    assert "GradientStats" in message
