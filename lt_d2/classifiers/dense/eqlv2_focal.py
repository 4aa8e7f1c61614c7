"""EQL v2 reweighting combined with focal loss ("EQLv2&Focal", EFL Table 1).

Each category's focal loss term (alpha = 0.25, gamma = 2) is re-weighted as in EQL v2
(Tan et al. 2021): its positive terms by q_j = 1 + alpha_eql (1 - f(g_j)) and its negative
terms by r_j = f(g_j), f(x) = 1 / (1 + exp(-gamma_eql (x - mu))) (eqs. 5-6), so that the
gradients reaching the logits are re-weighted as in eqs. 7-8. g_j is the ratio of the
accumulated re-weighted positive to negative gradient magnitudes (eq. 9, not clamped), here
the gradients of the focal loss.

The loss is FocalLoss's :func:`~lt_d2.classifiers.dense.focal.sigmoid_focal_loss` with these
weights per category; only they are EQL v2's.

State: ``pos_grad`` and ``neg_grad`` (C,) float64 buffers, the closed-form gradient magnitudes
the loss function returns, accumulated over all anchors, images, workers and iterations. The
initial all-zero state gives q_j = r_j = 1 (see
:func:`lt_d2.classifiers.two_stage.eqlv2.eqlv2_weights`): the first iteration is plain focal
loss.
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
from ..two_stage.eqlv2 import eqlv2_weights
from .focal import sigmoid_focal_loss

__all__ = ["EQLv2Focal"]


@DENSE_CLASSIFIER_REGISTRY.register()
class EQLv2Focal(AccumulatedGradientsMixin, DenseClassifier):
    """Focal loss with EQL v2's gradient-guided reweighting.

    loss_cls = (1 / normalizer) sum_i sum_j w_ij (-alpha_t (1 - p_t)^gamma log p_t),
    w_ij = q_j for a positive, r_j for a negative (EQL v2 eqs. 5-8).

    Args:
        num_classes: C.
        alpha, gamma: focal loss alpha_t and focusing parameter (EFL sec. 4.1: 0.25, 2).
        eqlv2_gamma, eqlv2_mu: shape of EQL v2's mapping f (eq. 6; defaults 12, 0.8).
        eqlv2_alpha: up-weighting strength of positives (eq. 5; default 4).
        prior: the classification bias starts at logit(prior) (EFL sec. 4.1 and EQL v2
            sec. 4.1: 0.001).
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        alpha: float = 0.25,
        gamma: float = 2.0,
        eqlv2_gamma: float = 12.0,
        eqlv2_mu: float = 0.8,
        eqlv2_alpha: float = 4.0,
        prior: float = 0.001,
    ):
        super().__init__(num_classes=num_classes)
        prior_bias(prior)  # validates
        self.alpha = alpha
        self.gamma = gamma
        self.eqlv2_gamma = eqlv2_gamma
        self.eqlv2_mu = eqlv2_mu
        self.eqlv2_alpha = eqlv2_alpha
        self.prior = prior
        # eq. 9 numerator and denominator, accumulated over iterations and workers
        self._init_accumulated_gradients(num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes):
        node = cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL
        return {
            "num_classes": num_classes,
            "alpha": node.ALPHA,
            "gamma": node.GAMMA,
            "eqlv2_gamma": node.EQLV2_GAMMA,
            "eqlv2_mu": node.EQLV2_MU,
            "eqlv2_alpha": node.EQLV2_ALPHA,
            "prior": node.PRIOR,
        }

    def weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C,) q and (C,) r of EQL v2 eq. 5 for the current state (float64, like the state)."""
        return eqlv2_weights(
            self.pos_grad, self.neg_grad, self.eqlv2_gamma, self.eqlv2_mu, self.eqlv2_alpha
        )

    def balance_weights(self) -> Dict[str, torch.Tensor]:
        q, r = self.weights()
        return {"q": q, "r": r}

    def losses(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, normalizer: float
    ) -> Dict[str, torch.Tensor]:
        """Re-weighted focal loss, summed over anchors and categories, / ``normalizer``.

        In training mode with gradients enabled, the re-weighted gradient magnitudes of this
        batch (all workers) are added to the state after the weights have been read (eq. 9).

        Args:
            logits: (N, C). gt_classes: (N,) in [-1, C]. normalizer: > 0.
        """
        self.check_inputs(logits, gt_classes, normalizer)
        q, r = self.weights()
        # eqs. 7-8: positives weighted by q_j, negatives by r_j, on top of alpha_t
        loss, pos, neg = sigmoid_focal_loss(
            logits, gt_classes, float(self.gamma), q * self.alpha, r * (1.0 - self.alpha), True
        )
        if self.training and torch.is_grad_enabled():
            self._add_gradients(pos / normalizer, neg / normalizer)
        return {"loss_cls": loss / normalizer}

    def init_bias(self, bias: torch.Tensor) -> None:
        nn.init.constant_(bias, prior_bias(self.prior))
