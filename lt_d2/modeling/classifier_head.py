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
from lt_d2.classifiers.gradient_stats import GradientBalance, GradientStats

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
        """The classifier's losses of (R, L) ``logits``, measured by the GradientStats: its
        hook on the logits, and on ``loss_cls`` for the loss scale and weight to divide out.

        ``args`` are passed on to ``classifier.losses`` (a dense classifier's normaliser).
        """
        if self.gradient_stats is None:
            return dict(self.classifier.losses(logits, gt_classes, *args))
        logits = self.gradient_stats.observe(logits, gt_classes)
        losses = dict(self.classifier.losses(logits, gt_classes, *args))
        losses["loss_cls"] = self.gradient_stats.watch_loss(losses["loss_cls"])
        return losses

    def gradient_balance(self) -> Optional[GradientBalance]:
        """Accumulated per-category gradients, summed over all workers (a collective call,
        :meth:`~lt_d2.classifiers.gradient_stats.GradientStats.synced`); None without a
        GradientStats."""
        if self.gradient_stats is None:
            return None
        return self.gradient_stats.synced()


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
