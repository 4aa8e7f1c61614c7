"""BackgroundEQL: the background equalization loss, DropLoss eq. 4.

EQL's weights for foreground ROIs; for background ROIs a tail category's negative term is
down-weighted while its score is low: w_j = 1 - T_lambda(f_j) min{-log_b(p_j), 1}.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import math

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..compile import compiled_loss, log_sigmoid, loss_dtype
from .eql import EQL, eql_weights
from .labels import class_targets
from .sigmoid_bce import weighted_sigmoid_bce

__all__ = ["BackgroundEQL", "background_eql_loss", "background_eql_weights"]


def background_eql_weights(z: torch.Tensor, tail: torch.Tensor, b: float) -> torch.Tensor:
    """DropLoss eq. 4, the background rows: w_j = 1 - T_lambda(f_j) min{-log_b(p_j), 1}.

    log_b(p_j) = ln(sigmoid(z_j)) / ln(b), with ln(sigmoid(z)) = log_sigmoid(z), finite for any
    finite z (no -inf where sigmoid(z_j) underflows). A score p_j <= 1/b drops the term of a
    tail category entirely; b -> inf gives EQL's weight 1.

    Args:
        z: (R, C) logits, detached (the weight is a constant of the loss).
        tail: (C,) bool, T_lambda(f_j).
        b: logarithm base b > 1.

    Returns:
        (R, C) weights of every row as if it were a background ROI.
    """
    neg_log_b_p = -log_sigmoid(z) / math.log(b)
    return 1.0 - tail * torch.clamp(neg_log_b_p, max=1.0)


@compiled_loss
def background_eql_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, tail: torch.Tensor, b: float
) -> torch.Tensor:
    """DropLoss eq. 4: L = -(1/R) sum_r sum_j w_rj log(p_hat_rj) with eq. 2's weights on
    foreground ROIs (:func:`eql_weights`) and :func:`background_eql_weights` on background ROIs.

    Args:
        logits: (R, C), any float dtype (computed in float32). gt_classes: (R,) in [0, C].
        tail: (C,) bool, T_lambda(f_j). b: logarithm base (> 1).
    """
    z = logits.to(loss_dtype(logits))
    y = class_targets(gt_classes, z.shape[1])
    w = eql_weights(y, gt_classes, tail, background_eql_weights(z.detach(), tail, b))
    return weighted_sigmoid_bce(z, y, w)


@CLASSIFIER_REGISTRY.register()
class BackgroundEQL(EQL):
    """DropLoss eq. 4: EQL weights (eq. 2) on foreground ROIs, eq. 4 on background ROIs.

    Args:
        kwargs: :class:`EQL`'s arguments (the tail: lambda or frequency groups).
        b: logarithm base of eq. 4 (DropLoss Table 3: b = 4 is the best setting).
    """

    @configurable
    def __init__(self, *, b: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        if b <= 1.0:
            raise ValueError(f"the logarithm base b of BackgroundEQL must be > 1, got {b}")
        self.b = b

    @classmethod
    def from_config(cls, cfg, num_classes: int, category_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, category_stats)
        ret["b"] = cfg.MODEL.CLASSIFIER.BACKGROUND_EQL.B
        return ret

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """DropLoss eq. 4 (:func:`background_eql_loss`)."""
        return background_eql_loss(logits, gt_classes, self.tail, self.b)
