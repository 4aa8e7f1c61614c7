"""ATSS (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection
via Adaptive Training Sample Selection") with a pluggable dense classifier.

The one-stage detector the EFL paper ([EFL] sec. 4.1, Tables 1, 2, 5, 6) builds its improved
baseline on. Positives are chosen by adaptive training sample selection (:mod:`.atss_matching`):
for every GT box, the k anchors nearest to its centre on each pyramid level are candidates,
and a candidate is positive when its IoU with the GT reaches the candidates' mean + standard
deviation and its centre lies inside the GT box; an anchor claimed by several GTs goes to the
one it overlaps most. Boxes are regressed with the GIoU loss on decoded boxes. A
localisation-quality branch predicts either the centerness of the anchor (ATSS) or the IoU of
the regressed box with its GT ([EFL] improved baseline); at inference its sigmoid is combined
with the classification probability as sqrt(p_cls * p_quality).

The head is detectron2's RetinaNet head plus the quality branch and a learnable scale per
level; inference is RetinaNet's. Classification goes through a
:class:`lt_d2.classifiers.DenseClassifier` (focal loss, EFL, EQL v2 & focal, ...), wired by
:class:`~.dense_classification.DenseClassifierHead`.

Shape shorthand: N = images, R = anchors of one image over all levels, R_l = anchors on
level l, G = GT boxes of one image, P = positive anchors of the batch, C = foreground classes,
A = anchors per location.
"""

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_anchor_generator, build_backbone
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from fvcore.nn import giou_loss
from torch import Tensor, nn
from torch.nn import functional as F

from lt_d2.classifiers import DenseClassifier
from lt_d2.compat import retinanet_head_norm

from .atss_matching import atss_match, centerness_targets
from .dense_classification import DenseClassifierHead
from .retinanet import LTRetinaNet

__all__ = ["ATSS", "ATSSHead"]


QUALITY_BRANCHES = ("centerness", "iou")


def _mean_over_workers(value: Tensor) -> float:
    """The average of a scalar tensor over all workers (the value itself on one worker)."""
    if comm.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / comm.get_world_size()
    return float(value)


class ATSSHead(RetinaNetHead):
    """ATSS's head: detectron2's RetinaNet head (a classification and a box tower shared by all
    levels) plus a learnable regression scale per level and a one-channel-per-anchor quality
    branch (centerness or IoU) on the box tower, the way detectron2's ``FCOSHead`` adds its
    centerness branch.

    Forward returns three lists over levels: logits (N, A*C, H, W), deltas (N, A*4, H, W)
    and quality logits (N, A, H, W). The classification bias is left for the detector to
    initialise through its classifier.
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: List[int],
        norm: str = "GN",
    ):
        """
        Args:
            input_shape: shapes of the input features, one per level (equal channels).
            num_classes: classification logits per anchor (the classifier's ``num_logits``).
            num_anchors: anchors per location (A).
            conv_dims: output channels of each tower conv (at least one).
            norm: normalisation of the tower convs (``detectron2.layers.get_norm`` names;
                "GN" is GroupNorm with 32 groups, ATSS's choice; "BN" and "SyncBN" are
                RetinaNetHead's per-level batch norms). Normalised tower convs have no bias.
        """
        if len({s.channels for s in input_shape}) != 1:
            raise ValueError(
                f"ATSSHead shares its towers across levels and needs equal channels, got "
                f"{[s.channels for s in input_shape]}"
            )
        if not conv_dims:
            raise ValueError("ATSSHead needs at least one tower conv (MODEL.ATSS.NUM_CONVS >= 1)")
        super().__init__(
            input_shape=input_shape,
            num_classes=num_classes,
            num_anchors=num_anchors,
            conv_dims=conv_dims,
            norm=retinanet_head_norm(norm),
        )
        if norm:  # a conv followed by a normalisation has no bias (and no bias key in checkpoints)
            for layer in (*self.cls_subnet, *self.bbox_subnet):
                if isinstance(layer, nn.Conv2d):
                    layer.bias = None
        self.quality = nn.Conv2d(conv_dims[-1], num_anchors, kernel_size=3, padding=1)
        nn.init.normal_(self.quality.weight, std=0.01)
        nn.init.constant_(self.quality.bias, 0.0)
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        if len(features) != len(self.scales):
            raise ValueError(
                f"ATSSHead was built for {len(self.scales)} feature levels, got "
                f"{len(features)}: check MODEL.ATSS.IN_FEATURES"
            )
        logits, deltas, quality = [], [], []
        for level, feature in enumerate(features):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            deltas.append(self.bbox_pred(box_feature) * self.scales[level])
            quality.append(self.quality(box_feature))
        return logits, deltas, quality


@META_ARCH_REGISTRY.register()
class ATSS(DenseClassifierHead, DenseDetector):
    """ATSS detector: adaptive training sample selection, GIoU box loss, centerness or IoU
    quality branch, classification by a pluggable :class:`DenseClassifier`.

    Losses: the classifier's (``loss_cls``), ``loss_box_reg`` and ``loss_centerness`` or
    ``loss_iou``.
    """

    num_classes_key = "MODEL.ATSS.NUM_CLASSES"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: ATSSHead,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        classifier: DenseClassifier,
        topk: int = 9,
        quality_branch: str = "centerness",
        box_loss_weight: float = 2.0,
        quality_loss_weight: float = 1.0,
        gradient_stats: bool = True,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone, head, head_in_features, pixel_mean, pixel_std: see
                :class:`detectron2.modeling.meta_arch.dense_detector.DenseDetector`.
            anchor_generator: anchors per level, highest resolution first.
            box2box_transform: anchor <-> box delta encoding.
            classifier: the dense classifier; its ``num_logits`` must equal the head's
                classification channels per anchor.
            topk: ATSS candidates per level and GT (k).
            quality_branch: "centerness" (ATSS) or "iou" ([EFL] improved baseline).
            box_loss_weight: weight of the GIoU loss.
            quality_loss_weight: weight of the quality-branch BCE loss.
            gradient_stats: measure the per-category logit gradients (a
                :class:`~lt_d2.classifiers.gradient_stats.GradientStats` submodule).
            test_score_thresh, test_topk_candidates, test_nms_thresh,
            max_detections_per_image: inference filtering, as in detectron2's RetinaNet.
            input_format: image channel order, for DenseDetector.visualize_training.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if quality_branch not in QUALITY_BRANCHES:
            raise ValueError(
                f"MODEL.ATSS.QUALITY_BRANCH must be one of {QUALITY_BRANCHES}, got "
                f"'{quality_branch}'"
            )
        if topk < 1:
            raise ValueError(f"MODEL.ATSS.TOPK must be >= 1, got {topk}")
        self.num_classes = classifier.num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.attach_dense_classifier(classifier, gradient_stats)
        self.num_anchors = anchor_generator.num_cell_anchors[0]

        self.topk = topk
        self.quality_branch = quality_branch
        self.box_loss_weight = box_loss_weight
        self.quality_loss_weight = quality_loss_weight
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg, category_stats=None) -> Dict:
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        missing = [f for f in cfg.MODEL.ATSS.IN_FEATURES if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.ATSS.IN_FEATURES names {missing}, which the backbone does not produce "
                f"(it has {sorted(backbone_shape)})"
            )
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.ATSS.IN_FEATURES]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        classification = cls.dense_classifier_from_config(cfg, category_stats)
        head = ATSSHead(
            input_shape=feature_shapes,
            num_classes=classification["classifier"].num_logits,
            num_anchors=anchor_generator.num_cell_anchors[0],
            conv_dims=[feature_shapes[0].channels] * cfg.MODEL.ATSS.NUM_CONVS,
            norm=cfg.MODEL.ATSS.NORM,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": cfg.MODEL.ATSS.IN_FEATURES,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.ATSS.BBOX_REG_WEIGHTS),
            **classification,
            "topk": cfg.MODEL.ATSS.TOPK,
            "quality_branch": cfg.MODEL.ATSS.QUALITY_BRANCH,
            "box_loss_weight": cfg.MODEL.ATSS.BOX_LOSS_WEIGHT,
            "quality_loss_weight": cfg.MODEL.ATSS.QUALITY_LOSS_WEIGHT,
            "test_score_thresh": cfg.MODEL.ATSS.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.ATSS.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, pred_quality = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_quality)

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """ATSS labels: per image, (R,) classes in [0, C] (C = background; no anchor is
        ignored) and (R, 4) matched GT boxes (zeros for background anchors)."""
        anchors_per_level = [a.tensor for a in anchors]
        num_anchors = sum(len(a) for a in anchors)
        gt_labels, matched_boxes = [], []
        for gt_per_image in gt_instances:
            matched = atss_match(anchors_per_level, gt_per_image.gt_boxes.tensor, self.topk)
            foreground = matched >= 0
            labels = torch.full_like(matched, self.num_classes)
            boxes = anchors_per_level[0].new_zeros((num_anchors, 4))
            labels[foreground] = gt_per_image.gt_classes[matched[foreground]]
            boxes[foreground] = gt_per_image.gt_boxes.tensor[matched[foreground]]
            gt_labels.append(labels)
            matched_boxes.append(boxes)
        return gt_labels, matched_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        pred_quality: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: per level, R_l anchors.
            pred_logits, pred_deltas, pred_quality: per level, (N, R_l, C), (N, R_l, 4),
                (N, R_l, 1).
            gt_labels, gt_boxes: per image, (R,) and (R, 4) from :meth:`label_anchors`.

        The classification and quality losses are normalised by the number of positive
        anchors averaged over workers (at least 1). The GIoU loss is weighted by the quality
        targets and normalised by their sum averaged over workers: the centerness targets
        (ATSS), or the IoU targets with the sum over all workers taken at least 1 before the
        average (the EFL authors' code, United-Perception's IoU-branch post-process).
        """
        num_images = len(gt_labels)
        gt_labels, positive = self.positive_anchors(gt_labels)  # (N, R) each
        normalizer = max(_mean_over_workers(positive.sum().float()), 1.0)
        losses = self.dense_classification_losses(pred_logits, gt_labels, normalizer)

        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        pos_anchors = all_anchors.expand(num_images, -1, -1)[positive]  # (P, 4)
        pos_gt = torch.stack(gt_boxes)[positive]  # (P, 4)
        pos_deltas = cat(pred_deltas, dim=1)[positive]  # (P, 4)
        pos_quality = cat(pred_quality, dim=1).squeeze(2)[positive]  # (P,)
        pred_boxes = self.box2box_transform.apply_deltas(pos_deltas, pos_anchors)
        box_losses = giou_loss(pred_boxes, pos_gt, reduction="none")  # (P,)

        if self.quality_branch == "centerness":
            centers = (pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2
            quality_targets = centerness_targets(centers, pos_gt)
            weight_sum = max(_mean_over_workers(quality_targets.sum()), 1e-6)
        else:
            quality_targets = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(pos_gt))
            workers = comm.get_world_size()
            weight_sum = max(_mean_over_workers(quality_targets.sum()) * workers, 1.0) / workers
        loss_box = (box_losses * quality_targets).sum() / weight_sum
        loss_quality = (
            F.binary_cross_entropy_with_logits(pos_quality, quality_targets, reduction="sum")
            / normalizer
        )
        losses["loss_box_reg"] = self.box_loss_weight * loss_box
        losses[f"loss_{self.quality_branch}"] = self.quality_loss_weight * loss_quality
        return losses

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """detectron2's RetinaNet inference on the scores sqrt(p_cls * sigmoid(quality)), as
        detectron2's FCOS (arXiv:2006.09214, eq. 4), with p_cls from the classifier."""
        pred_logits, pred_deltas, pred_quality = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = [
                torch.sqrt(probs * quality[img_idx].sigmoid())
                for probs, quality in zip(self.image_scores(pred_logits, img_idx), pred_quality)
            ]
            deltas = [d[img_idx] for d in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    # Per level (R_l, C) scores and (R_l, 4) deltas -> detections after per-class NMS: the
    # top-k candidates per level above the score threshold, decoded, NMS, the best kept.
    inference_single_image = RetinaNet.inference_single_image
    # each level's top-k before its score threshold (memory at SCORE_THRESH_TEST 0.0)
    _decode_per_level_predictions = LTRetinaNet._decode_per_level_predictions
