import math

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import build_classifier
from lt_d2.classifiers.two_stage.bucketed import BucketedSigmoidBCE, bucketed_class_weights
from lt_d2.config import add_lt_config
from lt_d2.data.category_stats import CategoryStats

STATS = CategoryStats(
    instance_counts=[2, 5, 30, 60, 400, 2000],
    image_counts=[2, 4, 20, 50, 300, 900],
    num_images=1000,
)


def _w(x, a=0.5, t=0.025):
    return 1 / (1 + math.exp(-(x - a) / t))  # Libra eq. 23


def test_bucket_weights_eqs_21_to_23():
    # ln f = 0, 0.69, 1.39, 7.60, 13.82; 10 ranges of width 1.3816 over [0, 13.82]
    # -> bucket s = 0, 0, 1, 5, 9 (the maximum in the last range), x = s / 9
    freq = torch.tensor([1.0, 2.0, 4.0, 2000.0, 1e6])
    expected = torch.tensor([_w(0.0), _w(0.0), _w(1 / 9), _w(5 / 9), _w(1.0)])
    torch.testing.assert_close(bucketed_class_weights(freq, 10, 0.5, 0.025), expected)
    # only ratios matter: scaling every frequency leaves the buckets unchanged
    torch.testing.assert_close(bucketed_class_weights(freq / 57, 10, 0.5, 0.025), expected)
    # a category never seen joins the rarest bucket
    with_zero = torch.tensor([0.0, 1.0, 2.0, 4.0, 2000.0, 1e6])
    torch.testing.assert_close(
        bucketed_class_weights(with_zero, 10, 0.5, 0.025)[:2], torch.tensor([_w(0.0)] * 2)
    )
    # equal frequencies: nothing to rebalance, weight sigmoid(0.5 / 0.025) ~ 1
    torch.testing.assert_close(
        bucketed_class_weights(torch.ones(3), 10, 0.5, 0.025), torch.full((3,), _w(1.0))
    )
    with pytest.raises(ValueError, match="at least one positive"):
        bucketed_class_weights(torch.zeros(3), 10, 0.5, 0.025)
    with pytest.raises(ValueError, match="S >= 2"):
        bucketed_class_weights(torch.ones(3), 1, 0.5, 0.025)


def test_loss_and_gradient_match_eq20():
    freq = [1.0, 2.0, 4.0, 2000.0, 1e6]
    cw = [_w(0.0), _w(0.0), _w(1 / 9), _w(5 / 9), _w(1.0)]
    C = 5
    clf = BucketedSigmoidBCE(num_classes=C, frequency=freq)
    torch.manual_seed(0)
    logits = torch.randn(6, C, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([0, 4, 5, 5, 2, 3])
    loss = clf.losses(logits, gt)["loss_cls"]
    expected = logits.new_zeros(())
    w = torch.ones(6, C, dtype=torch.float64)
    for r in range(6):
        for j in range(C):
            p = 1 / (1 + torch.exp(-logits[r, j].detach()))
            if gt[r] == j:  # the target class: weight 1
                expected = expected - torch.log(p)
            else:  # every other class (all of them for background ROIs): w_j
                w[r, j] = cw[j]
                expected = expected - cw[j] * torch.log(1 - p)
    torch.testing.assert_close(loss, expected / 6)
    (grad,) = torch.autograd.grad(loss, logits)
    y = torch.nn.functional.one_hot(gt, C + 1)[:, :C].double()
    torch.testing.assert_close(grad, w * (torch.sigmoid(logits.detach()) - y) / 6)


def test_config_frequency_choice():
    cfg = get_cfg()
    add_lt_config(cfg)
    node = cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE
    assert (node.S, node.A, node.T, node.FREQUENCY) == (10, 0.5, 0.025, "image")
    cfg.MODEL.CLASSIFIER.NAME = "BucketedSigmoidBCE"
    by_image = build_classifier(cfg, 6, STATS).class_weights
    expected = bucketed_class_weights(torch.tensor(STATS.image_frequency), 10, 0.5, 0.025)
    torch.testing.assert_close(by_image, expected)
    node.FREQUENCY = "instance"
    by_instance = build_classifier(cfg, 6, STATS).class_weights
    expected = bucketed_class_weights(torch.tensor([2.0, 5, 30, 60, 400, 2000]), 10, 0.5, 0.025)
    torch.testing.assert_close(by_instance, expected)
    node.FREQUENCY = "box"
    with pytest.raises(ValueError, match="FREQUENCY must be"):
        build_classifier(cfg, 6, STATS)
    with pytest.raises(ValueError, match="category statistics"):
        build_classifier(cfg, 6, None)


def test_predict_probs_extreme_empty_and_bad_input():
    C = 6
    clf = BucketedSigmoidBCE(num_classes=C, frequency=STATS.image_frequency)
    z = torch.randn(3, C)
    probs = clf.predict_probs(z)
    torch.testing.assert_close(probs[:, :C], torch.sigmoid(z))
    torch.testing.assert_close(probs[:, C], 1 - torch.sigmoid(z).amax(1))
    logits = torch.tensor([[100.0, -100.0] * 3] * 3, requires_grad=True)
    loss = clf.losses(logits, torch.tensor([0, C, 5]))["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    empty = torch.zeros(0, C, requires_grad=True)
    loss = clf.losses(empty, torch.zeros(0, dtype=torch.long))["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0
    fresh = BucketedSigmoidBCE(num_classes=C, frequency=STATS.image_frequency)
    with pytest.raises(ValueError, match="gt_classes must lie in"):
        fresh.losses(torch.zeros(1, C), torch.tensor([7]))
    with pytest.raises(ValueError, match="one entry per class"):
        BucketedSigmoidBCE(num_classes=C + 1, frequency=STATS.image_frequency)
