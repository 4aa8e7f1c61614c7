"""The Classifier interface shared by every gradient-balancing method.

A Classifier owns everything that makes a method different: how many logits the final
linear layer produces, the training loss computed from ``(logits, gt_classes)``, the
conversion of logits into detectron2-style scores, the bias initialisation its paper
prescribes, and any persistent state (as registered buffers). Heads only ever talk to this
interface; they never branch on a method's name.

Shape shorthand: R = ROIs (two-stage) or anchors (dense), C = foreground classes,
L = ``num_logits``.
"""

import math
from typing import Dict, List

import torch
from detectron2.utils.registry import Registry
from torch import nn

from .checks import check_dense_inputs, check_gt_classes, check_logit_count

__all__ = [
    "CLASSIFIER_REGISTRY",
    "DENSE_CLASSIFIER_REGISTRY",
    "Classifier",
    "DenseClassifier",
    "prior_bias",
]

CLASSIFIER_REGISTRY = Registry("CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = """
Two-stage (ROI head) classifiers. Each is built with ``cls(cfg, num_classes=C)`` through its
``@configurable`` ``from_config`` (plus ``category_stats=stats`` when the class sets
``uses_category_stats``) and must be a :class:`Classifier`.
"""

DENSE_CLASSIFIER_REGISTRY = Registry("DENSE_CLASSIFIER")
DENSE_CLASSIFIER_REGISTRY.__doc__ = """
One-stage (dense head) classifiers, built like two-stage ones; each is a
:class:`DenseClassifier`.
"""


def prior_bias(prior: float) -> float:
    """The bias b with sigmoid(b) = prior (Focal loss / EQL v2 initialisation)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"a prior probability must lie in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


class Classifier(nn.Module):
    """Base class of two-stage classifiers.

    Subclasses implement :attr:`num_logits`, :meth:`losses` and :meth:`predict_probs`, and
    override :meth:`init_bias` and :meth:`logit_columns` where their method needs it.
    ``losses`` starts with :meth:`check_inputs` and computes the loss with the method's pure
    loss function (:func:`lt_d2.classifiers.compile.compiled_loss`).

    A method defined by the training set's category statistics (EQL's tail, BAGS's groups,
    ...) sets the class attribute ``uses_category_stats = True``; only then does the builder
    compute them and pass them to ``from_config`` as ``category_stats``.
    """

    #: Whether ``from_config`` takes the training set's CategoryStats (``category_stats``).
    uses_category_stats: bool = False

    def __init__(self, *, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self._labels_checked = False  # the label range is read on the host once

    @property
    def num_logits(self) -> int:
        """How many outputs the final linear layer must produce."""
        raise NotImplementedError

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Training loss.

        Args:
            logits: (R, L) raw outputs of the final layer.
            gt_classes: (R,) int64 in [0, C], C meaning background.

        Returns:
            named loss tensors whose sum is the classification loss.
        """
        raise NotImplementedError

    def check_inputs(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> None:
        """The checks every two-stage ``losses`` starts with: (R, num_logits) floating logits,
        (R,) integer labels; their range [0, C] until a non-empty batch has passed (it needs
        the values on the host; later steps stay free of host-device syncs)."""
        method = type(self).__name__
        check_gt_classes(
            logits,
            gt_classes,
            self.num_classes,
            method=method,
            check_values=not self._labels_checked,
        )
        check_logit_count(logits, self.num_logits, method)
        self._labels_checked = self._labels_checked or gt_classes.numel() > 0

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, L) logits -> (R, C + 1) scores, last column background (detectron2's layout)."""
        raise NotImplementedError

    def init_bias(self, bias: torch.Tensor) -> None:
        """Initialise the final layer's (L,) bias in place (default: zeros)."""
        nn.init.constant_(bias, 0.0)

    def logit_columns(self) -> List[int]:
        """For each category j < C, the logit column that scores it (length C).

        GradientStats attributes the gradient reaching that column to category j. The default
        suits layouts whose first C columns are the categories; classifiers with another
        layout override it, and those whose logits cannot be attributed raise
        ``NotImplementedError`` with the reason.
        """
        return list(range(self.num_classes))

    def balance_weights(self) -> Dict[str, torch.Tensor]:
        """The per-category (C,) weights a stateful method currently applies, by name (e.g.
        EQL v2's q and r), for the diagnostics' plots; empty for stateless methods."""
        return {}


class DenseClassifier(Classifier):
    """Base class of one-stage (dense) classifiers: C sigmoid logits per anchor (L = C).

    Their ``losses(logits, gt_classes, normalizer)`` take (N, C) logits over all anchors of a
    batch, (N,) labels in [-1, C] (-1 ignored, C background) and the number of foreground
    anchors to normalise by. ``predict_probs`` returns (N, C) sigmoid scores.
    """

    @property
    def num_logits(self) -> int:
        return self.num_classes

    def losses(  # type: ignore[override]
        self, logits: torch.Tensor, gt_classes: torch.Tensor, normalizer: float
    ) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def check_inputs(  # type: ignore[override]
        self, logits: torch.Tensor, gt_classes: torch.Tensor, normalizer: float
    ) -> None:
        """(N, C) floating logits, (N,) integer labels (range [-1, C] checked on the first
        non-empty batch has passed), a normaliser > 0."""
        check_dense_inputs(
            type(self).__name__,
            logits,
            gt_classes,
            self.num_classes,
            normalizer,
            check_values=not self._labels_checked,
        )
        self._labels_checked = self._labels_checked or gt_classes.numel() > 0

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()
