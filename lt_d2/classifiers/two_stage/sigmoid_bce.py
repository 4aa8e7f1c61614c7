"""SigmoidBCE: C independent sigmoid tasks (EQL v2 Table 1(b)), the base of the sigmoid family.

EQL, BackgroundEQL, DropLoss, BucketedSigmoidBCE and FederatedSigmoidBCE subclass it: each
weights the terms of the same binary cross entropy (:func:`weighted_sigmoid_bce`) by its own
paper's rule, in its own pure loss function.

Shape shorthand: R = ROIs, C = foreground classes.
"""

from typing import Dict, Union

import torch
from detectron2.config import configurable
from torch import nn

from ..base import CLASSIFIER_REGISTRY, Classifier, prior_bias
from ..compile import compiled_loss, log_sigmoid, loss_dtype
from .labels import class_targets

__all__ = [
    "SigmoidBCE",
    "sigmoid_bce_loss",
    "sigmoid_scores_with_background",
    "weighted_sigmoid_bce",
]


def weighted_sigmoid_bce(
    z: torch.Tensor, y: torch.Tensor, w: Union[torch.Tensor, float]
) -> torch.Tensor:
    """L = -(1/R) sum_r sum_j w_rj log(p_hat_rj), p_hat = sigmoid(z) where y = 1, else
    1 - sigmoid(z) (DropLoss eqs. 2 and 5, Libra eq. 20, EQL v2 eqs. 3-4 with eqs. 7-8).

    Args:
        z: (R, C) float32 (or float64) logits. y: (R, C) bool targets.
        w: (R, C) or (C,) weights (constants of the loss: detached), or a float.

    Returns:
        the scalar loss; 0 with a gradient path when R = 0.
    """
    # BCE(z, y) = -log sigmoid(z_t), z_t = z where y = 1 and -z elsewhere: no cancellation
    bce = -log_sigmoid(torch.where(y, z, -z))
    return (w * bce).sum() / max(z.shape[0], 1)


@compiled_loss
def sigmoid_bce_loss(logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    """Plain sigmoid BCE, every weight 1 (EQL v2 Table 1(b)).

    Args:
        logits: (R, C), any float dtype (computed in float32).
        gt_classes: (R,) int64 in [0, C], C = background.
    """
    z = logits.to(loss_dtype(logits))
    return weighted_sigmoid_bce(z, class_targets(gt_classes, z.shape[1]), 1.0)


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

    L = (1/R) sum_r sum_j BCE(z_rj, y_rj). Scores: sigmoid(z_j) per category, background
    column 1 - max_j sigmoid(z_j) (unused by detectron2's inference). Subclasses override
    :meth:`loss` with their paper's weighted form.

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

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """The method's loss of checked (R, C) logits and (R,) labels in [0, C]."""
        return sigmoid_bce_loss(logits, gt_classes)

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            logits: (R, C).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        self.check_inputs(logits, gt_classes)
        return {"loss_cls": self.loss(logits, gt_classes)}

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C) logits -> (R, C + 1) scores, see :func:`sigmoid_scores_with_background`."""
        return sigmoid_scores_with_background(logits)

    def init_bias(self, bias: torch.Tensor) -> None:
        """Every sigmoid starts at the prior probability (EQL v2 sec. 4.2)."""
        nn.init.constant_(bias, self.bias_value)
