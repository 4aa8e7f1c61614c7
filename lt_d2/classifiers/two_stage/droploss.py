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

__all__ = ["DropLoss", "droploss_draws", "droploss_keep_probs", "droploss_loss"]


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


def droploss_draws(
    num_rois: int, mu: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """DropLoss eq. 6: w_rj ~ Ber(mu_j), drawn independently per (ROI, category) term.

    w_rj = [u_rj < mu_j] with u_rj ~ U[0, 1): one uniform per term in row-major order,
    foreground rows included (eq. 2 replaces them), so no host synchronisation is needed.
    On the CPU these are exactly the draws of ``torch.bernoulli(mu.expand(R, C),
    generator=generator)`` (the same generator stream), kept as bool (a quarter of its float
    result).

    Args:
        num_rois: R.
        mu: (C,) float32 keep probabilities (:func:`droploss_keep_probs`).
        generator: random source (seedable); None uses torch's default generator.

    Returns:
        (R, C) bool.
    """
    u = torch.rand((num_rois, mu.shape[0]), generator=generator, dtype=mu.dtype, device=mu.device)
    return u < mu


@compiled_loss
def droploss_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, tail: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """DropLoss eqs. 5-6: L = -(1/R) sum_r sum_j w_rj log(p_hat_rj) with eq. 2's weights on
    foreground ROIs (:func:`eql_weights`) and the Bernoulli draws ``keep`` on background ROIs.

    Args:
        logits: (R, C), any float dtype (computed in float32). gt_classes: (R,) in [0, C].
        tail: (C,) bool, T_lambda(f_j). keep: (R, C) bool draws of :func:`droploss_draws`.
    """
    z = logits.to(loss_dtype(logits))
    y = class_targets(gt_classes, z.shape[1])
    w = eql_weights(y, gt_classes, tail, keep.to(z.dtype))  # eq. 6
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
        generator: random source of the Bernoulli draws (None: torch's default generator,
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
        """Eqs. 5-7: this batch's mu (eq. 7), one Bernoulli draw per term (eq. 6), the loss
        (:func:`droploss_loss`)."""
        mu = droploss_keep_probs(gt_classes, self.tail, self.frequent_bernoulli)
        keep = droploss_draws(logits.shape[0], mu, self.generator)
        return droploss_loss(logits, gt_classes, self.tail, keep)
