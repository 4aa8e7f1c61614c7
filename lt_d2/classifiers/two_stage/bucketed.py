"""BucketedSigmoidBCE: bucketed class re-weighting of sigmoid BCE, Libra eqs. 20-23.

Every category j gets a weight w_j from the bucket of its log-frequency: rare categories a
small one, frequent ones about 1. A ROI's negative terms are weighted by w_j; its target
class keeps weight 1.

Shape shorthand: R = ROIs, C = foreground classes, S = buckets.
"""

from typing import Sequence

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..checks import require_category_stats
from ..compile import compiled_loss, loss_dtype
from .labels import class_targets
from .sigmoid_bce import SigmoidBCE, weighted_sigmoid_bce

__all__ = ["BucketedSigmoidBCE", "bucketed_class_weights", "bucketed_sigmoid_bce_loss"]


def bucketed_class_weights(frequency: torch.Tensor, s: int, a: float, t: float) -> torch.Tensor:
    """Libra eqs. 21-23: per-category weights from S buckets of log-frequency.

    f'_j = ln(f_j) (eq. 21); [min f', max f'] is split into S equal ranges and s_j is the
    index of the range holding f'_j (the maximum goes to the last range); x_j = s_j / (S - 1)
    (eq. 22); w_j = 1 / (1 + exp(-(x_j - a) / t)) (eq. 23). Categories never seen in training
    (f_j = 0) join the rarest bucket. When every category has the same frequency there is
    nothing to rebalance: all go to the last bucket (x = 1).

    Args:
        frequency: (C,) non-negative frequencies, at least one positive.
        s: number of buckets S >= 2.
        a: turning point, t: temperature.

    Returns:
        (C,) weights in (0, 1), float32.
    """
    if s < 2:
        raise ValueError(f"bucketed class re-weighting needs S >= 2 buckets, got {s}")
    frequency = frequency.to(torch.float64)
    if (frequency < 0).any() or not (frequency > 0).any():
        raise ValueError("class frequencies must be >= 0 with at least one positive")
    smallest = frequency[frequency > 0].min()
    log_f = torch.log(torch.where(frequency > 0, frequency, smallest))
    low, high = log_f.min(), log_f.max()
    if high > low:
        bucket = torch.floor((log_f - low) / (high - low) * s).clamp(max=s - 1)
    else:
        bucket = torch.full_like(log_f, s - 1)
    x = bucket / (s - 1)
    return torch.sigmoid((x - a) / t).to(torch.float32)


@compiled_loss
def bucketed_sigmoid_bce_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, class_weights: torch.Tensor
) -> torch.Tensor:
    """Libra eq. 20 with C sigmoids: L = -(1/R) sum_r sum_j w_rj log(p_hat_rj), w_rj = 1 for
    the ROI's target class, w_j (eq. 23) for every other class.

    Args:
        logits: (R, C), any float dtype (computed in float32). gt_classes: (R,) in [0, C].
        class_weights: (C,) float32 w_j of :func:`bucketed_class_weights`.
    """
    z = logits.to(loss_dtype(logits))
    y = class_targets(gt_classes, z.shape[1])
    return weighted_sigmoid_bce(z, y, torch.where(y, 1.0, class_weights))


@CLASSIFIER_REGISTRY.register()
class BucketedSigmoidBCE(SigmoidBCE):
    """Libra eq. 20 with C sigmoids: L = -(1/R) sum_r sum_j w_rj log(p_hat_rj),
    w_rj = 1 for the ROI's target class, w_j (eq. 23) for every other class.

    The paper's background term (i = 0, weight 1) has no logit of its own with C sigmoids:
    a background ROI is an all-zero target row whose terms are all negatives, weighted w_j.

    Args:
        num_classes: C.
        frequency: (C,) f_j of eq. 21 (see MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE.FREQUENCY).
        s: number of buckets S (Libra Table 10: 10).
        a: turning point (0.5), t: temperature (Table 10: 0.025).
        prior: sigmoid bias prior, as in :class:`SigmoidBCE`.
    """

    uses_category_stats = True

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        frequency: Sequence[float],
        s: int = 10,
        a: float = 0.5,
        t: float = 0.025,
        prior: float = 0.001,
    ):
        super().__init__(num_classes=num_classes, prior=prior)
        frequency = torch.as_tensor(frequency)
        if frequency.shape != (num_classes,):
            raise ValueError(
                f"frequency must have one entry per class ({num_classes}), got shape "
                f"{tuple(frequency.shape)}"
            )
        # Derived from the statistics, so not saved in checkpoints.
        self.register_buffer(
            "class_weights", bucketed_class_weights(frequency, s, a, t), persistent=False
        )

    @classmethod
    def from_config(cls, cfg, num_classes: int, category_stats=None) -> dict:
        require_category_stats(cls.__name__, category_stats)
        node = cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE
        if node.FREQUENCY == "image":
            frequency = category_stats.image_frequency
        elif node.FREQUENCY == "instance":
            frequency = category_stats.instance_count_array
        else:
            raise ValueError(
                f"MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE.FREQUENCY must be 'image' or "
                f"'instance', got {node.FREQUENCY!r}"
            )
        ret = super().from_config(cfg, num_classes)
        ret.update(frequency=frequency.tolist(), s=node.S, a=node.A, t=node.T)
        return ret

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """Libra eq. 20 (:func:`bucketed_sigmoid_bce_loss`)."""
        return bucketed_sigmoid_bce_loss(logits, gt_classes, self.class_weights)
