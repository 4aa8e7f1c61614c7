"""BAGS against the paper's sec. 4 rules, with group targets derived by hand here.

Hand-built setting: C = 6 categories with training instance counts [5, 3, 50, 20, 500, 2000],
so with bounds (0, 10, 100, 1000): G1 = {0, 1}, G2 = {2, 3}, G3 = {4}, G4 = {5}.
Layout: categories 0..5, background 6, G0 "others" (foreground) 7, "others" of G1..G4 at
8, 9, 10, 11 (L = 12).
"""

import math

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import CLASSIFIER_REGISTRY, build_classifier
from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats

COUNTS = [5, 3, 50, 20, 500, 2000]
BG = 6


def stats(counts=COUNTS):
    return CategoryStats(instance_counts=counts, image_counts=[1] * len(counts), num_images=5)


def bags(**kwargs):
    return CLASSIFIER_REGISTRY.get("BAGS")(
        num_classes=len(COUNTS), category_stats=stats(), **kwargs
    )


def ce(z, row, columns, target_column):
    """-log softmax over ``columns`` of row ``row`` at ``target_column`` (eq. 4/5)."""
    lse = torch.logsumexp(torch.stack([z[row, c] for c in columns]), dim=0)
    return lse - z[row, target_column]


def test_layout():
    model = bags()
    assert model.num_logits == 12 and model.logit_columns() == list(range(6))
    # group of each column: G1 = {0, 1, 8}, G2 = {2, 3, 9}, G3 = {4, 10}, G4 = {5, 11},
    # G0 = {background 6, "others" 7}
    assert model.column_group.tolist() == [1, 1, 2, 2, 3, 4, 0, 0, 1, 2, 3, 4]


def test_loss_and_gradient_all_others_used():
    """gt = [0, 2, 3, bg, bg, bg, bg], beta = 8: G1 has 1 foreground ROI, so up to 8 others
    but only 6 exist -> all; G2 has 2 -> up to 16, all 5 used; G3, G4 have no foreground ROI
    -> ignored; G0 uses all 7 ROIs."""
    torch.manual_seed(0)
    z = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([0, 2, 3, BG, BG, BG, BG])
    g0 = sum(ce(z, i, [6, 7], 7 if i < 3 else 6) for i in range(7)) / 7
    # G1: row 0 is category 0 (column 0); rows 1..6 are "others" (column 8)
    g1 = (ce(z, 0, [0, 1, 8], 0) + sum(ce(z, i, [0, 1, 8], 8) for i in range(1, 7))) / 7
    # G2: row 1 is category 2 (column 2), row 2 category 3 (column 3); rows 0, 3..6 others
    g2 = ce(z, 1, [2, 3, 9], 2) + ce(z, 2, [2, 3, 9], 3)
    g2 = (g2 + sum(ce(z, i, [2, 3, 9], 9) for i in (0, 3, 4, 5, 6))) / 7
    expected = g0 + g1 + g2
    (exp_grad,) = torch.autograd.grad(expected, z)

    logits = z.detach().float().requires_grad_(True)
    loss = bags().losses(logits, gt)["loss_cls"]
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(logits.grad, exp_grad.float(), rtol=1e-5, atol=1e-6)
    # ignored groups receive no gradient
    assert logits.grad[:, [4, 5, 10, 11]].abs().sum() == 0


def test_others_are_sampled_at_ratio_beta():
    """beta = 1, gt = [0, 2, 3, bg, bg, bg, bg]: G1 samples 1 of its 6 "others" candidates,
    G2 samples 2 of its 5. Giving all candidate rows the same logits makes the loss independent
    of which rows are drawn; the gradient shows how many were drawn, and from where."""
    z = torch.zeros(7, 12, dtype=torch.float64)
    z[:, [6, 7]] = torch.tensor([0.3, -0.2], dtype=torch.float64)
    z[0, [0, 1, 8]] = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    z[1:, [0, 1, 8]] = torch.tensor([0.2, 0.7, -0.4], dtype=torch.float64)  # G1 candidates
    z[1, [2, 3, 9]] = torch.tensor([0.9, 0.1, -0.3], dtype=torch.float64)
    z[2, [2, 3, 9]] = torch.tensor([-0.5, 0.4, 0.0], dtype=torch.float64)
    # G2 candidates (rows 0, 3..6) keep identical all-zero logits in columns 2, 3, 9
    z.requires_grad_(True)
    gt = torch.tensor([0, 2, 3, BG, BG, BG, BG])
    g0 = sum(ce(z, i, [6, 7], 7 if i < 3 else 6) for i in range(7)) / 7
    g1 = (ce(z, 0, [0, 1, 8], 0) + 1 * ce(z, 1, [0, 1, 8], 8)) / (1 + 1)
    g2 = (ce(z, 1, [2, 3, 9], 2) + ce(z, 2, [2, 3, 9], 3) + 2 * ce(z, 0, [2, 3, 9], 9)) / (2 + 2)
    expected = (g0 + g1 + g2).item()
    model = bags(beta=1.0)
    drawn_g1, drawn_g2 = set(), set()
    for seed in range(20):
        torch.manual_seed(seed)
        logits = z.detach().float().requires_grad_(True)
        loss = model.losses(logits, gt)["loss_cls"]
        loss.backward()
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        rows_g1 = logits.grad[1:, [0, 1, 8]].abs().sum(1).nonzero().flatten() + 1
        rows_g2 = logits.grad[[0, 3, 4, 5, 6]][:, [2, 3, 9]].abs().sum(1).nonzero().flatten()
        assert len(rows_g1) == 1 and len(rows_g2) == 2
        drawn_g1.update(rows_g1.tolist())
        drawn_g2.update(rows_g2.tolist())
    assert len(drawn_g1) > 1 and len(drawn_g2) > 2  # random draws, not a fixed subset


def test_predict_probs_is_sec_4_4():
    torch.manual_seed(1)
    z = torch.randn(3, 12)
    scores = bags().predict_probs(z)
    assert scores.shape == (3, 7)
    for i in range(3):
        e = [math.exp(v) for v in z[i].tolist()]
        p_fg = e[7] / (e[6] + e[7])
        g1 = e[0] + e[1] + e[8]
        g2 = e[2] + e[3] + e[9]
        expected = [
            e[0] / g1 * p_fg,
            e[1] / g1 * p_fg,
            e[2] / g2 * p_fg,
            e[3] / g2 * p_fg,
            e[4] / (e[4] + e[10]) * p_fg,
            e[5] / (e[5] + e[11]) * p_fg,
            1 - p_fg,
        ]
        assert scores[i].tolist() == pytest.approx(expected, rel=1e-5)


def test_empty_group_is_an_error():
    counts = [5, 3, 50, 20, 500, 600]  # nothing reaches 1000 instances
    with pytest.raises(ValueError, match=r"G4 \(training instance counts in \[1000, inf\)\)"):
        CLASSIFIER_REGISTRY.get("BAGS")(num_classes=6, category_stats=stats(counts))
    with pytest.raises(ValueError, match=r"G2 .*\[10, 100\)"):
        CLASSIFIER_REGISTRY.get("BAGS")(num_classes=3, category_stats=stats([5, 500, 2000]))
    with pytest.raises(ValueError, match="CategoryStats"):
        CLASSIFIER_REGISTRY.get("BAGS")(num_classes=6, category_stats=None)


def test_extreme_logits_empty_input_and_state():
    model = bags()
    gt = torch.tensor([0, 1, 2, 3, 4, 5, BG])
    for value in (100.0, -100.0):
        logits = torch.full((7, 12), value, requires_grad=True)
        logits.data[:, ::2] *= -1  # mixed signs
        loss = model.losses(logits, gt)["loss_cls"]
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
        assert torch.isfinite(model.predict_probs(logits.detach())).all()
    empty = torch.zeros(0, 12, requires_grad=True)
    loss = model.losses(empty, torch.zeros(0, dtype=torch.long))["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 12)
    assert model.predict_probs(torch.zeros(0, 12)).shape == (0, 7)
    # groups derive from the statistics, not from checkpoints: no persistent state
    assert len(model.state_dict()) == 0
    with pytest.raises(ValueError, match="num_logits"):
        model.losses(torch.zeros(2, 7), torch.tensor([0, BG]))


def test_built_from_config():
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.CLASSIFIER.NAME = "BAGS"
    model = build_classifier(cfg, 6, stats())
    assert model.group_bounds == (0, 10, 100, 1000) and model.beta == 8.0
    cfg.MODEL.CLASSIFIER.BAGS.GROUP_BOUNDS = [0, 100]
    model = build_classifier(cfg, 6, stats())
    assert model.num_logits == 6 + 2 + 2
    # G1 = categories 0-3 and its "others" 8, G2 = categories 4, 5 and "others" 9
    assert model.column_group.tolist() == [1, 1, 1, 1, 2, 2, 0, 0, 1, 2]
