"""Standard and Cascade ROI heads whose box predictors delegate classification to a
Classifier, with an optional IoU-balanced proposal sampler (Libra R-CNN sec. 3.1), and a
choice of how Cascade stages' scores combine at inference.

Mask and keypoint heads are detectron2's, unchanged.
"""

from typing import List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .box_predictor import LTBoxPredictor
from .sampling import iou_balanced_subsample

__all__ = ["LTStandardROIHeads", "LTCascadeROIHeads", "CASCADE_SCORE_AVERAGING"]

_SAMPLERS = ("Random", "IoUBalanced")
# How Cascade stages' classification outputs are averaged: "logits" (then the classifier's
# activation; the official EQL v2 / BAGS cascade code) or "probs" (detectron2's).
CASCADE_SCORE_AVERAGING = ("logits", "probs")


class _BalancedSamplingMixin:
    """Proposal labelling and sampling with a choice of sampler.

    ``Random`` is detectron2's own; ``IoUBalanced`` needs each proposal's IoU with its matched
    ground truth, which detectron2's sampling seam (``_sample_proposals``) does not receive,
    hence this override of ``label_and_sample_proposals``.
    """

    @configurable
    def __init__(self, *, sampler: str = "Random", iou_balanced_opts: dict = None, **kwargs):
        """
        Args:
            sampler: "Random" (detectron2's) or "IoUBalanced".
            iou_balanced_opts: keyword arguments of :func:`iou_balanced_subsample`.
            kwargs: the ROI heads' own arguments.
        """
        super().__init__(**kwargs)
        if sampler not in _SAMPLERS:
            raise ValueError(
                f"MODEL.ROI_HEADS.SAMPLER = '{sampler}' is unknown; choose one of {_SAMPLERS}"
            )
        self.sampler = sampler
        self.iou_balanced_opts = iou_balanced_opts or {}

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        opts = cfg.MODEL.ROI_HEADS.IOU_BALANCED
        ret["sampler"] = cfg.MODEL.ROI_HEADS.SAMPLER
        ret["iou_balanced_opts"] = {
            "num_bins": opts.NUM_BINS,
            "floor_thresh": opts.FLOOR_THRESH,
            "positive_balance": opts.POSITIVE_BALANCE,
        }
        return ret

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        if self.sampler == "Random":
            return super().label_and_sample_proposals(proposals, targets)
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        sampled, num_fg, num_bg = [], [], []
        for props, tgts in zip(proposals, targets):
            iou = pairwise_iou(tgts.gt_boxes, props.proposal_boxes)  # (M, P)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            if len(tgts):
                labels = tgts.gt_classes[matched_idxs]
                labels[matched_labels == 0] = self.num_classes
                labels[matched_labels == -1] = -1
                max_ious = iou.max(dim=0).values
            else:
                labels = torch.full_like(matched_idxs, self.num_classes)
                max_ious = iou.new_zeros(len(props))
            fg_idxs, bg_idxs = iou_balanced_subsample(
                labels,
                max_ious,
                matched_idxs,
                self.batch_size_per_image,
                self.positive_fraction,
                self.num_classes,
                **self.iou_balanced_opts,
            )
            idxs = torch.cat([fg_idxs, bg_idxs])
            props = props[idxs]
            props.gt_classes = labels[idxs]
            if len(tgts):
                for name, value in tgts.get_fields().items():
                    if name.startswith("gt_") and not props.has(name):
                        props.set(name, value[matched_idxs[idxs]])
            num_fg.append(len(fg_idxs))
            num_bg.append(len(bg_idxs))
            sampled.append(props)
        storage = get_event_storage()
        storage.put_scalar("roi_head/num_fg_samples", np.mean(num_fg))
        storage.put_scalar("roi_head/num_bg_samples", np.mean(num_bg))
        return sampled


@ROI_HEADS_REGISTRY.register()
class LTStandardROIHeads(_BalancedSamplingMixin, StandardROIHeads):
    """StandardROIHeads (Faster / Mask R-CNN) with an :class:`LTBoxPredictor`."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        # detectron2's seam for a custom predictor: its _init_box_head builds the pooler, the
        # box head and a FastRCNNOutputLayers in one method; replacing the predictor keeps the
        # rest without copying it (the replaced layers cost one allocation at build time).
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = LTBoxPredictor(cfg, ret["box_head"].output_shape)
        return ret


@ROI_HEADS_REGISTRY.register()
class LTCascadeROIHeads(_BalancedSamplingMixin, CascadeROIHeads):
    """CascadeROIHeads with an :class:`LTBoxPredictor` (own Classifier) in every stage.

    At inference the K stages' scores are combined either as detectron2 does, the average of
    the K stages' probabilities (``score_averaging="probs"``), or as the official EQL v2 and
    BAGS code does (mmdetection's cascade test), the last stage's classifier applied to the
    average of the K stages' logits (``"logits"``, the default: the papers are silent).
    """

    @configurable
    def __init__(self, *, score_averaging: str = "logits", **kwargs):
        """
        Args:
            score_averaging: "logits" or "probs" (:data:`CASCADE_SCORE_AVERAGING`).
            kwargs: the Cascade ROI heads' own arguments.
        """
        super().__init__(**kwargs)
        if score_averaging not in CASCADE_SCORE_AVERAGING:
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD.SCORE_AVERAGING = '{score_averaging}' is unknown; "
                f"choose one of {CASCADE_SCORE_AVERAGING}"
            )
        self.score_averaging = score_averaging

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["score_averaging"] = cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCORE_AVERAGING
        return ret

    def _forward_box(self, features, proposals, targets=None):
        """detectron2's, except at inference with ``score_averaging="logits"``: the stages
        run as there (each refines the previous stage's boxes), then the scores are
        ``predict_probs`` of the last stage's predictor on the (R, L) mean of the stages'
        logits, and the boxes are the last stage's."""
        if self.training or self.score_averaging == "probs":
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stage_logits, boxes = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            stage_logits.append(predictions[0])
        predictor = self.box_predictor[-1]
        mean_logits = torch.stack(stage_logits).mean(dim=0)
        scores = predictor.predict_probs((mean_logits, predictions[1]), proposals)
        pred_instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return pred_instances

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        # as LTStandardROIHeads; each stage's predictor keeps the stage's box2box_transform
        # (its MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS) that detectron2 built
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            LTBoxPredictor(cfg, head.output_shape, box2box_transform=predictor.box2box_transform)
            for head, predictor in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret
