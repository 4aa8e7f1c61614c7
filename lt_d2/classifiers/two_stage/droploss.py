"""DropLoss (Hsieh et al. 2021), eqs. 5-7.

EQL's weights (eq. 2) for foreground ROIs; for background ROIs each negative term of a tail
category (T_lambda(f_j) = 1, the rare + common categories) is kept with probability
mu = (n_rare + n_common) / n_all, the share of tail categories among the batch's foreground
ROIs, and dropped otherwise.

Shape shorthand: R = ROIs, C = foreground classes.
"""

from typing import Optional

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..compile import compiled_loss, loss_dtype
from .eql import EQL, eql_weights
from .labels import class_counts, class_targets
from .sigmoid_bce import weighted_sigmoid_bce

__all__ = ["DropLoss", "droploss_keep_probs", "droploss_loss", "droploss_uniforms"]


def droploss_keep_probs(
    gt_classes: torch.Tensor, tail: torch.Tensor, frequent_bernoulli: bool = False
) -> torch.Tensor:
    """DropLoss eq. 7: per-category Bernoulli parameter mu_{f_j} of this batch.

    mu_j = (n_rare + n_common) / n_all for tail categories (T_lambda(f_j) = 1), counted over
    the batch's foreground ROIs. For the other (frequent) categories eq. 7 writes
    n_frequent / n_all; the authors' implementation keeps their terms (mu_j = 1). The
    default follows the implementation (the reported numbers), ``frequent_bernoulli=True``
    follows eq. 7 to the letter. A batch without foreground ROIs (n_all = 0) gives no
    evidence to rebalance: every term is kept (mu = 1). Device ops only (no host sync).

    Args:
        gt_classes: (R,) int64 in [0, C], C = background.
        tail: (C,) bool, T_lambda(f_j).

    Returns:
        (C,) mu in [0, 1], float32.
    """
    counts = class_counts(gt_classes, tail.shape[0], torch.float32)  # foreground ROIs per class
    n_all = counts.sum()
    n_tail = (counts * tail).sum()
    share_tail = torch.where(n_all > 0, n_tail / n_all.clamp(min=1.0), torch.ones_like(n_all))
    if frequent_bernoulli:
        share_frequent = torch.where(n_all > 0, 1.0 - share_tail, torch.ones_like(n_all))
    else:
        share_frequent = torch.ones_like(n_all)
    return torch.where(tail, share_tail, share_frequent)


# SplitMix64 (Steele, Lea and Flood 2014, "Fast splittable pseudorandom number generators";
# Vigna's reference splitmix64.c): the golden-ratio increment and the two multipliers of its
# output function, as signed int64 (torch's uint64 has no shifts on the CPU; the bits are the same).
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15 - 2**64
_MIX_1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX_2 = 0x94D049BB133111EB - 2**64


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def droploss_uniforms(seed: torch.Tensor, num_rois: int, num_classes: int) -> torch.Tensor:
    """One u_rj ~ U[0, 1) per (ROI, category) term, the n-th (row-major) the n-th output of
    SplitMix64 started at ``seed``: u = (top 24 bits of mix(seed + (n + 1) gamma)) / 2^24, the
    24-bit grid of ``torch.rand``'s float32 draws.

    A counter-based generator: each draw is a function of (seed, n) alone, computed
    elementwise in plain torch integer arithmetic, so the compiled loss generates the draws
    inside its kernels, recomputes them in backward instead of saving an (R, C) mask, and
    draws exactly what the eager function draws.

    Args:
        seed: int64 scalar tensor (drawn from the classifier's generator every step).

    Returns:
        (R, C) float32.
    """
    n = torch.arange(num_rois, device=seed.device)[:, None] * num_classes
    x = seed + (n + torch.arange(num_classes, device=seed.device) + 1) * _GOLDEN_GAMMA
    x = (x ^ _shift_right(x, 30)) * _MIX_1
    x = (x ^ _shift_right(x, 27)) * _MIX_2
    x = x ^ _shift_right(x, 31)
    return _shift_right(x, 40).to(torch.float32) * 2.0**-24


@compiled_loss
def droploss_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    tail: torch.Tensor,
    mu: torch.Tensor,
    seed: torch.Tensor,
) -> torch.Tensor:
    """DropLoss eqs. 5-6: L = -(1/R) sum_r sum_j w_rj log(p_hat_rj) with eq. 2's weights on
    foreground ROIs (:func:`eql_weights`) and w_rj ~ Ber(mu_j) on background ROIs, drawn
    independently per (ROI, category) term as w_rj = [u_rj < mu_j] (:func:`droploss_uniforms`).

    Args:
        logits: (R, C), any float dtype (computed in float32). gt_classes: (R,) in [0, C].
        tail: (C,) bool, T_lambda(f_j). mu: (C,) float32 keep probabilities
            (:func:`droploss_keep_probs`). seed: int64 scalar tensor of the draws.
    """
    z = logits.to(loss_dtype(logits))
    y = class_targets(gt_classes, z.shape[1])
    u = droploss_uniforms(seed, z.shape[0], z.shape[1])
    # [u < mu] as [u - mu < 0] (the same test: a float difference is exact in sign): the
    # compiler saves, rather than recomputes, an op with a 4x smaller output than its inputs,
    # which u < mu with its (C,) operand is -- an (R, C) mask kept for backward
    keep = (u - mu) < 0  # eq. 6
    w = eql_weights(y, gt_classes, tail, keep.to(z.dtype))
    return weighted_sigmoid_bce(z, y, w)  # eq. 5


@CLASSIFIER_REGISTRY.register()
class DropLoss(EQL):
    """DropLoss eqs. 5-7: L = -sum_j w_j log(p_hat_j) with
    w_j = 1 - T_lambda(f_j)(1 - y_j) for foreground ROIs and w_j ~ Ber(mu_{f_j}) for
    background ROIs.

    Args:
        kwargs: :class:`EQL`'s arguments (the tail: lambda or frequency groups).
        frequent_bernoulli: also drop frequent categories' background terms, with
            mu = n_frequent / n_all (eq. 7 as printed); False keeps them, as the authors'
            code does (see :func:`droploss_keep_probs`).
        generator: random source of the Bernoulli draws: one int64 seed per step, from which
            :func:`droploss_uniforms` derives the draws (None: torch's default generator,
            seeded by ``torch.manual_seed``); it must live on the logits' device.
    """

    @configurable
    def __init__(
        self,
        *,
        frequent_bernoulli: bool = False,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.frequent_bernoulli = frequent_bernoulli
        self.generator = generator

    @classmethod
    def from_config(cls, cfg, num_classes: int, category_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, category_stats)
        ret["frequent_bernoulli"] = cfg.MODEL.CLASSIFIER.DROP_LOSS.FREQUENT_BERNOULLI
        return ret

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """Eqs. 5-7: this batch's mu (eq. 7), a seed for its Bernoulli draws (eq. 6) from the
        generator, the loss (:func:`droploss_loss`)."""
        mu = droploss_keep_probs(gt_classes, self.tail, self.frequent_bernoulli)
        seed = torch.randint(
            -(2**63), 2**63 - 1, (), generator=self.generator, device=logits.device
        )
        return droploss_loss(logits, gt_classes, self.tail, mu, seed)
