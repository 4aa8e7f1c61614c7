"""FocalLoss: sigmoid focal loss, the RetinaNet baseline of the dense classifiers (EFL eq. 1).

The loss and its gradient come from the fused kernel
:func:`lt_d2.classifiers.kernels.fused_sigmoid_focal_loss`, which also yields the
per-category positive / negative gradient magnitudes: FocalLoss hands them to GradientStats
(``gradient_sink``) instead of letting it re-read the (N, C) logit gradient with a hook.

Shape shorthand: N = anchors of the whole batch, C = foreground classes.
"""

import logging
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from ..base import DENSE_CLASSIFIER_REGISTRY, DenseClassifier, prior_bias
from ..checks import check_dense_inputs
from ..kernels import GradientSink, fused_sigmoid_focal_loss

__all__ = ["FocalLoss"]

logger = logging.getLogger(__name__)


@DENSE_CLASSIFIER_REGISTRY.register()
class FocalLoss(DenseClassifier):
    """Sigmoid focal loss, the RetinaNet baseline (EFL eq. 1).

    loss_cls = (1 / normalizer) sum_i sum_j -alpha_t (1 - p_t)^gamma log p_t.

    Args:
        num_classes: C.
        alpha: weight of positives, 1 - alpha of negatives (default 0.25).
        gamma: focusing parameter (default 2).
        prior: the classification bias starts at logit(prior) (RetinaNet: 0.01).
    """

    computes_gradient_sums = True

    @configurable
    def __init__(
        self, *, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, prior: float = 0.01
    ):
        super().__init__(num_classes=num_classes)
        prior_bias(prior)  # validates
        self.alpha = alpha
        self.gamma = gamma
        self.prior = prior

    @classmethod
    def from_config(cls, cfg, num_classes):
        node = cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS
        return {
            "num_classes": num_classes,
            "alpha": node.ALPHA,
            "gamma": node.GAMMA,
            "prior": node.PRIOR,
        }

    def losses(
        self,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        normalizer: float,
        gradient_sink: Optional[GradientSink] = None,
    ) -> Dict[str, torch.Tensor]:
        """Args: logits (N, C); gt_classes (N,) in [-1, C]; normalizer > 0; gradient_sink:
        receives in backward the (C,) positive and negative gradient magnitudes reaching the
        logits (:attr:`Classifier.computes_gradient_sums`)."""
        check_dense_inputs(type(self).__name__, logits, gt_classes, self.num_classes, normalizer)
        ones = logits.new_ones(self.num_classes, dtype=torch.float64)
        loss, _, _ = fused_sigmoid_focal_loss(
            logits,
            gt_classes,
            float(self.gamma),
            ones * (self.alpha / normalizer),
            ones * ((1.0 - self.alpha) / normalizer),
            gradient_sink,
        )
        return {"loss_cls": loss}

    def init_bias(self, bias: torch.Tensor) -> None:
        nn.init.constant_(bias, prior_bias(self.prior))
