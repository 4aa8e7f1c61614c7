"""BackgroundEQL: the background equalization loss, DropLoss eq. 4.

EQL's weights for foreground ROIs; for background ROIs a tail category's negative term is
down-weighted while its score is low: w_j = 1 - T_lambda(f_j) min{-log_b(p_j), 1}.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
import math
from typing import Optional

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from .eql import EQL, BackgroundWeights

__all__ = ["BackgroundEQL", "background_eql_weights"]

logger = logging.getLogger(__name__)


def background_eql_weights(
    probs: torch.Tensor, tail: torch.Tensor, base: float, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """DropLoss eq. 4, the background rows: w_j = 1 - T_lambda(f_j) min{-log_b(p_j), 1},
    computed as 1 + T_lambda(f_j) max{log_b(p_j), -1} in one (R, C) buffer (``out`` if
    given).

    log_b(p_j) = ln(p_j) / ln(b), with p_j first clamped to the smallest normal number of its
    dtype (no -inf where sigmoid(z_j) underflows); that leaves min{-log_b(p_j), 1} = 1
    unchanged for any b below 1 / tiny (about 1e38 in float32). A score p_j <= 1/b drops the
    term of a tail category entirely; b -> inf gives EQL's weight 1.

    Args:
        probs: (R, C) sigmoid scores p = sigmoid(z) (detached: the weight is a constant in the
            loss); not modified.
        tail: (C,) bool, T_lambda(f_j).
        base: logarithm base b > 1.

    Returns:
        (R, C) weights of every row as if it were a background ROI (the caller applies eq. 2
        to the foreground rows).
    """
    tiny = torch.finfo(probs.dtype).tiny
    log_b_p = torch.clamp(probs, min=tiny, out=out).log_().div_(math.log(base))
    return log_b_p.clamp_(min=-1.0).mul_(tail.to(probs.dtype)).add_(1.0)


@CLASSIFIER_REGISTRY.register()
class BackgroundEQL(EQL):
    """DropLoss eq. 4: EQL weights (eq. 2) on foreground ROIs, eq. 4 on background ROIs.

    Args:
        kwargs: :class:`EQL`'s arguments (the tail: lambda or frequency groups).
        b: logarithm base of eq. 4 (DropLoss Table 3: b = 4 is the best setting).
    """

    @configurable
    def __init__(self, *, b: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        if b <= 1.0:
            raise ValueError(f"the logarithm base b of BackgroundEQL must be > 1, got {b}")
        self.b = b

    @classmethod
    def from_config(cls, cfg, num_classes: int, category_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, category_stats)
        ret["b"] = cfg.MODEL.CLASSIFIER.BACKGROUND_EQL.B
        return ret

    def background_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> BackgroundWeights:
        """Eq. 4 weights of a row chunk from the loss kernel's own sigmoid scores
        (:func:`background_eql_weights`), so that sigmoid(z) is evaluated once."""
        return lambda rows, z, p, out: background_eql_weights(p, self.tail, self.b, out)
