"""SoftmaxCE: the baseline, detectron2's softmax cross-entropy over C + 1 logits.

Shape shorthand: R = ROIs, C = foreground classes.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..compile import compiled_loss, loss_dtype

__all__ = ["SoftmaxCE", "group_logsumexp", "softmax_ce_loss"]


def group_logsumexp(z: torch.Tensor, column_group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log sum_{j in G_n} exp(z_ij) of every row i and group G_n of a partition of the columns.

    Computed as m_n + log sum_{j in G_n} exp(z_ij - m_n) with m_n the group's row maximum (a
    constant: it cancels in the value and in the gradient), so that every logit's exp is
    evaluated once; groups are selected by masks over the whole row (no column slices, whose
    gradients would scatter into zeroed (R, L) buffers).

    Args:
        z: (R, L). column_group: (L,) int64 group in [0, G) of each column. num_groups: G.

    Returns:
        (R, G).
    """
    groups = [column_group == n for n in range(num_groups)]
    m = torch.stack([z.masked_fill(~g, -torch.inf).amax(dim=1) for g in groups], dim=1).detach()
    e = torch.exp(z - m[:, column_group])
    return m + torch.log(torch.stack([torch.where(g, e, 0.0).sum(dim=1) for g in groups], dim=1))


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
