"""LGRSoftmaxCE: logarithmic gradient re-weighting of softmax cross-entropy, Libra eqs. 15-19.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..compile import compiled_loss, loss_dtype
from .softmax_ce import SoftmaxCE

__all__ = ["LGRSoftmaxCE", "lgr_softmax_ce_loss"]


@compiled_loss
def lgr_softmax_ce_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, alpha: float, b: float
) -> torch.Tensor:
    """Libra eqs. 15-19, averaged over ROIs.

    With one-hot t only the target term survives in eq. 19:
    L_r = -rho_t log p_t, rho_t = alpha ln(b |p_t - 1| + 1) / |p_t - 1| (eq. 18), detached.
    As p_t -> 1, rho_t -> alpha b (its limit; used where 1 - p_t underflows to 0).

    Args:
        logits: (R, C + 1) softmax logits z (eq. 15), any float dtype (computed in float32).
        gt_classes: (R,) int64 in [0, C].
        alpha, b: eq. 18's factors.

    Returns:
        scalar; 0 with a gradient path when R = 0.
    """
    z = logits.to(loss_dtype(logits))
    log_p_t = -F.cross_entropy(z, gt_classes, reduction="none")  # eq. 15, log p_t
    gap = -torch.expm1(log_p_t.detach())  # |p_t - t_t| = 1 - p_t, exact near p_t = 1
    rho = torch.where(gap > 0, alpha * torch.log1p(b * gap) / gap, alpha * b)  # eq. 18
    return -(rho * log_p_t).sum() / max(z.shape[0], 1)  # eq. 19


@CLASSIFIER_REGISTRY.register()
class LGRSoftmaxCE(SoftmaxCE):
    """Softmax CE whose per-ROI gradient is re-weighted by Libra eq. 18's rho (detached).

    Args:
        num_classes: C.
        alpha: eq. 18's alpha (Libra Table 7: 0.8).
        gamma: the gradient bound at |p - t| = 1; b follows from alpha ln(b + 1) = gamma
            (Libra eq. 10), b = exp(gamma / alpha) - 1 (Table 7: gamma = 1.0).
    """

    @configurable
    def __init__(self, *, num_classes: int, alpha: float = 0.8, gamma: float = 1.0):
        super().__init__(num_classes=num_classes)
        if alpha <= 0 or gamma <= 0:
            raise ValueError(f"LGR needs alpha > 0 and gamma > 0, got {alpha}, {gamma}")
        self.alpha = alpha
        self.gamma = gamma
        self.b = math.expm1(gamma / alpha)

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> dict:
        ret = super().from_config(cfg, num_classes)
        ret["alpha"] = cfg.MODEL.CLASSIFIER.LGR_SOFTMAX_CE.ALPHA
        ret["gamma"] = cfg.MODEL.CLASSIFIER.LGR_SOFTMAX_CE.GAMMA
        return ret

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """Libra eqs. 15-19 (:func:`lgr_softmax_ce_loss`)."""
        return lgr_softmax_ce_loss(logits, gt_classes, self.alpha, self.b)
