"""ATSS's sample selection and its centerness targets, as pure functions of boxes.

Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection": positives are chosen by adaptive training sample
selection (:func:`atss_match`, the paper's Algorithm 1); the centerness branch regresses
:func:`centerness_targets` (FCOS's definition, which ATSS keeps).

Shape shorthand: R = anchors of one image over all levels, R_l = anchors on level l, G = GT
boxes of one image, P = positive anchors.
"""

from typing import Sequence

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = ["atss_match", "centerness_targets"]


def atss_match(anchors_per_level: Sequence[Tensor], gt_boxes: Tensor, topk: int) -> Tensor:
    """Adaptive training sample selection (ATSS paper, Algorithm 1) for one image.

    For each GT g: on every level l, the ``min(topk, R_l)`` anchors whose centres are nearest
    (L2) to g's centre form the candidate set C_g; t_g = mean(IoU(C_g, g)) + std(IoU(C_g, g))
    (sample standard deviation, as in the ATSS reference code); a candidate is positive for g
    when IoU >= t_g and its centre lies strictly inside g. An anchor positive for several GTs
    is assigned to the one with the highest IoU.

    Args:
        anchors_per_level: per level, (R_l, 4) anchor boxes (x0, y0, x1, y1).
        gt_boxes: (G, 4) GT boxes.
        topk: candidates per level and GT (k >= 1; the ATSS detector checks MODEL.ATSS.TOPK
            when it is built).

    Returns:
        (R,) int64: the index of the matched GT per anchor, -1 for background.
    """
    anchors = torch.cat(list(anchors_per_level), dim=0)
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return matched

    anchor_centers = (anchors[:, :2] + anchors[:, 2:]) / 2  # (R, 2)
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
    distances = torch.cdist(anchor_centers, gt_centers)  # (R, G)

    candidates = []  # per level: (k_l, G) anchor indices into the concatenation
    start = 0
    for level_anchors in anchors_per_level:
        count = level_anchors.shape[0]
        if count > 0:
            k = min(topk, count)
            nearest = distances[start : start + count].topk(k, dim=0, largest=False).indices
            candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates, dim=0)  # (K, G)

    ious = pairwise_iou(Boxes(anchors), Boxes(gt_boxes))  # (R, G)
    candidate_ious = ious.gather(0, candidates)  # (K, G)
    threshold = candidate_ious.mean(dim=0)
    if candidates.shape[0] > 1:
        threshold = threshold + candidate_ious.std(dim=0)
    positive = candidate_ious >= threshold[None, :]

    # centre strictly inside the GT: min(cx - x0, cy - y0, x1 - cx, y1 - cy) > 0
    centers = anchor_centers[candidates]  # (K, G, 2)
    inside = torch.cat([centers - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - centers], dim=2)
    positive &= inside.min(dim=2).values > 0

    # an anchor positive for several GTs takes the GT with the highest IoU
    claimed = torch.full_like(ious, -1.0)  # (R, G): IoU where positive, -1 elsewhere
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
    claimed[candidates[positive], gt_index[positive]] = candidate_ious[positive]
    best_iou, best_gt = claimed.max(dim=1)
    return torch.where(best_iou >= 0, best_gt, matched)


def centerness_targets(anchor_centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS/ATSS centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) (FCOS,
    Tian et al. 2019, eq. 3).

    Args:
        anchor_centers: (P, 2) anchor centres, strictly inside their GT.
        gt_boxes: (P, 4) matched GT boxes.

    Returns:
        (P,) in (0, 1].
    """
    left_right = torch.stack(
        [anchor_centers[:, 0] - gt_boxes[:, 0], gt_boxes[:, 2] - anchor_centers[:, 0]], dim=1
    )
    top_bottom = torch.stack(
        [anchor_centers[:, 1] - gt_boxes[:, 1], gt_boxes[:, 3] - anchor_centers[:, 1]], dim=1
    )
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values
    )
    return ratio.clamp(min=0).sqrt()
