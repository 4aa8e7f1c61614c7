"""FederatedSigmoidBCE: the class subset (official definition) and the masked BCE."""

import math

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import build_classifier
from lt_d2.classifiers.two_stage.federated import FederatedSigmoidBCE, federated_classes
from lt_d2.config import add_lt_config
from lt_d2.data.category_stats import CategoryStats


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_subset_holds_batch_classes_and_has_the_official_size():
    C = 120
    counts = torch.arange(C, dtype=torch.float32) % 7  # every 7th category has no image
    weights = counts.sqrt()
    g = _gen()
    cases = [
        ([3, 3, 17, 64, C, C], True),  # background present: it counts towards the 50
        ([3, 17, 64, 99], False),  # foreground only: 50 foreground classes
        (list(range(1, 70)) + [C], True),  # |U| = 70 >= 50: nothing drawn
    ]
    for gt, has_bg in cases:
        for _ in range(20):
            mask = federated_classes(torch.tensor(gt), weights, 50, generator=g)
            fg = sorted({c for c in gt if c < C})
            assert mask[fg].all()
            expected = max(50, len(fg) + has_bg) - has_bg  # |S| = max(50, |U|), bg included
            assert int(mask.sum()) == expected
            drawn = mask.clone()
            drawn[fg] = False
            assert not (drawn & (counts == 0)).any()  # zero-image categories never drawn


def test_small_vocabulary_takes_every_candidate():
    # 6 categories, 50 requested: every category with an image is in S, the others only if
    # they are ground truth of the batch
    weights = torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0, 4.0])
    mask = federated_classes(torch.tensor([0, 2, 6]), weights, 50, generator=_gen())
    assert mask.tolist() == [True, True, True, False, True, True]
    assert not federated_classes(torch.tensor([], dtype=torch.long), weights, 50).any()


def _binomial_check(hits: torch.Tensor, probs: torch.Tensor, n: int) -> None:
    """Observed inclusion frequencies within 5 binomial standard deviations of ``probs``."""
    tol = 5 * torch.sqrt(probs * (1 - probs) / n)
    assert ((hits / n - probs).abs() <= tol).all(), (hits / n, probs, tol)


def test_one_draw_follows_image_count_power():
    # image counts j^2 -> weights j with power 0.5; U = {0, 1, background}; 4 - 3 = 1 draw
    counts = torch.tensor([(j + 1) ** 2 for j in range(8)], dtype=torch.float32)
    weights = counts**0.5
    gt = torch.tensor([0, 1, 8, 8])
    n = 20000
    g = _gen(1)
    hits = torch.zeros(8)
    for _ in range(n):
        hits += federated_classes(gt, weights, 4, generator=g).float()
    assert hits[:2].tolist() == [n, n]
    w = torch.tensor([float(j + 1) for j in range(2, 8)])  # sqrt of the counts, by hand
    _binomial_check(hits[2:], w / w.sum(), n)


def test_two_draws_without_replacement_inclusion_probabilities():
    # two successive draws without replacement: P(j in S) = p_j + sum_{i != j} p_i p_j / (1 - p_i)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    p = w / w.sum()
    expected = torch.stack(
        [p[j] + sum(p[i] * p[j] / (1 - p[i]) for i in range(4) if i != j) for j in range(4)]
    )
    weights = torch.cat([torch.ones(1), w.float()])  # class 0 is the batch's ground truth
    n = 20000
    g = _gen(2)
    hits = torch.zeros(5, dtype=torch.float64)
    for _ in range(n):
        hits += federated_classes(torch.tensor([0, 5]), weights, 4, generator=g).double()
    assert hits[0] == n
    assert hits.sum() == 3 * n  # ground truth + 2 drawn, every time
    _binomial_check(hits[1:], expected, n)


def test_loss_and_gradient_are_the_masked_bce():
    # categories 0, 2, 5 have no training image: U = {1, 3, bg}, one draw -> category 4
    C = 6
    clf = FederatedSigmoidBCE(
        num_classes=C, image_counts=[0, 3, 0, 5, 7, 0], num_sampled=4, generator=_gen()
    )
    torch.manual_seed(0)
    logits = torch.randn(5, C, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([1, C, C, 3, C])
    loss = clf.losses(logits, gt)["loss_cls"]
    loss.backward()
    z = logits.detach()
    p = 1 / (1 + torch.exp(-z))
    y = torch.zeros(5, C, dtype=torch.float64)
    y[0, 1] = y[3, 3] = 1
    m = torch.tensor([0.0, 1, 0, 1, 1, 0], dtype=torch.float64)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    torch.testing.assert_close(loss, (bce * m).sum() / 5)
    torch.testing.assert_close(logits.grad, (p - y) * m / 5)


def test_random_subset_in_training_masks_the_gradient():
    C = 200
    clf = FederatedSigmoidBCE(num_classes=C, image_counts=list(range(1, C + 1)), generator=_gen())
    logits = torch.randn(64, C, requires_grad=True)
    gt = torch.full((64,), C)
    gt[:10] = torch.tensor([5, 5, 7, 9, 11, 13, 150, 150, 190, 199])
    clf.losses(logits, gt)["loss_cls"].backward()
    columns = (logits.grad != 0).any(dim=0)
    assert columns[gt[:10]].all()
    assert int(columns.sum()) == 49  # 50 labels of the batch's subset, background included


def test_from_config_uses_image_counts_and_official_defaults():
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.CLASSIFIER.NAME = "FederatedSigmoidBCE"
    assert cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.NUM_CLASSES == 50
    assert cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.FREQ_WEIGHT_POWER == 0.5
    stats = CategoryStats(instance_counts=[5, 40, 900], image_counts=[4, 25, 400], num_images=1000)
    clf = build_classifier(cfg, num_classes=3, category_stats=stats)
    torch.testing.assert_close(clf.sample_weights, torch.tensor([2.0, 5.0, 20.0]))
    bias = torch.empty(3)
    clf.init_bias(bias)
    torch.testing.assert_close(bias.sigmoid(), torch.full((3,), 0.01))  # PRIOR_PROB 0.01
    assert clf.num_logits == 3
    probs = clf.predict_probs(torch.zeros(2, 3))
    assert probs.shape == (2, 4) and math.isclose(float(probs[0, 0]), 0.5)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="image_counts"):
        FederatedSigmoidBCE(num_classes=3, image_counts=[1, 2])
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        FederatedSigmoidBCE(num_classes=3, image_counts=[1, 2, 3], num_sampled=0)
    with pytest.raises(ValueError, match="FREQ_WEIGHT_POWER"):
        FederatedSigmoidBCE(num_classes=3, image_counts=[1, 2, 3], freq_weight_power=-1)
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.CLASSIFIER.NAME = "FederatedSigmoidBCE"
    with pytest.raises(ValueError, match="category statistics"):
        build_classifier(cfg, num_classes=3, category_stats=None)
