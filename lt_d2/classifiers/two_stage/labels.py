"""The two-stage classifiers' views of a batch's labels, on the device without a host sync.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import torch

__all__ = ["class_counts", "class_targets"]


def class_targets(gt_classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(R,) labels in [0, C] -> (R, C) bool binary targets y_rj = [gt_r = j]; a background ROI
    (gt_r = C) is an all-zero row (EQL v2 Table 1(b), DropLoss eq. 2)."""
    return gt_classes[:, None] == torch.arange(num_classes, device=gt_classes.device)


def class_counts(gt_classes: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(R,) labels in [0, C] -> (C,) number of ROIs of each foreground class (background
    dropped), in ``dtype``."""
    ones = torch.ones(gt_classes.shape, dtype=dtype, device=gt_classes.device)
    return ones.new_zeros(num_classes + 1).scatter_add_(0, gt_classes, ones)[:num_classes]
