"""Box regression losses in delta space: smooth L1 (detectron2's) and Libra R-CNN's balanced
L1 (sec. 3.3.1, eqs. 8-10) and LGR-L1 (sec. 3.3.2, eqs. 13-14).

All take predicted and target box deltas of the same shape (any shape, typically (R, 4) for
R foreground boxes) and return the loss summed ("sum"), averaged ("mean") or per element
("none"). ``beta`` is the transition point |x| = beta between the inner (inlier) and outer
pieces of each loss. The paper states balanced L1 at beta = 1 only; for another beta (Libra
RetinaNet: 0.11) the authors' implementation (mmdetection's ``balanced_l1_loss``) uses its own
pieces (form "official", the default), and form "rescaled" is ``beta * L_b(x / beta)``,
whose gradient stays exactly eq. (8) evaluated at x / beta. LGR-L1 is rescaled.
"""

import math
from typing import Dict

import torch
from fvcore.nn import smooth_l1_loss
from torch import Tensor

__all__ = [
    "BALANCED_L1_FORMS",
    "BOX_REGRESSION_LOSSES",
    "LT_BOX_REGRESSION_LOSSES",
    "balanced_l1_loss",
    "box_regression_loss",
    "box_regression_loss_args",
    "lgr_l1_loss",
]


# The losses lt_d2 adds to detectron2's own box regression losses (smooth L1, GIoU, ...): the
# heads compute these through box_regression_loss and leave the others to detectron2.
LT_BOX_REGRESSION_LOSSES = ("balanced_l1", "lgr_l1")
BOX_REGRESSION_LOSSES = ("smooth_l1",) + LT_BOX_REGRESSION_LOSSES
# How balanced L1 extends eq. (9) to a transition point beta != 1 (equal at beta = 1).
BALANCED_L1_FORMS = ("official", "rescaled")


def _check_balanced_args(alpha: float, gamma: float, beta: float) -> float:
    """Validate (alpha, gamma, beta) and return b of eq. (10): alpha ln(b + 1) = gamma."""
    if alpha <= 0 or gamma <= 0:
        raise ValueError(
            f"balanced L1 needs alpha > 0 and gamma > 0, got alpha={alpha}, gamma={gamma} "
            "(MODEL.BALANCED_L1.ALPHA / GAMMA; the paper uses 0.5 / 1.5)."
        )
    if beta <= 0:
        raise ValueError(
            f"balanced L1 / LGR-L1 need a transition point beta > 0, got {beta} "
            "(MODEL.BALANCED_L1.BETA; the paper uses 1.0)."
        )
    return math.expm1(gamma / alpha)


def _unknown_loss(loss_type: str) -> ValueError:
    return ValueError(
        f"Unknown box regression loss {loss_type!r}; valid delta-space losses are "
        f"{BOX_REGRESSION_LOSSES} (BBOX_REG_LOSS_TYPE)."
    )


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    if reduction == "none":
        return loss
    raise ValueError(f"Unknown reduction {reduction!r}; use 'sum', 'mean' or 'none'.")


def balanced_l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    form: str = "official",
    reduction: str = "sum",
) -> Tensor:
    """Balanced L1 loss, eq. (9), with b from eq. (10), extended to a transition point beta.

    With x = input - target, a = |x| and b = e^(gamma/alpha) - 1, at beta = 1 both forms are
    eq. (9) with the constant C = gamma / b - alpha that makes it continuous at a = 1:

        L_b(x) = alpha/b (b a + 1) ln(b a + 1) - alpha a    if a < 1
               = gamma a + C                                otherwise

    whose gradient is eq. (8): alpha ln(b a + 1) sign(x) inside, gamma sign(x) outside.
    For beta != 1:

    - "official", the authors' implementation (mmdetection's ``balanced_l1_loss``, used with
      beta = 0.11 by Libra RetinaNet): alpha/b (b a + 1) ln(b a / beta + 1) - alpha a if
      a < beta, gamma a + gamma / b - alpha beta otherwise (neither the value nor the
      gradient is continuous at a = beta unless beta = 1);
    - "rescaled": beta L_b(x / beta), continuous with gradient eq. (8) at x / beta.

    Args:
        input: (*) predicted deltas.
        target: (*) target deltas, same shape.
        alpha: inlier gradient promotion (paper: 0.5).
        gamma: outlier gradient bound (paper: 1.5).
        beta: transition point (paper: 1.0).
        form: "official" or "rescaled" (:data:`BALANCED_L1_FORMS`).
        reduction: "sum", "mean" or "none".
    """
    b = _check_balanced_args(alpha, gamma, beta)
    if form not in BALANCED_L1_FORMS:
        raise ValueError(
            f"MODEL.BALANCED_L1.FORM = {form!r} is unknown; choose one of {BALANCED_L1_FORMS}"
        )
    diff = torch.abs(input - target)
    log_term = torch.log1p(b * diff / beta)
    if form == "official":
        inner = alpha / b * (b * diff + 1) * log_term - alpha * diff
        outer = gamma * diff + gamma / b - alpha * beta
    else:
        inner = alpha / b * (b * diff / beta + 1) * log_term * beta - alpha * diff
        outer = gamma * diff + (gamma / b - alpha) * beta
    return _reduce(torch.where(diff < beta, inner, outer), reduction)


def lgr_l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    reduction: str = "sum",
) -> Tensor:
    """LGR-L1 (logarithmic gradient re-weighting of smooth L1), eqs. (13)-(14).

    The smooth L1 loss L_s (eq. 11, transition at beta) weighted by the detached ratio
    rho = G_b / G_s of the balanced-L1 gradient (eq. 8) to the smooth-L1 gradient (eq. 12):

        rho = alpha ln(b t + 1) / t   if t = |x| / beta < 1   (alpha b at x = 0, its limit)
            = gamma                   otherwise
        L = rho L_s(x)

    so the gradient equals balanced L1's while the value differs.

    Args:
        input: (*) predicted deltas.
        target: (*) target deltas, same shape.
        alpha, gamma: as in :func:`balanced_l1_loss` (paper: 0.5, 1.5), b from eq. (10).
        beta: transition point (paper: 1.0).
        reduction: "sum", "mean" or "none".
    """
    b = _check_balanced_args(alpha, gamma, beta)
    smooth = smooth_l1_loss(input, target, beta, reduction="none")
    with torch.no_grad():
        t = torch.abs(input - target) / beta
        ratio_inner = alpha * torch.log1p(b * t) / t.clamp(min=1e-12)
        rho = torch.where(t < 1e-12, torch.full_like(t, alpha * b), ratio_inner)
        rho = torch.where(t < 1, rho, torch.full_like(t, gamma))
    return _reduce(rho * smooth, reduction)


def box_regression_loss(
    loss_type: str,
    pred_deltas: Tensor,
    gt_deltas: Tensor,
    *,
    beta: float,
    reduction: str = "sum",
    alpha: float = 0.5,
    gamma: float = 1.5,
    form: str = "official",
) -> Tensor:
    """The box regression loss named ``loss_type`` (a BBOX_REG_LOSS_TYPE value).

    Args:
        loss_type: "smooth_l1" (fvcore's, detectron2's default), "balanced_l1" or "lgr_l1".
        pred_deltas: (*) predicted deltas.
        gt_deltas: (*) target deltas, same shape.
        beta: the loss's transition point (smooth L1: the head's SMOOTH_L1_BETA, where
            < 1e-5 means plain L1; balanced/LGR: MODEL.BALANCED_L1.BETA).
        reduction: "sum", "mean" or "none".
        alpha, gamma: balanced L1 / LGR-L1 parameters (unused by smooth L1).
        form: balanced L1's extension to beta != 1 (:func:`balanced_l1_loss`).

    :func:`box_regression_loss_args` gives ``beta``, ``alpha``, ``gamma`` (and ``form``)
    from a config.
    """
    if loss_type == "smooth_l1":
        return _reduce(smooth_l1_loss(pred_deltas, gt_deltas, beta, reduction="none"), reduction)
    if loss_type == "balanced_l1":
        return balanced_l1_loss(
            pred_deltas,
            gt_deltas,
            alpha=alpha,
            gamma=gamma,
            beta=beta,
            form=form,
            reduction=reduction,
        )
    if loss_type == "lgr_l1":
        return lgr_l1_loss(
            pred_deltas, gt_deltas, alpha=alpha, gamma=gamma, beta=beta, reduction=reduction
        )
    raise _unknown_loss(loss_type)


def box_regression_loss_args(cfg, loss_type: str, smooth_l1_beta: float) -> Dict[str, float]:
    """Keyword arguments of :func:`box_regression_loss` for ``loss_type`` from a config:
    the head's own ``smooth_l1_beta`` for smooth L1, MODEL.BALANCED_L1's BETA / ALPHA /
    GAMMA for balanced L1 and LGR-L1 (one set of parameters: LGR's rho is defined by
    balanced L1's gradient, eq. 13), and its FORM for balanced L1."""
    if loss_type == "smooth_l1":
        return {"beta": smooth_l1_beta}
    if loss_type in BOX_REGRESSION_LOSSES:
        node = cfg.MODEL.BALANCED_L1
        args = {"beta": node.BETA, "alpha": node.ALPHA, "gamma": node.GAMMA}
        if loss_type == "balanced_l1":
            args["form"] = node.FORM
        return args
    raise _unknown_loss(loss_type)
