"""SigmoidBCE: C independent sigmoid tasks (EQL v2 Table 1(b)), the base of the sigmoid family.

EQL, BackgroundEQL, DropLoss and BucketedSigmoidBCE subclass it and only change the
weights of the negative terms (:meth:`SigmoidBCE.weights`); in every one of their equations
the positive term (a foreground ROI's own class) has weight 1. The loss is computed from the
positive entries only, with a closed-form backward
(:func:`lt_d2.classifiers.kernels.one_hot_weighted_sigmoid_bce`).

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from ..base import CLASSIFIER_REGISTRY, Classifier, prior_bias
from ..checks import check_gt_classes, check_logit_count
from ..kernels import (
    NegativeWeights,
    one_hot_weighted_sigmoid_bce,
    positive_entries,
    sigmoid_targets,
)

__all__ = ["SigmoidBCE", "sigmoid_scores_with_background"]

logger = logging.getLogger(__name__)


def sigmoid_scores_with_background(logits: torch.Tensor) -> torch.Tensor:
    """Scores of C sigmoid tasks in detectron2's (R, C + 1) layout.

    Column j < C is sigmoid(z_j). The background column is 1 - max_j sigmoid(z_j): a ROI is
    background when every category score is low (DropLoss, sec. "Background Equalization
    Loss"). detectron2's ``fast_rcnn_inference`` drops the last column, so detections only
    ever use the C sigmoid scores.

    Args:
        logits: (R, C).

    Returns:
        (R, C + 1) in [0, 1].
    """
    probs = logits.sigmoid()
    background = 1.0 - probs.amax(dim=1, keepdim=True)
    return torch.cat([probs, background], dim=1)


@CLASSIFIER_REGISTRY.register()
class SigmoidBCE(Classifier):
    """C sigmoid logits; a background ROI is an all-zero target row.

    L = (1/R) sum_r sum_j w_rj BCE(z_rj, y_rj) with w = 1 here. Scores: sigmoid(z_j) per
    category, background column 1 - max_j sigmoid(z_j) (unused by detectron2's inference).

    Args:
        num_classes: C.
        prior: the fc-cls bias is initialised to log(prior / (1 - prior)) so that every
            sigmoid starts at ``prior`` (EQL v2 sec. 4.2: 0.001).
    """

    @configurable
    def __init__(self, *, num_classes: int, prior: float = 0.001):
        super().__init__(num_classes=num_classes)
        self.bias_value = prior_bias(prior)

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> dict:
        return {"num_classes": num_classes, "prior": cfg.MODEL.CLASSIFIER.SIGMOID_BCE.PRIOR}

    @property
    def num_logits(self) -> int:
        return self.num_classes

    def weights(self, logits: torch.Tensor, targets: torch.Tensor) -> Optional[NegativeWeights]:
        """Weights w_rj of the negative terms (y_rj = 0): None for all ones (this class), a
        (C,) or (R, C) tensor, or a function of a row chunk ``(rows, z, p, out) -> (n, C)``
        (:data:`~lt_d2.classifiers.kernels.NegativeWeights`), which the loss kernel evaluates
        chunk by chunk so that per-term weights need no (R, C) buffer.

        Subclasses implement their paper's weights here from the (R, C) detached logits and
        the (R, C) binary targets (sparse in training, see
        :func:`~lt_d2.classifiers.kernels.sigmoid_targets`; a background ROI is an all-zero
        row). Entries at positive terms (y_rj = 1) are not read: those terms have weight 1.
        """
        return None

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: (R, C).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        check_gt_classes(logits, gt_classes, self.num_classes)
        check_logit_count(logits, self.num_logits, type(self).__name__)
        # half-precision logits (autocast) are computed in float32, float64 stays float64
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = sigmoid_targets(gt_classes, self.num_classes)
        neg_weights = self.weights(z.detach(), targets)
        loss, _, _ = one_hot_weighted_sigmoid_bce(
            z, *positive_entries(targets), z.new_ones(self.num_classes), neg_weights
        )
        return {"loss_cls": loss}

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C) logits -> (R, C + 1) scores, see :func:`sigmoid_scores_with_background`."""
        return sigmoid_scores_with_background(logits)

    def init_bias(self, bias: torch.Tensor) -> None:
        """Every sigmoid starts at the prior probability (EQL v2 sec. 4.2)."""
        nn.init.constant_(bias, self.bias_value)
