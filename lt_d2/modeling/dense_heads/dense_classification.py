"""The wiring every lt_d2 one-stage detector shares: its classification is a DenseClassifier.

:class:`DenseClassifierHead` is the :class:`~lt_d2.modeling.classifier_head.ClassifierHead`
of a detectron2 ``DenseDetector`` (LTRetinaNet, ATSS) whose ``head.cls_score`` produces, per
location, A anchors x C classes logits. It builds the classifier from the config, checks it
against the head, initialises the classification bias through it, computes the
classification loss (observed by GradientStats) and turns logits into scores. The detectors
keep only what is specific to them: matching, box and quality losses, normalisers.

Shape shorthand: N = images, R = anchors of one image over all levels, R_l = anchors on level
l, P = positive anchors of the batch, C = foreground classes, A = anchors per location.
"""

import functools
from typing import Any, Dict, List, Tuple

import torch
from detectron2.layers import cat
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from lt_d2.classifiers import DenseClassifier, build_dense_classifier

from ..classifier_head import ClassifierHead

__all__ = ["DenseClassifierHead"]


class DenseClassifierHead(ClassifierHead):
    """Mixin of a ``DenseDetector`` whose ``head.cls_score`` logits go to a
    :class:`DenseClassifier` (one logit per class and anchor).

    The detector sets ``num_classes`` (C), ``head`` and ``anchor_generator`` (detectron2's
    attributes), then calls :meth:`attach_dense_classifier` in its ``__init__``.
    """

    num_classes: int
    head: nn.Module
    anchor_generator: nn.Module

    @classmethod
    def dense_classifier_from_config(cls, cfg, category_stats=None) -> Dict[str, Any]:
        """``classifier`` and ``gradient_stats`` arguments from ``cfg``: the classifier of
        MODEL.DENSE_CLASSIFIER for the class count at :attr:`num_classes_key`.

        Args:
            category_stats: the training set's :class:`~lt_d2.data.CategoryStats`; None
                computes them from DATASETS.TRAIN if the classifier uses them.
        """
        num_classes = functools.reduce(getattr, cls.num_classes_key.split("."), cfg)
        return {
            "classifier": build_dense_classifier(cfg, num_classes, category_stats),
            "gradient_stats": cfg.MODEL.GRADIENT_STATS.ENABLED,
        }

    def attach_dense_classifier(self, classifier: DenseClassifier, gradient_stats: bool) -> None:
        """Check ``classifier`` against the head, attach it (with a GradientStats when
        ``gradient_stats``) and let it initialise the (A * C,) bias of ``head.cls_score``,
        one (C,) row per anchor.

        Raises:
            ValueError: levels with different anchor counts, a classifier without exactly one
                logit per class, or classification channels other than A x C.
        """
        num_cell_anchors = set(self.anchor_generator.num_cell_anchors)
        if len(num_cell_anchors) != 1:
            raise ValueError(
                f"{type(self).__name__} needs the same number of anchors per location on every "
                f"level; got {self.anchor_generator.num_cell_anchors}: give "
                f"MODEL.ANCHOR_GENERATOR.SIZES the same number of sizes per level"
            )
        num_anchors = num_cell_anchors.pop()
        if classifier.num_classes != self.num_classes or classifier.num_logits != self.num_classes:
            raise ValueError(
                f"the dense classifier {type(classifier).__name__} has "
                f"{classifier.num_classes} classes and {classifier.num_logits} logits; "
                f"{type(self).__name__} needs one logit per class for {self.num_classes_key} = "
                f"{self.num_classes}"
            )
        cls_score = self.classification_layer()
        if cls_score.out_channels != num_anchors * self.num_classes:
            raise ValueError(
                f"the head predicts {cls_score.out_channels} classification channels, expected "
                f"{num_anchors} anchors x {self.num_classes} classes ({self.num_classes_key})"
            )
        self.attach_classifier(classifier, gradient_stats)
        with torch.no_grad():
            for bias in cls_score.bias.view(num_anchors, self.num_classes):
                classifier.init_bias(bias)

    def classification_layer(self) -> nn.Conv2d:
        return self.head.cls_score

    def positive_anchors(self, gt_labels: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Stack the per-image (R,) labels in [-1, C] (-1 ignored, C background) into (N, R)
        and mark the foreground ones; logs their mean count per image as ``num_pos_anchors``.

        Returns:
            (N, R) labels and their (N, R) bool foreground mask.
        """
        labels = torch.stack(gt_labels)
        positive = (labels >= 0) & (labels != self.num_classes)
        get_event_storage().put_scalar("num_pos_anchors", positive.sum().item() / len(gt_labels))
        return labels, positive

    def dense_classification_losses(
        self, pred_logits: List[Tensor], gt_labels: Tensor, normalizer: float
    ) -> Dict[str, Tensor]:
        """The classifier's losses (``loss_cls``) of all anchors of the batch.

        Args:
            pred_logits: per level, (N, R_l, C) logits.
            gt_labels: (N, R) labels in [-1, C].
            normalizer: the detector's loss normaliser (positive anchors, at least 1).
        """
        logits = cat(pred_logits, dim=1).reshape(-1, self.num_classes)
        return self.classification_losses(logits, gt_labels.reshape(-1), normalizer)

    def image_scores(self, pred_logits: List[Tensor], image_index: int) -> List[Tensor]:
        """Per level, the (R_l, C) scores in [0, 1] of one image, by ``classifier.predict_probs``.

        Args:
            pred_logits: per level, (N, R_l, C) logits.
        """
        return [self.classifier.predict_probs(x[image_index]) for x in pred_logits]
