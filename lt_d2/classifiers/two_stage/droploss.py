"""DropLoss (Hsieh et al. 2021), eqs. 5-7.

EQL's weights (eq. 2) for foreground ROIs; for background ROIs each negative term of a tail
category (T_lambda(f_j) = 1, the rare + common categories) is kept with probability
mu = (n_rare + n_common) / n_all, the share of tail categories among the batch's foreground
ROIs, and dropped otherwise.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
from typing import Optional

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..kernels import positive_entries
from .eql import EQL, BackgroundWeights

__all__ = ["DropLoss", "droploss_keep_probs", "droploss_background_weights"]

logger = logging.getLogger(__name__)


def droploss_keep_probs(
    targets: torch.Tensor, tail: torch.Tensor, frequent_bernoulli: bool = False
) -> torch.Tensor:
    """DropLoss eq. 7: per-category Bernoulli parameter mu_{f_j} of this batch.

    mu_j = (n_rare + n_common) / n_all for tail categories (T_lambda(f_j) = 1), counted over
    the batch's foreground ROIs. For the other (frequent) categories eq. 7 writes
    n_frequent / n_all; the authors' implementation keeps their terms (mu_j = 1). The
    default follows the implementation (the reported numbers), ``frequent_bernoulli=True``
    follows eq. 7 to the letter. A batch without foreground ROIs (n_all = 0) gives no
    evidence to rebalance: every term is kept (mu = 1).

    Args:
        targets: (R, C) binary targets y, sparse or dense (:func:`positive_entries`; one 1
            per foreground ROI, background rows zero).
        tail: (C,) bool, T_lambda(f_j).

    Returns:
        (C,) mu in [0, 1], float32 on ``targets``' device.
    """
    _, classes = positive_entries(targets.detach())
    # (C,) foreground ROIs per category
    counts = torch.bincount(classes, minlength=tail.shape[0]).to(torch.float32)
    n_all = counts.sum()
    n_tail = (counts * tail).sum()
    share_tail = torch.where(n_all > 0, n_tail / n_all.clamp(min=1.0), torch.ones_like(n_all))
    if frequent_bernoulli:
        share_frequent = torch.where(n_all > 0, 1.0 - share_tail, torch.ones_like(n_all))
    else:
        share_frequent = torch.ones_like(n_all)
    return torch.where(tail, share_tail, share_frequent)


def droploss_background_weights(
    num_rois: int, mu: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """DropLoss eq. 6, the background rows: w_rj ~ Ber(mu_j), drawn independently per term.

    w_rj = [u_rj < mu_j] with u_rj ~ U[0, 1): one uniform per (ROI, category) in row-major
    order, foreground rows included (the caller overwrites them), so the computation needs
    no host synchronisation. On the CPU these are exactly the draws of
    ``torch.bernoulli(mu.expand(R, C), generator=generator)`` (the same generator stream),
    at half its cost.

    Args:
        num_rois: R.
        mu: (C,) float32 keep probabilities (:func:`droploss_keep_probs`).
        generator: random source (seedable); None uses torch's default generator.

    Returns:
        (R, C) weights in {0, 1}, in the dtype of ``mu``.
    """
    u = torch.rand((num_rois, mu.shape[0]), generator=generator, dtype=mu.dtype, device=mu.device)
    return u.lt_(mu)


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

    def background_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> BackgroundWeights:
        """Bernoulli draws of eq. 6 with this batch's mu (eq. 7), row-major over all (R, C)
        terms.

        The CPU generator's stream is sequential, so drawing each row chunk when the kernel
        asks for it (once per chunk, in row order) gives exactly the draws of one (R, C) call,
        without an (R, C) buffer. Other devices' generators (CUDA's Philox) give other numbers
        for split calls: there the (R, C) draws are made at once.
        """
        mu = droploss_keep_probs(targets, self.tail, self.frequent_bernoulli)
        if logits.device.type == "cpu":
            return lambda rows, z, p, out: droploss_background_weights(
                rows.stop - rows.start, mu, self.generator
            )
        draws = droploss_background_weights(logits.shape[0], mu, self.generator)
        return lambda rows, z, p, out: draws[rows]
