import math

import pytest
import torch

from lt_d2.modeling.box_losses import (
    balanced_l1_loss,
    box_regression_loss,
    box_regression_loss_args,
    lgr_l1_loss,
)

ALPHA, GAMMA = 0.5, 1.5
B = math.exp(GAMMA / ALPHA) - 1  # eq. (10): alpha ln(b + 1) = gamma
GRID = [-3.0, -1.5, -1.0, -0.7, -0.3, -0.01, 0.0, 0.02, 0.25, 0.5, 0.99, 1.0, 1.2, 2.5]


def _eq9(x, alpha=ALPHA, gamma=GAMMA):
    """Balanced L1 at beta = 1, eq. (9), with C from continuity at |x| = 1."""
    b = math.exp(gamma / alpha) - 1
    c = alpha / b * (b + 1) * math.log(b + 1) - alpha - gamma  # inner(1) - gamma * 1
    a = abs(x)
    if a < 1:
        return alpha / b * (b * a + 1) * math.log(b * a + 1) - alpha * a
    return gamma * a + c


def _eq8(x, alpha=ALPHA, gamma=GAMMA):
    """Gradient of eq. (9) w.r.t. x: eq. (8) times sign(x)."""
    b = math.exp(gamma / alpha) - 1
    a = abs(x)
    sign = (x > 0) - (x < 0)
    return sign * (alpha * math.log(b * a + 1) if a < 1 else gamma)


def _grid_tensors():
    target = torch.linspace(-1, 1, len(GRID), dtype=torch.float64)
    x = torch.tensor(GRID, dtype=torch.float64)
    pred = (target + x).requires_grad_()
    return pred, target


def test_balanced_l1_value_and_gradient_match_eqs_8_and_9():
    pred, target = _grid_tensors()
    loss = balanced_l1_loss(pred, target, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([_eq9(x) for x in GRID], dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    torch.testing.assert_close(grad, torch.tensor([_eq8(x) for x in GRID], dtype=torch.float64))
    # Other (alpha, gamma) of Table 6.
    loss = balanced_l1_loss(pred, target, alpha=0.2, gamma=1.0, reduction="none")
    expected = [_eq9(x, 0.2, 1.0) for x in GRID]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_rescaled_balanced_l1_is_continuous_at_beta():
    for beta in (1.0, 0.11):
        eps = 1e-9
        x = torch.tensor([beta - eps, beta, beta + eps], dtype=torch.float64)
        loss = balanced_l1_loss(
            x, torch.zeros_like(x), beta=beta, form="rescaled", reduction="none"
        )
        assert abs(loss[0] - loss[2]) < 1e-7
        # Gradient continuous too (eq. 10): alpha ln(b + 1) = gamma on both sides.
        x.requires_grad_()
        loss = balanced_l1_loss(
            x, torch.zeros_like(x), beta=beta, form="rescaled", reduction="none"
        )
        (grad,) = torch.autograd.grad(loss.sum(), x)
        torch.testing.assert_close(grad, torch.full_like(grad, GAMMA), atol=1e-6, rtol=0)


def test_balanced_l1_with_beta_is_a_rescaled_eq_9():
    beta = 0.25
    pred, target = _grid_tensors()
    loss = balanced_l1_loss(pred, target, beta=beta, form="rescaled", reduction="none")
    expected = torch.tensor([beta * _eq9(x / beta) for x in GRID], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    torch.testing.assert_close(
        grad, torch.tensor([_eq8(x / beta) for x in GRID], dtype=torch.float64)
    )


def _official(x, beta, alpha=ALPHA, gamma=GAMMA):
    """The authors' balanced L1 (mmdetection's ``balanced_l1_loss``), written out:
    a = |x|, b = e^(gamma/alpha) - 1;
    a < beta: alpha/b (b a + 1) ln(b a / beta + 1) - alpha a; else gamma a + gamma/b - alpha beta.
    """
    b = math.exp(gamma / alpha) - 1
    a = abs(x)
    if a < beta:
        return alpha / b * (b * a + 1) * math.log(b * a / beta + 1) - alpha * a
    return gamma * a + gamma / b - alpha * beta


@pytest.mark.parametrize("beta", [1.0, 0.11])
def test_balanced_l1_is_the_official_formula(beta):
    grid = GRID + [0.05, -0.1, 0.109, 0.111]  # both sides of beta = 0.11
    x = torch.tensor(grid, dtype=torch.float64)
    target = torch.zeros_like(x)
    for kwargs in ({}, {"form": "official"}):  # the default form is the official one
        loss = balanced_l1_loss(x, target, beta=beta, reduction="none", **kwargs)
        expected = torch.tensor([_official(v, beta) for v in grid], dtype=torch.float64)
        torch.testing.assert_close(loss, expected)
    if beta == 1.0:
        # at beta = 1 the official formula is eq. (9) itself, and so is the rescaled form
        torch.testing.assert_close(loss, torch.tensor([_eq9(v) for v in grid]).double())
        rescaled = balanced_l1_loss(x, target, form="rescaled", reduction="none")
        torch.testing.assert_close(rescaled, loss)
    else:
        rescaled = balanced_l1_loss(x, target, beta=beta, form="rescaled", reduction="none")
        assert not torch.allclose(rescaled, loss)


def _eq14(x, beta=1.0):
    """LGR-L1, eqs. (13)-(14), on the smooth L1 of eq. (11) with transition at beta."""
    t = abs(x) / beta
    smooth = 0.5 * x * x / beta if t < 1 else abs(x) - 0.5 * beta
    if t == 0:
        rho = ALPHA * B  # limit of alpha ln(b t + 1) / t at 0
    else:
        rho = ALPHA * math.log(B * t + 1) / t if t < 1 else GAMMA
    return rho * smooth


def test_lgr_l1_value_matches_eq_14_and_gradient_equals_balanced_l1():
    for beta in (1.0, 0.5):
        pred, target = _grid_tensors()
        loss = lgr_l1_loss(pred, target, beta=beta, reduction="none")
        expected = torch.tensor([_eq14(x, beta) for x in GRID], dtype=torch.float64)
        torch.testing.assert_close(loss, expected)
        # rho detached: dL/dx = rho * G_s = G_b, eq. (8) at x / beta.
        (grad,) = torch.autograd.grad(loss.sum(), pred)
        torch.testing.assert_close(
            grad, torch.tensor([_eq8(x / beta) for x in GRID], dtype=torch.float64)
        )


def test_dispatch_reductions_and_empty_input():
    torch.manual_seed(0)
    pred, gt = torch.randn(6, 4), torch.randn(6, 4)
    diff = (pred - gt).abs()
    smooth = torch.where(diff < 0.5, 0.5 * diff**2 / 0.5, diff - 0.25)
    torch.testing.assert_close(box_regression_loss("smooth_l1", pred, gt, beta=0.5), smooth.sum())
    torch.testing.assert_close(
        box_regression_loss("smooth_l1", pred, gt, beta=0.0, reduction="mean"), diff.mean()
    )
    torch.testing.assert_close(
        box_regression_loss("balanced_l1", pred, gt, beta=1.0, reduction="none"),
        balanced_l1_loss(pred, gt, reduction="none"),
    )
    torch.testing.assert_close(
        box_regression_loss("lgr_l1", pred, gt, beta=1.0, alpha=0.8, gamma=1.0),
        lgr_l1_loss(pred, gt, alpha=0.8, gamma=1.0),
    )
    empty = torch.zeros(0, 4, requires_grad=True)
    for name in ("smooth_l1", "balanced_l1", "lgr_l1"):
        for reduction in ("sum", "mean"):
            loss = box_regression_loss(name, empty, empty.detach(), beta=1.0, reduction=reduction)
            assert loss.item() == 0.0 and loss.requires_grad


def test_config_args():
    from detectron2.config import get_cfg

    from lt_d2.config import add_lt_config

    cfg = get_cfg()
    add_lt_config(cfg)
    assert box_regression_loss_args(cfg, "smooth_l1", 0.1) == {"beta": 0.1}
    assert box_regression_loss_args(cfg, "balanced_l1", 0.0) == {
        "beta": 1.0,
        "alpha": 0.5,
        "gamma": 1.5,
        "form": "official",
    }
    assert box_regression_loss_args(cfg, "lgr_l1", 0.0) == {"beta": 1.0, "alpha": 0.5, "gamma": 1.5}


def test_bad_input():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="smooth_l1.*balanced_l1.*lgr_l1"):
        box_regression_loss("giou_l1", x, x, beta=1.0)
    with pytest.raises(ValueError, match="beta > 0"):
        box_regression_loss("balanced_l1", x, x, beta=0.0)
    with pytest.raises(ValueError, match="alpha > 0"):
        lgr_l1_loss(x, x, alpha=0.0)
    with pytest.raises(ValueError, match="reduction"):
        balanced_l1_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="MODEL.BALANCED_L1.FORM = 'mmdet' is unknown"):
        balanced_l1_loss(x, x, form="mmdet")
