"""The one contract between lt_d2's heads and everything that inspects them.

A module whose classification is a :class:`~lt_d2.classifiers.Classifier` (the ROI box
predictor, the RetinaNet and ATSS detectors) derives from :class:`ClassifierHead` and thereby
exposes, under fixed names:

- ``classifier``: the method (losses, scores, bias initialisation, state);
- ``gradient_stats``: its :class:`~lt_d2.classifiers.gradient_stats.GradientStats`, or None;
- :meth:`ClassifierHead.classification_layer`: the final layer producing the logits;
- :attr:`ClassifierHead.num_classes_key`: the config key its class count came from.

The diagnostics hook and the trainer's model checks find heads with :func:`classifier_heads` and
use only these names: no attribute guessing, no table of meta-architectures.

Shape shorthand: R = ROIs or anchors, C = foreground classes, L = the classifier's logits.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from lt_d2.classifiers import Classifier
from lt_d2.classifiers.gradient_stats import GradientBalance, GradientStats, gradient_balance

__all__ = ["ClassifierHead", "classifier_heads", "unwrap_ddp"]


class ClassifierHead:
    """Mixin of every ``nn.Module`` head that classifies with a lt_d2 Classifier.

    The subclass calls :meth:`attach_classifier` in its ``__init__`` (after ``nn.Module``'s)
    and routes its training logits through :meth:`classification_losses`.
    """

    #: The config key holding the head's class count, for error messages (e.g.
    #: "MODEL.ROI_HEADS.NUM_CLASSES").
    num_classes_key: str = ""

    classifier: Classifier
    gradient_stats: Optional[GradientStats]

    def attach_classifier(self, classifier: Classifier, gradient_stats: bool) -> None:
        """Own ``classifier`` and, when ``gradient_stats``, a GradientStats measuring it."""
        self.classifier = classifier
        self.gradient_stats = GradientStats(classifier) if gradient_stats else None

    def classification_layer(self) -> nn.Module:
        """The final layer producing the logits: an ``nn.Linear`` with (L, D) weight, or an
        ``nn.Conv2d`` with (A * L, D, k, k) weight whose output channels are anchor-major."""
        raise NotImplementedError(f"{type(self).__name__} must name its classification layer")

    def classification_losses(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *args
    ) -> Dict[str, torch.Tensor]:
        """The classifier's losses of (R, L) ``logits``, observed by the GradientStats first
        (through its hook, or through the sink it hands a classifier that computes the sums in
        its own backward pass, ``Classifier.computes_gradient_sums``).

        ``args`` are passed on to ``classifier.losses`` (a dense classifier's normaliser).
        """
        kwargs = {}
        if self.gradient_stats is not None:
            logits = self.gradient_stats.observe(logits, gt_classes)
            sink = self.gradient_stats.gradient_sink()
            if sink is not None:
                kwargs["gradient_sink"] = sink
        return dict(self.classifier.losses(logits, gt_classes, *args, **kwargs))

    def gradient_balance(self) -> Optional[GradientBalance]:
        """Accumulated per-category gradients, summed over all workers (a collective call,
        see :func:`~lt_d2.classifiers.gradient_stats.gradient_balance`); None without a
        GradientStats."""
        if self.gradient_stats is None:
            return None
        return gradient_balance(self.classifier, self.gradient_stats)


def classifier_heads(model: nn.Module) -> List[Tuple[str, ClassifierHead]]:
    """Every :class:`ClassifierHead` of ``model`` (DDP-wrapped or not), in module order, with
    its qualified name ("" for the model itself)."""
    return [
        (name, m) for name, m in unwrap_ddp(model).named_modules() if isinstance(m, ClassifierHead)
    ]


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (as detectron2's trainer builds it
    for several workers), else ``model``: its module names are those of a single process."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model
