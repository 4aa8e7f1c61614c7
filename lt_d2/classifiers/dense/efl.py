"""Equalized Focal Loss (Li et al. 2022, EFL eqs. 2-4).

Focal loss with a category-relevant modulating factor: category j's focusing factor is

    gamma_j = gamma_b + s (1 - g_j)                                   (eq. 3)

and its loss is re-weighted by gamma_j / gamma_b (eq. 4). g_j is the ratio of the positive to
the negative gradient magnitudes accumulated on category j's logits, clamped to [0, 1]
(sec. 3.2, "we clamp the value of g^j in the range [0, 1]"): a rare category, whose positive
gradients are swamped by negative ones (g_j near 0), gets a larger focusing factor and a
larger weight; a balanced one (g_j = 1) is trained with plain focal loss.

The loss is FocalLoss's :func:`~lt_d2.classifiers.dense.focal.sigmoid_focal_loss` with these
two factors per category; only they are EFL's.

State: ``pos_grad`` and ``neg_grad`` (C,) float64 buffers, the magnitudes of the gradient of
``loss_cls`` with respect to category j's logits, summed over all anchors, images, workers and
iterations so far. The loss function returns them in closed form from the detached
probabilities (no backward hook), so neither a loss scale nor a weight applied to ``loss_cls``
outside reaches them; the ratio uses the state before the current batch. With no negative
gradient seen yet (the initial all-zero state), g_j = 1, so the first iteration is exactly
focal loss.
A category whose increment is not finite (a NaN logit, or +inf for the focal losses) keeps its
state and is counted; the trainer warns, naming it (:mod:`lt_d2.classifiers.state`: skipped on
the device rather than raised, so no host sync per step).

Shape shorthand: N = anchors of the whole batch, C = foreground classes.
"""

from typing import Dict, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from ..base import DENSE_CLASSIFIER_REGISTRY, DenseClassifier, prior_bias
from ..state import AccumulatedGradientsMixin
from .focal import sigmoid_focal_loss

__all__ = ["EqualizedFocalLoss", "efl_factors"]


def efl_factors(
    pos_grad: torch.Tensor, neg_grad: torch.Tensor, gamma_b: float, s: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """EFL's focusing and weighting factors from the accumulated gradients (eqs. 3-4).

    g_j = clamp(pos_grad_j / neg_grad_j, 0, 1), with g_j = 1 while neg_grad_j = 0;
    gamma_j = gamma_b + s (1 - g_j); weighting factor gamma_j / gamma_b.

    Args:
        pos_grad: (C,) accumulated positive gradient magnitudes (>= 0).
        neg_grad: (C,) accumulated negative gradient magnitudes (>= 0).

    Returns:
        gamma: (C,) focusing factors, weight: (C,) weighting factors.
    """
    seen = neg_grad > 0
    ratio = pos_grad / torch.where(seen, neg_grad, torch.ones_like(neg_grad))
    g = torch.where(seen, ratio, torch.ones_like(ratio)).clamp(0.0, 1.0)
    gamma = gamma_b + s * (1.0 - g)
    return gamma, gamma / gamma_b


@DENSE_CLASSIFIER_REGISTRY.register()
class EqualizedFocalLoss(AccumulatedGradientsMixin, DenseClassifier):
    """Equalized Focal Loss (EFL eq. 4).

    loss_cls = (1 / normalizer) sum_i sum_j -alpha_t (gamma_j / gamma_b)
               (1 - p_t)^gamma_j log p_t.

    Args:
        num_classes: C.
        alpha: alpha_t of positives, 1 - alpha of negatives (sec. 4.1: 0.25).
        gamma_b: category-agnostic focusing factor (sec. 4.1: 2).
        s: scale of the category-specific part of the focusing factor (sec. 4.1: 8).
        prior: the classification bias starts at logit(prior) (sec. 4.1: 0.001).
        weighting_factor: re-weight category j's loss by gamma_j / gamma_b (eq. 4); False:
            weight 1 (Table 3, "FF" only).
        focusing_factor: focus category j with gamma_j (eq. 3); False: gamma_b for every
            category, the weight still gamma_j / gamma_b (Table 3, "WF" only, sec. 4.3).
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        alpha: float = 0.25,
        gamma_b: float = 2.0,
        s: float = 8.0,
        prior: float = 0.001,
        weighting_factor: bool = True,
        focusing_factor: bool = True,
    ):
        super().__init__(num_classes=num_classes)
        prior_bias(prior)  # validates
        if gamma_b <= 0:
            raise ValueError(f"EFL's gamma_b must be > 0 (it divides the weight), got {gamma_b}")
        self.alpha = alpha
        self.gamma_b = gamma_b
        self.s = s
        self.prior = prior
        self.weighting_factor = weighting_factor
        self.focusing_factor = focusing_factor
        # numerator and denominator of g_j, accumulated over iterations and workers
        self._init_accumulated_gradients(num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes):
        node = cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS
        return {
            "num_classes": num_classes,
            "alpha": node.ALPHA,
            "gamma_b": node.GAMMA_B,
            "s": node.SCALE,
            "prior": node.PRIOR,
            "weighting_factor": node.WEIGHTING_FACTOR,
            "focusing_factor": node.FOCUSING_FACTOR,
        }

    def factors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C,) focusing factors gamma_j and (C,) weighting factors gamma_j / gamma_b for the
        current state (float64, like the state), each replaced by its constant (gamma_b, 1)
        when switched off."""
        gamma, weight = efl_factors(self.pos_grad, self.neg_grad, self.gamma_b, self.s)
        if not self.focusing_factor:
            gamma = torch.full_like(gamma, self.gamma_b)
        if not self.weighting_factor:
            weight = torch.ones_like(weight)
        return gamma, weight

    def balance_weights(self) -> Dict[str, torch.Tensor]:
        gamma, weighting = self.factors()
        return {"gamma": gamma, "weighting": weighting}

    def losses(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, normalizer: float
    ) -> Dict[str, torch.Tensor]:
        """EFL eq. 4, summed over anchors and categories and divided by ``normalizer``.

        In training mode with gradients enabled, the gradient magnitudes this loss sends to
        each category's logits (all workers) are added to the state after the factors have
        been read; under ``torch.no_grad`` (no gradient reaches the logits) the state is left
        alone.

        Args:
            logits: (N, C). gt_classes: (N,) in [-1, C]. normalizer: > 0.
        """
        self.check_inputs(logits, gt_classes, normalizer)
        gamma, weight = self.factors()
        # eq. 4: alpha_t (gamma_j / gamma_b) weights the focal term with focusing factor gamma_j
        loss, pos, neg = sigmoid_focal_loss(
            logits, gt_classes, gamma, weight * self.alpha, weight * (1.0 - self.alpha), True
        )
        if self.training and torch.is_grad_enabled():
            self._add_gradients(pos / normalizer, neg / normalizer)
        return {"loss_cls": loss / normalizer}

    def init_bias(self, bias: torch.Tensor) -> None:
        nn.init.constant_(bias, prior_bias(self.prior))
