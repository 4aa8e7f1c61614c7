"""Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021).

Not one of the project's five papers. A softmax cross entropy over the C classes in which,
for a ROI of class i, every other class j enters the denominator scaled by
S_ij = M_ij C_ij:

    sigma^_i = exp(z_i) / (sum_{j != i} S_ij exp(z_j) + exp(z_i)),

i.e. the cross entropy of the logits z_j + log S_ij (j != i). The mitigation factor
M_ij = min(1, (N_j / N_i)^p) lowers the penalty a frequent class i puts on a rarer class j,
N being the instance counts accumulated during training (p = 0.8); the compensation factor
C_ij = max(1, (sigma_j / sigma_i)^q) raises it again where class j is already scored above
the true class (q = 2). As in the authors' detection setting, background is handled by a
separate 2-way objectness softmax (background vs. object) trained on every ROI, the class
softmax on foreground ROIs only, and scores are p_j * p_object.

Not included here: the paper's normalised (cosine) linear classifier is a property of the
box predictor's final layer, not of the loss.

Logit layout (L = C + 2): columns [0, C) the classes, column C background, column C + 1
"object" (so the first C + 1 columns are detectron2's softmax layout).

State: ``cum_samples`` (C,) float64 buffer, the accumulated foreground ROI count N of each
class, summed over all workers and saved in checkpoints.
It counts labels only, so no logit (finite or not) can enter it.

Shape shorthand: R = ROIs, F = foreground ROIs, C = foreground classes, L = ``num_logits``.
"""

import logging
import math
from typing import Dict

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..checks import check_gt_classes, check_logit_count
from ..kernels import hand_over_gradient, row_chunks, softmax_cross_entropy_rows
from ..state import all_reduce_sum

__all__ = ["Seesaw", "seesaw_log_factors"]

logger = logging.getLogger(__name__)


def seesaw_log_factors(
    logits: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    p: float,
    q: float,
    eps: float,
) -> torch.Tensor:
    """log S_ij = log M_ij + log C_ij of Seesaw loss (Wang et al. 2021, sec. 3), detached.

    Mitigation M_ij = min(1, (N_j / N_i)^p) with N the accumulated instance counts (clamped
    to >= 1); compensation C_ij = max(1, (sigma_j / max(sigma_i, eps))^q) with sigma the
    softmax of the (detached) class logits; S_ii = 1. Computed in log space, so it is finite
    for any finite logits.

    Args:
        logits: (F, C) class logits of foreground ROIs.
        labels: (F,) int64 in [0, C).
        counts: (C,) accumulated instance counts N.

    Returns:
        (F, C) log S, zero in each row's label column.
    """
    log_n = counts.clamp(min=1).log().to(logits.dtype)
    log_m = (log_n[None, :] - log_n[labels][:, None]).clamp_(max=0).mul_(p)
    log_sigma = torch.log_softmax(logits.detach(), dim=1)
    log_sigma_i = log_sigma.gather(1, labels[:, None]).clamp(min=math.log(eps))
    log_c = log_sigma.sub_(log_sigma_i).clamp_(min=0).mul_(q)  # two (F, C) buffers in all
    return log_m.add_(log_c).scatter_(1, labels[:, None], 0.0)


class _SeesawLosses(torch.autograd.Function):
    """Both Seesaw losses of (R, C + 2) logits and their closed-form gradient, computed in the
    forward pass and handed over in backward (the convention of
    :mod:`lt_d2.classifiers.kernels`): one (R, L) gradient, where autograd's row indexing and
    column slicing would each allocate an (R, L) buffer of their own.

    dL_cls/dz_ij = (softmax(z_i + log S_i)_j - [j = t_i]) / R on foreground rows (log S a
    constant), dL_obj/dz_i = (softmax(o_i) - onehot(object_i)) / R on the 2 objectness columns.
    """

    @staticmethod
    def forward(ctx, logits, gt_classes, counts, p, q, eps):
        num_rois, num_logits = logits.shape
        C = num_logits - 2
        divisor = float(max(num_rois, 1))
        grad = torch.zeros_like(logits)
        fg_rows = (gt_classes < C).nonzero()[:, 0]
        loss_cls = logits.new_zeros((), dtype=torch.float64)
        for chunk in row_chunks(fg_rows.numel(), C):
            rows = fg_rows[chunk]
            labels = gt_classes[rows][:, None]
            z = logits[rows, :C].float()
            z += seesaw_log_factors(z, labels[:, 0], counts, p, q, eps)
            chunk_loss, chunk_grad = softmax_cross_entropy_rows(z, labels, divisor)
            loss_cls += chunk_loss
            grad[rows, :C] = chunk_grad.to(grad.dtype)
        target = (gt_classes < C).long()[:, None]  # objectness: column 1 = object
        loss_obj, obj_grad = softmax_cross_entropy_rows(logits[:, C:].float(), target, divisor)
        grad[:, C:] = obj_grad.to(grad.dtype)
        ctx.grad, ctx.num_classes = grad, C
        return (loss_cls / divisor).to(logits.dtype), (loss_obj / divisor).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_cls, grad_obj):
        grad, C = hand_over_gradient(ctx), ctx.num_classes
        grad[:, :C].mul_(grad_cls)
        grad[:, C:].mul_(grad_obj)
        return grad, None, None, None, None, None


@CLASSIFIER_REGISTRY.register()
class Seesaw(Classifier):
    """Seesaw loss with an objectness branch.

    Args:
        num_classes: C.
        p: exponent of the mitigation factor (paper: 0.8).
        q: exponent of the compensation factor (paper: 2.0).
        eps: lower bound of sigma_i in the compensation ratio (authors' code: 0.01).
    """

    @configurable
    def __init__(self, *, num_classes: int, p: float = 0.8, q: float = 2.0, eps: float = 1e-2):
        super().__init__(num_classes=num_classes)
        if not 0.0 < eps < 1.0:
            raise ValueError(
                f"Seesaw eps (MODEL.CLASSIFIER.SEESAW.EPS) must be in (0, 1), got {eps}"
            )
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(num_classes, dtype=torch.float64))

    @classmethod
    def from_config(cls, cfg, num_classes):
        node = cfg.MODEL.CLASSIFIER.SEESAW
        return {"num_classes": num_classes, "p": node.P, "q": node.Q, "eps": node.EPS}

    @property
    def num_logits(self) -> int:
        return self.num_classes + 2

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Seesaw cross entropy over the foreground ROIs and objectness cross entropy over all
        ROIs, both summed and divided by R. In training mode the batch's foreground class
        counts (all workers) are added to N first, so every class present has N_i >= 1.

        Args:
            logits: (R, L).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        check_gt_classes(logits, gt_classes, self.num_classes)
        check_logit_count(logits, self.num_logits, "Seesaw")
        C = self.num_classes
        fg = gt_classes < C
        if self.training:
            batch_counts = torch.bincount(gt_classes[fg], minlength=C).to(self.cum_samples)
            self.cum_samples += all_reduce_sum(batch_counts)
        loss_cls, loss_obj = _SeesawLosses.apply(
            logits, gt_classes, self.cum_samples, self.p, self.q, self.eps
        )
        return {"loss_cls": loss_cls, "loss_cls_objectness": loss_obj}

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p_j = softmax over the C classes times the objectness softmax's "object"
        probability; background column = its background probability.

        Args:
            logits: (R, L). Returns: (R, C + 1).
        """
        C = self.num_classes
        p_cls = torch.softmax(logits[:, :C], dim=1)
        p_obj = torch.softmax(logits[:, C:], dim=1)
        return torch.cat([p_cls * p_obj[:, 1:], p_obj[:, :1]], dim=1)
