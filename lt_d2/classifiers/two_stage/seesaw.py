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

Shape shorthand: R = ROIs, C = foreground classes, L = ``num_logits``.
"""

import math
from typing import Dict, Tuple

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..compile import compiled_loss, loss_dtype
from ..state import all_reduce_sum
from .labels import class_counts

__all__ = ["Seesaw", "seesaw_log_factors", "seesaw_loss"]


def seesaw_log_factors(
    z: torch.Tensor,
    z_label: torch.Tensor,
    own: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    p: float,
    q: float,
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """log S_ij = log M_ij + log C_ij of Seesaw loss (Wang et al. 2021, sec. 3), and an upper
    bound of every row's z_j + log S_ij.

    Mitigation M_ij = min(1, (N_j / N_i)^p) with N the accumulated instance counts (clamped
    to >= 1); compensation C_ij = max(1, (sigma_j / max(sigma_i, eps))^q) with sigma the
    softmax of the class logits (the authors' mmdet ``seesaw_ce_loss``); S_ii = 1. In log
    space, where sigma's normaliser cancels: log(sigma_j / max(sigma_i, eps)) =
    z_j - a_i with a_i = max(z_i, lse_i + log eps), lse_i = log sum_j exp(z_ij).

    Since log M <= 0, z_j + log S_ij <= z_j + q max(0, z_j - a_i), which grows with z_j: the
    bound is its value at max_j z_ij. The largest z_j + log S_ij lies at most p log N_i below
    it (log M_ij >= -p log N_i), so a sum of exp(z_j + log S_ij - bound) stays within
    float32's range while p log N_i < 87 (for p = 0.8: N_i < 10^47).

    Args:
        z: (R, C) class logits (detached: the factors are constants of the loss).
        z_label: (R,) z_i, the label's logit. own: (R, C) bool [j = i].
        labels: (R,) int64 in [0, C). counts: (C,) float32 accumulated instance counts N.

    Returns:
        (R, C) log S, zero in each row's label column; (R,) the bound.
    """
    log_n = counts.clamp(min=1.0).log()
    log_m = p * (log_n[None, :] - log_n[labels][:, None]).clamp(max=0.0)  # mitigation
    z_max = z.amax(dim=1)
    lse = z_max + torch.log(torch.exp(z - z_max[:, None]).sum(dim=1))
    a = torch.maximum(z_label, lse + math.log(eps))
    log_c = q * (z - a[:, None]).clamp(min=0.0)  # compensation
    bound = z_max + q * (z_max - a).clamp(min=0.0)
    return torch.where(own, 0.0, log_m + log_c), bound


@compiled_loss
def seesaw_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    counts: torch.Tensor,
    p: float,
    q: float,
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seesaw's class loss over the foreground ROIs and the objectness loss over all ROIs,
    each summed and divided by R.

    -log sigma^_i = log(sum_j S_ij exp(z_j)) - z_i with S_ii = 1 (S a constant of the loss);
    the objectness branch is a 2-way softmax cross entropy (background, object).

    Args:
        logits: (R, C + 2), any float dtype (computed in float32).
        gt_classes: (R,) int64 in [0, C], C = background.
        counts: (C,) float32 accumulated instance counts N. p, q, eps: the factors' exponents
            and sigma_i's lower bound.

    Returns:
        loss_cls, loss_obj (scalars; 0 with a gradient path when R = 0).
    """
    z = logits.to(loss_dtype(logits))
    C = z.shape[1] - 2
    divisor = max(z.shape[0], 1)
    foreground = gt_classes < C
    labels = gt_classes.clamp(max=C - 1)  # background rows: any class, weight 0 below
    z_cls, z_obj = z[:, :C], z[:, C:]
    own = torch.arange(C, device=z.device) == labels[:, None]
    z_label = torch.where(own, z_cls, 0.0).sum(dim=1)
    log_s, bound = seesaw_log_factors(
        z_cls.detach(), z_label.detach(), own, labels, counts, p, q, eps
    )
    log_denominator = bound + torch.log(torch.exp(z_cls + log_s - bound[:, None]).sum(dim=1))
    loss_cls = torch.where(foreground, log_denominator - z_label, 0.0).sum() / divisor
    # objectness: -log softmax(z_background, z_object) at object for foreground ROIs
    z_obj_target = torch.where(foreground, z_obj[:, 1], z_obj[:, 0])
    loss_obj = torch.logsumexp(z_obj, dim=1) - z_obj_target
    return loss_cls, loss_obj.sum() / divisor


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
        ROIs, both summed and divided by R. In training with grad enabled the batch's
        foreground class counts (all workers) are added to N first, so every class present
        has N_i >= 1.

        Args:
            logits: (R, L).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        self.check_inputs(logits, gt_classes)
        C = self.num_classes
        if self.training and torch.is_grad_enabled():
            batch_counts = class_counts(gt_classes, C, self.cum_samples.dtype)
            self.cum_samples += all_reduce_sum(batch_counts)
        loss_cls, loss_obj = seesaw_loss(
            logits, gt_classes, self.cum_samples.float(), self.p, self.q, self.eps
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
