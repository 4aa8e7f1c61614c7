"""FocalLoss: sigmoid focal loss, the RetinaNet baseline of the dense classifiers.

:func:`sigmoid_focal_loss` is the loss of Lin et al. 2017 (eq. 5) with a focusing factor and
positive / negative weights per category, so that the methods that only change those factors
reuse it: EqualizedFocalLoss (EFL eqs. 3-4) and EQLv2Focal (EQL v2 eqs. 5-6), as detectron2's
FCOS reuses RetinaNet's loss.

Shape shorthand: N = anchors of the whole batch, C = foreground classes.
"""

from typing import Dict, Optional, Tuple, Union

import torch
from detectron2.config import configurable
from torch import nn

from ..base import DENSE_CLASSIFIER_REGISTRY, DenseClassifier, prior_bias
from ..compile import column_sums, compiled_loss, log_sigmoid, loss_dtype

__all__ = ["FocalLoss", "sigmoid_focal_loss"]

Factor = Union[float, torch.Tensor]


@compiled_loss
def sigmoid_focal_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    gamma: Factor,
    pos_weight: Factor,
    neg_weight: Factor,
    gradient_sums: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Sigmoid focal loss summed over anchors and categories (Lin et al. 2017, eq. 5)::

        p_t = p if y = 1 else 1 - p                                     (eq. 2)
        FL(p_t) = -w_t (1 - p_t)^gamma_j log(p_t)                       (eq. 5)

    with w_t = pos_weight_j for category j's positives and neg_weight_j for its negatives
    (RetinaNet: alpha and 1 - alpha). Computed in float32 (:func:`loss_dtype`) whatever the
    logits' dtype.

    With ``gradient_sums`` also the per-category magnitudes of the loss's gradient with respect
    to the logits, in closed form from the detached probabilities (d p_t / dz = +-p_t (1 - p_t))::

        |dFL/dz| = w_t (1 - p_t)^gamma_j ((1 - p_t) - gamma_j p_t log(p_t))
        pos_j = sum over category j's positives, neg_j = over its negatives.

    Args:
        logits: (N, C) in any floating dtype.
        gt_classes: (N,) integer in [-1, C]; -1 rows are ignored, C is background.
        gamma: focusing factor, a number or (C,) per category.
        pos_weight, neg_weight: numbers or (C,) weights of positives / negatives.
        gradient_sums: also return the (C,) positive and negative gradient magnitudes.

    Returns:
        loss (0-d), and pos, neg (C,) (None without ``gradient_sums``).
    """
    z = logits.to(loss_dtype(logits))
    gamma, pos_weight, neg_weight = (
        f.to(z.dtype) if isinstance(f, torch.Tensor) else f for f in (gamma, pos_weight, neg_weight)
    )
    categories = torch.arange(z.shape[1], device=z.device)
    y = gt_classes[:, None] == categories  # one-hot targets, (N, C); background and -1: none
    valid = (gt_classes >= 0)[:, None]
    z_t = torch.where(y, z, -z)  # p_t = sigmoid(z_t)
    log_p_t = log_sigmoid(z_t)
    w_t = torch.where(y, pos_weight, neg_weight) * valid
    loss = -(w_t * torch.sigmoid(-z_t) ** gamma * log_p_t).sum()
    if not gradient_sums:
        return loss, None, None
    with torch.no_grad():
        p_t, one_minus = torch.sigmoid(z_t), torch.sigmoid(-z_t)
        magnitude = w_t * one_minus**gamma * (one_minus - gamma * p_t * log_p_t)
        pos = column_sums(magnitude * y)
        return loss, pos, column_sums(magnitude) - pos


@DENSE_CLASSIFIER_REGISTRY.register()
class FocalLoss(DenseClassifier):
    """Sigmoid focal loss, the RetinaNet baseline (Lin et al. 2017, eq. 5; EFL eq. 1).

    loss_cls = (1 / normalizer) sum_i sum_j -alpha_t (1 - p_t)^gamma log p_t.

    Args:
        num_classes: C.
        alpha: weight of positives, 1 - alpha of negatives (default 0.25).
        gamma: focusing parameter (default 2).
        prior: the classification bias starts at logit(prior) (RetinaNet: 0.01).
    """

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
        self, logits: torch.Tensor, gt_classes: torch.Tensor, normalizer: float
    ) -> Dict[str, torch.Tensor]:
        """Args: logits (N, C); gt_classes (N,) in [-1, C]; normalizer > 0."""
        self.check_inputs(logits, gt_classes, normalizer)
        loss, _, _ = sigmoid_focal_loss(
            logits, gt_classes, float(self.gamma), float(self.alpha), 1.0 - self.alpha
        )
        return {"loss_cls": loss / normalizer}

    def init_bias(self, bias: torch.Tensor) -> None:
        nn.init.constant_(bias, prior_bias(self.prior))
