import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import build_classifier
from lt_d2.classifiers.two_stage.droploss import (
    DropLoss,
    droploss_keep_probs,
    droploss_uniforms,
)
from lt_d2.classifiers.two_stage.sigmoid_bce import SigmoidBCE
from lt_d2.config import add_lt_config
from lt_d2.data.category_stats import CategoryStats

C = 6
STATS = CategoryStats(
    instance_counts=[2, 5, 30, 60, 400, 2000],
    image_counts=[2, 4, 20, 50, 300, 900],
    num_images=1000,
)
LAMBDA = 0.1  # T_lambda = 1 (rare + common) for categories 0-3, frequent: 4, 5
TAIL = torch.tensor([1.0, 1, 1, 1, 0, 0])
BG = C


def _clf(**kw):
    return DropLoss(num_classes=C, image_frequency=STATS.image_frequency, lambda_=LAMBDA, **kw)


def _bce_terms(logits, gt):
    """-log(p_hat) per term (DropLoss eq. 5), written out."""
    p = 1 / (1 + torch.exp(-logits))
    y = torch.nn.functional.one_hot(gt, C + 1)[:, :C].to(logits.dtype)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)), p, y


def test_keep_probability_eq7():
    # foreground: 1 tail (class 2) and 3 frequent ROIs -> mu = 1/4 for tail categories
    gt = torch.tensor([2, 4, 5, 5, BG, BG])
    tail = TAIL.bool()
    expected = torch.tensor([0.25, 0.25, 0.25, 0.25, 1.0, 1.0])
    torch.testing.assert_close(droploss_keep_probs(gt, tail), expected)
    # eq. 7 as printed: frequent categories get n_frequent / n_all = 3/4
    expected[4:] = 0.75
    torch.testing.assert_close(droploss_keep_probs(gt, tail, frequent_bernoulli=True), expected)
    # no foreground ROI: nothing to rebalance, keep every term
    for frequent_bernoulli in (False, True):
        mu = droploss_keep_probs(torch.tensor([BG, BG]), tail, frequent_bernoulli)
        torch.testing.assert_close(mu, torch.ones(C))


def test_deterministic_cases_exact_loss_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, C, dtype=torch.float64, requires_grad=True)
    # only frequent foreground -> mu_tail = 0: background ROIs drop every tail term
    gt = torch.tensor([4, 5, BG, BG, BG])
    terms, p, y = _bce_terms(logits.detach(), gt)
    w = torch.ones(5, C, dtype=torch.float64)
    w[:2] = 1 - TAIL.double() * (1 - y[:2])  # eq. 2 for foreground rows
    w[2:, :4] = 0.0  # Ber(0) for the tail terms of background rows
    loss = _clf().losses(logits, gt)["loss_cls"]
    torch.testing.assert_close(loss, (w * terms).sum() / 5)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, w * (p - y) / 5)
    # only tail foreground -> mu_tail = 1: background rows keep everything (plain BCE there)
    gt = torch.tensor([0, 3, BG, BG, BG])
    w = torch.ones(5, C, dtype=torch.float64)
    terms, p, y = _bce_terms(logits.detach(), gt)
    w[:2] = 1 - TAIL.double() * (1 - y[:2])
    torch.testing.assert_close(_clf().losses(logits, gt)["loss_cls"], (w * terms).sum() / 5)


def _splitmix64(state: int) -> int:
    """SplitMix64's output for one state (Vigna's splitmix64.c), in Python integers mod 2^64."""
    mask = 2**64 - 1
    z = state & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def _uniforms(seed: int, rows: int, cols: int) -> torch.Tensor:
    """The n-th term's uniform: the top 24 bits of SplitMix64's n-th output after ``seed``."""
    gamma = 0x9E3779B97F4A7C15
    u = [(_splitmix64(seed + (n + 1) * gamma) >> 40) / 2**24 for n in range(rows * cols)]
    return torch.tensor(u, dtype=torch.float64).reshape(rows, cols)


def test_uniforms_are_splitmix64():
    # the published first output of SplitMix64 started at 0
    assert _splitmix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    for seed in (0, 12345, -(2**63), 2**63 - 2):
        u = droploss_uniforms(torch.tensor(seed), 3, 7)
        assert u.dtype == torch.float32
        torch.testing.assert_close(u.double(), _uniforms(seed, 3, 7), rtol=0, atol=0)


def test_seeded_generator_exact_values():
    torch.manual_seed(0)
    logits = torch.randn(6, C, dtype=torch.float64)
    gt = torch.tensor([2, 4, 5, 5, BG, BG])  # mu_tail = 1/4
    loss = _clf(generator=torch.Generator().manual_seed(7)).losses(logits, gt)["loss_cls"]
    # the step's seed is one int64 drawn from the generator; the draws w = [u < mu] are the
    # seed's SplitMix64 uniforms, one per (ROI, category); the foreground rows' are discarded
    seed = torch.randint(-(2**63), 2**63 - 1, (), generator=torch.Generator().manual_seed(7))
    mu = torch.tensor([0.25, 0.25, 0.25, 0.25, 1.0, 1.0], dtype=torch.float64)
    draws = (_uniforms(int(seed), 6, C) < mu).double()[4:]
    terms, _, y = _bce_terms(logits, gt)
    w = torch.ones(6, C, dtype=torch.float64)
    w[:4] = 1 - TAIL.double() * (1 - y[:4])
    w[4:] = draws
    assert draws[:, 4:].eq(1).all() and draws[:, :4].eq(0).any()
    torch.testing.assert_close(loss, (w * terms).sum() / 6)
    # reproducible with the default generator too, and a new draw every step
    torch.manual_seed(3)
    clf = _clf()
    first = clf.losses(logits, gt)["loss_cls"]
    second = clf.losses(logits, gt)["loss_cls"]
    torch.manual_seed(3)
    torch.testing.assert_close(_clf().losses(logits, gt)["loss_cls"], first)
    assert second != first


def test_draws_independent_across_terms():
    # 20000 background ROIs x 6 categories at mu = 1/2 (2 tail + 2 frequent foreground ROIs):
    # the kept-indicators of neighbouring terms (same row, next column; same column, next
    # row) and of consecutive steps are uncorrelated
    n_bg = 20000
    gt = torch.cat([torch.tensor([2, 3, 4, 5]), torch.full((n_bg,), BG)])
    clf = _clf(frequent_bernoulli=True, generator=torch.Generator().manual_seed(1))
    kept = []
    for _ in range(2):
        logits = torch.zeros(len(gt), C, requires_grad=True)
        clf.losses(logits, gt)["loss_cls"].backward()
        kept.append((logits.grad[4:] != 0).double())
    k = kept[0]
    torch.testing.assert_close(k.mean(), torch.tensor(0.5, dtype=torch.float64), atol=0.01, rtol=0)
    # correlation of two independent Ber(1/2) sequences of n terms: standard deviation 1/sqrt(n)
    for a, b in ((k[:, 1:], k[:, :-1]), (k[1:], k[:-1]), (kept[1], k)):
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(float(r)) < 5 / (a.numel() ** 0.5), float(r)


@pytest.mark.parametrize("frequent_bernoulli", [False, True])
def test_drop_rate_statistics(frequent_bernoulli):
    # 1 tail + 3 frequent foreground ROIs, 20000 background ROIs: the gradient of a
    # background term is p_j / R when kept and exactly 0 when dropped
    n_bg = 20000
    gt = torch.cat([torch.tensor([2, 4, 5, 5]), torch.full((n_bg,), BG)])
    logits = torch.zeros(len(gt), C, requires_grad=True)
    clf = _clf(frequent_bernoulli=frequent_bernoulli, generator=torch.Generator().manual_seed(0))
    clf.losses(logits, gt)["loss_cls"].backward()
    kept = (logits.grad[4:] != 0).double().mean(dim=0)
    expected = torch.tensor([0.25] * 4 + ([0.75] * 2 if frequent_bernoulli else [1.0] * 2))
    # binomial standard deviation sqrt(0.25 * 0.75 / 20000) ~ 0.003
    torch.testing.assert_close(kept, expected.double(), atol=0.015, rtol=0)


def test_config_extreme_logits_empty_and_bad_input():
    cfg = get_cfg()
    add_lt_config(cfg)
    assert cfg.MODEL.CLASSIFIER.DROP_LOSS.FREQUENT_BERNOULLI is False
    cfg.MODEL.CLASSIFIER.NAME = "DropLoss"
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = LAMBDA
    clf = build_classifier(cfg, C, STATS)
    assert clf.tail.tolist() == [True] * 4 + [False] * 2 and not clf.frequent_bernoulli
    logits = torch.tensor([[100.0, -100.0] * 3] * 3, requires_grad=True)
    loss = clf.losses(logits, torch.tensor([0, BG, BG]))["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    empty = torch.zeros(0, C, requires_grad=True)
    loss = clf.losses(empty, torch.zeros(0, dtype=torch.long))["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="gt_classes must lie in"):
        build_classifier(cfg, C, STATS).losses(torch.zeros(1, C), torch.tensor([7]))
    # predict_probs is the sigmoid family's
    z = torch.randn(3, C)
    torch.testing.assert_close(clf.predict_probs(z), SigmoidBCE(num_classes=C).predict_probs(z))
