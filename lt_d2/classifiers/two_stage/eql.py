"""EQL: the equalization loss (Tan et al. 2020), as restated in DropLoss eq. 2.

Sigmoid BCE whose negative terms for tail categories (T_lambda(f_j) = 1) are dropped for
foreground ROIs only. BackgroundEQL and DropLoss subclass it and reweight the background
ROIs' terms as well (the ``background`` argument of :func:`eql_weights`).

The tail is defined either by the threshold lambda on the image frequency f_j (eq. 2:
T_lambda(f) = [f < lambda]; 1.76e-3 for LVIS v0.5 in the original EQL, 1.1e-3 for LVIS v1 in
EQL v2 sec. 4.5 and its official config ``eql_r50_8x2_1x.py``) or by LVIS frequency groups
(DropLoss eq. 7 names the tail "rare + common"), see :func:`eql_tail`. A tail without any
category would make the method plain sigmoid BCE and is refused.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
from typing import Optional, Sequence, Union

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..checks import require_category_stats
from ..compile import compiled_loss, loss_dtype
from .labels import class_targets
from .sigmoid_bce import SigmoidBCE, weighted_sigmoid_bce

__all__ = ["EQL", "FREQUENCY_GROUPS", "eql_loss", "eql_tail", "eql_weights"]

logger = logging.getLogger(__name__)

# LVIS frequency groups: rare (1-10 training images), common (11-100), frequent (> 100).
FREQUENCY_GROUPS = ("r", "c", "f")


def eql_tail(
    image_frequency: Sequence[float],
    lambda_: float,
    frequency_labels: Optional[Sequence[str]] = None,
    tail_groups: Sequence[str] = (),
) -> torch.Tensor:
    """T_lambda(f_j) of DropLoss eqs. 2, 4 and 6, the (C,) bool tail mask.

    With ``tail_groups`` empty: [f_j < lambda] (eq. 2). Otherwise: [label_j in tail_groups],
    the categories of the named LVIS frequency groups (eq. 7: "rare + common" is
    ``("r", "c")``); lambda is then unused.

    Args:
        image_frequency: (C,) f_j, fraction of training images that contain category j.
        lambda_: the threshold of eq. 2.
        frequency_labels: (C,) 'r' / 'c' / 'f' of each category; needed with ``tail_groups``.
        tail_groups: subset of :data:`FREQUENCY_GROUPS`, or empty to use lambda.

    Raises:
        ValueError: unknown or repeated group, labels missing or of the wrong length, or a
            tail without any category (naming the config key to change).
    """
    frequency = torch.as_tensor(image_frequency, dtype=torch.float64)
    num_classes = frequency.shape[0]
    groups = list(tail_groups)
    if not groups:
        tail = frequency < lambda_
        if not tail.any():
            raise ValueError(
                f"MODEL.CLASSIFIER.EQL.LAMBDA = {lambda_:g} puts no category in the tail (the "
                f"smallest image frequency is {float(frequency.min()):.3g}), so EQL / "
                f"BackgroundEQL / DropLoss would train as plain SigmoidBCE: raise "
                f"MODEL.CLASSIFIER.EQL.LAMBDA above it, or name the tail's frequency groups "
                f"with MODEL.CLASSIFIER.EQL.TAIL_GROUPS (e.g. ['r', 'c'], DropLoss eq. 7)"
            )
        return tail
    if not set(groups) <= set(FREQUENCY_GROUPS) or len(set(groups)) != len(groups):
        raise ValueError(
            f"MODEL.CLASSIFIER.EQL.TAIL_GROUPS = {groups} must list distinct LVIS frequency "
            f"groups out of {list(FREQUENCY_GROUPS)} (e.g. ['r', 'c']), or be empty to use "
            f"MODEL.CLASSIFIER.EQL.LAMBDA"
        )
    if frequency_labels is None or len(frequency_labels) != num_classes:
        raise ValueError(
            f"MODEL.CLASSIFIER.EQL.TAIL_GROUPS = {groups} needs one 'r' / 'c' / 'f' label per "
            f"category ({num_classes}); the category statistics have none: use "
            f"MODEL.CLASSIFIER.EQL.LAMBDA (TAIL_GROUPS []) instead"
        )
    tail = torch.tensor([label in groups for label in frequency_labels], dtype=torch.bool)
    if not tail.any():
        raise ValueError(
            f"MODEL.CLASSIFIER.EQL.TAIL_GROUPS = {groups} selects no category of the training "
            f"set, so EQL / BackgroundEQL / DropLoss would train as plain SigmoidBCE: name a "
            f"group the dataset has (it has {sorted(set(frequency_labels))})"
        )
    return tail


def eql_weights(
    y: torch.Tensor,
    gt_classes: torch.Tensor,
    tail: torch.Tensor,
    background: Union[torch.Tensor, float],
) -> torch.Tensor:
    """Weights of the equalization loss, DropLoss eq. 2 (Tan et al. 2020, eq. 2):
    w_rj = 1 - E(r) T_lambda(f_j) (1 - y_rj).

    E(r) = max_j y_rj is 1 for a foreground ROI: its negative terms of tail categories
    (T_lambda(f_j) = 1) are dropped, its other terms keep weight 1. The rows of background ROIs
    (E(r) = 0) get ``background``: 1 in eq. 2 itself, the eq. 4 or eq. 6 weights in
    BackgroundEQL and DropLoss.

    Args:
        y: (R, C) bool targets (:func:`class_targets`).
        gt_classes: (R,) int64 in [0, C], C = background.
        tail: (C,) bool, T_lambda(f_j).
        background: (R, C) weights of the background rows, or a float.

    Returns:
        (R, C) weights, in the dtype of ``background`` when a tensor, else float32.
    """
    dtype = background.dtype if isinstance(background, torch.Tensor) else torch.float32
    foreground = (gt_classes < tail.shape[0])[:, None]  # E(r)
    return torch.where(foreground, 1.0 - (tail & ~y).to(dtype), background)


@compiled_loss
def eql_loss(logits: torch.Tensor, gt_classes: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """DropLoss eq. 2: L = -(1/R) sum_r sum_j w_rj log(p_hat_rj), w of :func:`eql_weights`
    with weight 1 on background ROIs.

    Args:
        logits: (R, C), any float dtype (computed in float32). gt_classes: (R,) in [0, C].
        tail: (C,) bool, T_lambda(f_j).
    """
    z = logits.to(loss_dtype(logits))
    y = class_targets(gt_classes, z.shape[1])
    return weighted_sigmoid_bce(z, y, eql_weights(y, gt_classes, tail, 1.0))


@CLASSIFIER_REGISTRY.register()
class EQL(SigmoidBCE):
    """DropLoss eq. 2: L = -sum_j w_j log(p_hat_j), w_j = 1 - E(r) T_lambda(f_j) (1 - y_j).

    Args:
        num_classes: C.
        image_frequency: (C,) f_j, fraction of training images that contain category j.
        lambda_: tail threshold, T_lambda(f) = [f < lambda] (used when ``tail_groups`` is
            empty).
        prior: sigmoid bias prior, as in :class:`SigmoidBCE`.
        frequency_labels: (C,) 'r' / 'c' / 'f' labels (needed with ``tail_groups``).
        tail_groups: LVIS frequency groups forming the tail instead of lambda (DropLoss
            eq. 7: ``("r", "c")``); see :func:`eql_tail`.
    """

    uses_category_stats = True

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        image_frequency: Sequence[float],
        lambda_: float = 1.76e-3,
        prior: float = 0.001,
        frequency_labels: Optional[Sequence[str]] = None,
        tail_groups: Sequence[str] = (),
    ):
        super().__init__(num_classes=num_classes, prior=prior)
        if len(image_frequency) != num_classes:
            raise ValueError(
                f"image_frequency must have one entry per class ({num_classes}), got "
                f"{len(image_frequency)}"
            )
        self.lambda_ = lambda_
        self.tail_groups = tuple(tail_groups)
        # T_lambda(f_j): derived from the statistics, so not saved in checkpoints.
        tail = eql_tail(image_frequency, lambda_, frequency_labels, self.tail_groups)
        self.register_buffer("tail", tail, persistent=False)
        rule = f"groups {list(self.tail_groups)}" if self.tail_groups else f"f < {lambda_:g}"
        logger.info(
            "%s: %d of %d categories in the tail (%s)",
            type(self).__name__,
            int(tail.sum()),
            num_classes,
            rule,
        )

    @classmethod
    def from_config(cls, cfg, num_classes: int, category_stats=None) -> dict:
        require_category_stats(cls.__name__, category_stats)
        ret = super().from_config(cfg, num_classes)
        ret["image_frequency"] = category_stats.image_frequency.tolist()
        ret["lambda_"] = cfg.MODEL.CLASSIFIER.EQL.LAMBDA
        ret["frequency_labels"] = category_stats.frequency_labels.tolist()
        ret["tail_groups"] = tuple(cfg.MODEL.CLASSIFIER.EQL.TAIL_GROUPS)
        return ret

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """DropLoss eq. 2 (:func:`eql_loss`)."""
        return eql_loss(logits, gt_classes, self.tail)
