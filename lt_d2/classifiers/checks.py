"""Input checks of the classifiers: fail early, naming the problem and the fix.

Every check that a classifier or GradientStats runs on its logits, labels or
statistics lives here, so that the messages (which tests and users match) are written once.

Shape shorthand: R = ROIs (two-stage) or N = anchors (dense), C = foreground classes,
L = the classifier's ``num_logits``.
"""

from typing import Union

import torch

__all__ = [
    "check_dense_inputs",
    "check_gt_classes",
    "check_logit_count",
    "check_observed_inputs",
    "require_category_stats",
]


_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_gt_classes(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    num_classes: int,
    allow_ignore: bool = False,
    *,
    method: str = "the classifier",
    check_values: bool = True,
) -> None:
    """Fail early, with the fix, on logits/labels that do not match.

    Shapes and dtypes are checked from the tensors' metadata (no host-device sync); the
    label range needs the values on the host and is checked only with ``check_values``
    (a classifier's first batch: :meth:`lt_d2.classifiers.Classifier.check_inputs`).

    Args:
        logits: (R, L).
        gt_classes: (R,) integer in [0, C] (C = background), or [-1, C] with ``allow_ignore``.
        method: the classifier's name, for the messages.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (R, L), got shape {tuple(logits.shape)}")
    if gt_classes.dim() != 1 or gt_classes.shape[0] != logits.shape[0]:
        raise ValueError(
            f"gt_classes must have shape ({logits.shape[0]},) to match logits "
            f"{tuple(logits.shape)}, got {tuple(gt_classes.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{method} needs floating-point logits, got {logits.dtype}")
    if gt_classes.dtype not in _INTEGER_DTYPES:
        raise TypeError(
            f"{method} needs integer gt_classes (class indices), got {gt_classes.dtype}: pass "
            f"the labels as torch.int64 (detectron2's Instances.gt_classes)"
        )
    if not check_values or gt_classes.numel() == 0:
        return
    low = -1 if allow_ignore else 0
    lo, hi = int(gt_classes.min()), int(gt_classes.max())
    if lo < low or hi > num_classes:
        raise ValueError(
            f"gt_classes must lie in [{low}, {num_classes}] ({num_classes} = background), got "
            f"values in [{lo}, {hi}]: check MODEL.*.NUM_CLASSES against the dataset's categories"
        )


def check_logit_count(logits: torch.Tensor, num_logits: int, method: str) -> None:
    """Fail early when the final layer's width does not match the classifier's ``num_logits``.

    Args:
        logits: (R, L).
    """
    if logits.dim() == 2 and logits.shape[1] != num_logits:
        raise ValueError(
            f"{method} expects (R, {num_logits}) logits, got {tuple(logits.shape)}: build the "
            f"box predictor's final layer with classifier.num_logits outputs"
        )


def check_dense_inputs(
    method: str,
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    num_classes: int,
    normalizer: Union[float, torch.Tensor],
    check_values: bool = True,
) -> None:
    """Fail early, naming the fix, on inputs a dense classifier cannot use (the label range
    only with ``check_values``, see :func:`check_gt_classes`).

    Args:
        logits: (N, C). gt_classes: (N,) integer in [-1, C]. normalizer: > 0.
    """
    check_gt_classes(
        logits, gt_classes, num_classes, True, method=method, check_values=check_values
    )
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"{method} expects (N, {num_classes}) logits (one sigmoid logit per category), got "
            f"{tuple(logits.shape)}: build the head's classification output with "
            f"classifier.num_logits channels per anchor"
        )
    if not isinstance(normalizer, torch.Tensor) and not normalizer > 0:
        raise ValueError(
            f"{method}: normalizer must be > 0 (the number of foreground anchors, at least 1), "
            f"got {normalizer}"
        )


def check_observed_inputs(logits: torch.Tensor, gt_classes: torch.Tensor) -> None:
    """GradientStats attributes each row's gradient to its label: (R, L) logits, (R,) labels."""
    if logits.dim() != 2 or gt_classes.shape != logits.shape[:1]:
        raise ValueError(
            f"GradientStats.observe expects logits (R, L) and gt_classes (R,), got "
            f"{tuple(logits.shape)} and {tuple(gt_classes.shape)}"
        )


def require_category_stats(method: str, category_stats) -> None:
    """Fail early when a frequency-based classifier is built without category statistics."""
    if category_stats is None:
        raise ValueError(
            f"{method} needs the training set's category statistics (image/instance counts); "
            f"pass category_stats=CategoryStats.from_dataset(cfg.DATASETS.TRAIN[0])"
        )
