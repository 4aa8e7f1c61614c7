"""SoftmaxCE: the baseline, detectron2's softmax cross-entropy over C + 1 logits.

Shape shorthand: R = ROIs, C = foreground classes.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..compile import compiled_loss, loss_dtype

__all__ = ["SoftmaxCE", "masked_cross_entropy", "softmax_ce_loss"]


def masked_cross_entropy(
    z: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """-log softmax(z_i over the allowed columns only)[t_i] of every row: the cross entropy of
    a softmax that runs over a subset of the logits (BAGS's groups, Seesaw's two softmaxes).

    Written with masks over the whole row instead of column slices or gathers, so that its
    gradient is one pointwise (R, L) expression (no scatter into a zeroed (R, L) buffer).

    Args:
        z: (R, L) logits. allowed: (L,) bool columns of the softmax.
        target: (R,) int64 target column t_i, an allowed one.

    Returns:
        (R,).
    """
    columns = torch.arange(z.shape[1], device=z.device)
    z_t = torch.where(columns == target[:, None], z, 0.0).sum(dim=1)
    return torch.logsumexp(z.masked_fill(~allowed, -torch.inf), dim=1) - z_t


@compiled_loss
def softmax_ce_loss(logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    """L = -(1/R) sum_r log softmax(z_r)[gt_r] (detectron2's ``cross_entropy``).

    Args:
        logits: (R, C + 1), any float dtype (computed in float32).
        gt_classes: (R,) int64 in [0, C], C = background.

    Returns:
        the scalar loss; 0 with a gradient path when R = 0.
    """
    z = logits.to(loss_dtype(logits))
    return F.cross_entropy(z, gt_classes, reduction="sum") / max(z.shape[0], 1)


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
        self.check_inputs(logits, gt_classes)
        return {"loss_cls": self.loss(logits, gt_classes)}

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """The method's loss of checked (R, C + 1) logits and (R,) labels in [0, C]."""
        return softmax_ce_loss(logits, gt_classes)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C + 1) logits -> (R, C + 1) softmax probabilities."""
        return torch.softmax(logits, dim=-1)
