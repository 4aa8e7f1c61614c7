"""detectron2's RetinaNet with a pluggable dense classifier ([EFL] Tables 1 and 6).

Everything but classification is detectron2's: anchors, IoU matching (with ignored anchors),
the EMA loss normaliser, box regression and NMS. The classification loss and the inference
scores come from a :class:`lt_d2.classifiers.DenseClassifier`, which also initialises the
classification bias. Box regression additionally accepts lt_d2's losses of
:mod:`lt_d2.modeling.box_losses` in ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``.

Shape shorthand: N = images, R = anchors of one image over all levels, R_l = anchors on level
l, P = positive anchors of the batch, C = foreground classes, A = anchors per location.
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor

from lt_d2.classifiers import DenseClassifier

from ..box_losses import LT_BOX_REGRESSION_LOSSES, box_regression_loss, box_regression_loss_args
from .dense_classification import DenseClassifierHead

__all__ = ["LTRetinaNet"]


@META_ARCH_REGISTRY.register()
class LTRetinaNet(DenseClassifierHead, RetinaNet):
    """RetinaNet whose classification loss, scores and bias initialisation are delegated to a
    :class:`DenseClassifier`. Losses: the classifier's (``loss_cls``) and ``loss_box_reg``.
    """

    num_classes_key = "MODEL.RETINANET.NUM_CLASSES"

    @configurable
    def __init__(
        self,
        *,
        classifier: DenseClassifier,
        gradient_stats: bool = True,
        box_reg_loss_args: Optional[Dict[str, float]] = None,
        **kwargs,
    ):
        """
        Args:
            classifier: the dense classifier; its ``num_classes`` must equal ``num_classes``
                and it must produce one logit per class.
            gradient_stats: measure the per-category logit gradients (a
                :class:`~lt_d2.classifiers.gradient_stats.GradientStats` submodule).
            box_reg_loss_args: keyword arguments of
                :func:`lt_d2.modeling.box_losses.box_regression_loss` (``beta``, ``alpha``,
                ``gamma``) when ``box_reg_loss_type`` is one of lt_d2's losses.
            kwargs: detectron2 RetinaNet's own arguments (``focal_loss_alpha`` and
                ``focal_loss_gamma`` are not used: the classifier owns its loss).
        """
        super().__init__(**kwargs)
        if self.box_reg_loss_type in LT_BOX_REGRESSION_LOSSES and not box_reg_loss_args:
            raise ValueError(
                f"box_reg_loss_type '{self.box_reg_loss_type}' needs box_reg_loss_args (its "
                f"beta, alpha, gamma; from_config reads them from MODEL.BALANCED_L1)"
            )
        self.box_reg_loss_args = dict(box_reg_loss_args or {})
        self.attach_dense_classifier(classifier, gradient_stats)

    @classmethod
    def from_config(cls, cfg, category_stats=None) -> Dict:
        ret = super().from_config(cfg)
        ret.pop("focal_loss_alpha", None)
        ret.pop("focal_loss_gamma", None)
        ret.update(cls.dense_classifier_from_config(cfg, category_stats))
        if ret["box_reg_loss_type"] in LT_BOX_REGRESSION_LOSSES:
            ret["box_reg_loss_args"] = box_regression_loss_args(
                cfg, ret["box_reg_loss_type"], ret["smooth_l1_beta"]
            )
        return ret

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """detectron2's RetinaNet losses with the classification term from the classifier.

        Args:
            anchors: per level, R_l anchors.
            pred_logits, pred_anchor_deltas: per level, (N, R_l, C) and (N, R_l, 4).
            gt_labels, gt_boxes: per image, (R,) labels in [-1, C] (-1 ignored, C background)
                and (R, 4) matched boxes, from :meth:`RetinaNet.label_anchors`.
        """
        num_images = len(gt_labels)
        gt_labels, pos_mask = self.positive_anchors(gt_labels)  # (N, R) each
        num_pos_anchors = pos_mask.sum().item()
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)
        losses = self.dense_classification_losses(pred_logits, gt_labels, normalizer)

        if self.box_reg_loss_type in LT_BOX_REGRESSION_LOSSES:
            all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
            gt_deltas = self.box2box_transform.get_deltas(
                all_anchors.expand(num_images, -1, -1)[pos_mask], torch.stack(gt_boxes)[pos_mask]
            )  # (P, 4)
            loss_box_reg = box_regression_loss(
                self.box_reg_loss_type,
                cat(pred_anchor_deltas, dim=1)[pos_mask],
                gt_deltas,
                **self.box_reg_loss_args,
            )
        else:
            loss_box_reg = _dense_box_regression_loss(
                anchors,
                self.box2box_transform,
                pred_anchor_deltas,
                gt_boxes,
                pos_mask,
                box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta,
            )
        losses["loss_box_reg"] = loss_box_reg / normalizer
        return losses

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """detectron2's RetinaNet inference with scores from ``classifier.predict_probs``."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = self.image_scores(pred_logits, img_idx)
            deltas = [x[img_idx] for x in pred_anchor_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results
