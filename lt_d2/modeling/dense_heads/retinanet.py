"""detectron2's RetinaNet with a pluggable dense classifier ([EFL] Tables 1 and 6).

Everything but classification is detectron2's: anchors, IoU matching (with ignored anchors),
the EMA loss normaliser, box regression and NMS. The classification loss and the inference
scores come from a :class:`lt_d2.classifiers.DenseClassifier`, which also initialises the
classification bias. Box regression additionally accepts lt_d2's losses of
:mod:`lt_d2.modeling.box_losses` in ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``.

Shape shorthand: N = images, R = anchors of one image over all levels, R_l = anchors on level
l, P = positive anchors of the batch, C = foreground classes, A = anchors per location.
"""

from typing import Dict, List, Optional, Tuple

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


# Scores per top-k call: torch's CPU top-k copies its whole input (values and indices).
_TOPK_CHUNK = 1 << 22


def _topk_of_flat(scores: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The ``k`` largest of (M,) ``scores`` (all when M <= k) and their indices, descending:
    the top-k of the union of each chunk's top-k, so that no call sees more than
    ``_TOPK_CHUNK`` scores."""
    k = min(k, scores.numel())
    if scores.numel() <= _TOPK_CHUNK:
        return scores.topk(k)
    values, indices = [], []
    for start in range(0, scores.numel(), _TOPK_CHUNK):
        chunk = scores[start : start + _TOPK_CHUNK]
        v, i = chunk.topk(min(k, chunk.numel()))
        values.append(v)
        indices.append(i + start)
    best, pos = cat(values).topk(k)
    return best, cat(indices)[pos]


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

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """detectron2's decoding of one level (``DenseDetector._decode_per_level_predictions``)
        with its two filters in the other order: the level's ``topk_candidates`` best scores
        first, then those above ``score_thresh``. The detections are the same (the best k of
        the scores above a threshold are the best k scores less those not above it), but no
        (R_l, C) mask, no index tensor per kept score and no sort of them: at
        SCORE_THRESH_TEST 0.0, which keeps every score, those held ~180M scores of P3 for one
        800 x 1333 image at 1203 classes (``benchmarks/bench_dense_decoding.py``). The top-k
        itself runs over chunks of the scores (:func:`_topk_of_flat`).

        Args:
            anchors: R_l anchors of the level.
            pred_scores: (R_l, C) scores.
            pred_deltas: (R_l, 4) box deltas.
        """
        num_classes = pred_scores.shape[1]
        scores, flat_idxs = _topk_of_flat(pred_scores.flatten(), topk_candidates)
        keep = scores > score_thresh
        scores, flat_idxs = scores[keep], flat_idxs[keep]
        anchor_idxs = flat_idxs // num_classes
        pred_boxes = self.box2box_transform.apply_deltas(
            pred_deltas[anchor_idxs], anchors.tensor[anchor_idxs]
        )
        return Instances(
            image_size,
            pred_boxes=Boxes(pred_boxes),
            scores=scores,
            pred_classes=flat_idxs % num_classes,
        )
