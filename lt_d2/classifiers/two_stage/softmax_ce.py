"""SoftmaxCE: the baseline, detectron2's softmax cross-entropy over C + 1 logits.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
from typing import Dict

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..checks import check_gt_classes, check_logit_count
from ..kernels import softmax_cross_entropy

__all__ = ["SoftmaxCE"]

logger = logging.getLogger(__name__)


@CLASSIFIER_REGISTRY.register()
class SoftmaxCE(Classifier):
    """Softmax over C + 1 logits (last = background), cross-entropy averaged over ROIs.

    L = -(1/R) sum_r log softmax(z_r)[gt_r]; scores are softmax(z). Bias initialised to 0.
    """

    @configurable
    def __init__(self, *, num_classes: int):
        super().__init__(num_classes=num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> dict:
        return {"num_classes": num_classes}

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: (R, C + 1).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        check_gt_classes(logits, gt_classes, self.num_classes)
        check_logit_count(logits, self.num_logits, type(self).__name__)
        if logits.shape[0] == 0:
            return {"loss_cls": logits.sum() * 0.0}
        # half-precision logits (autocast) are computed in float32, float64 stays float64
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return {"loss_cls": softmax_cross_entropy(z, gt_classes, logits.shape[0])}

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C + 1) logits -> (R, C + 1) softmax probabilities."""
        return torch.softmax(logits, dim=-1)
