"""IoU-balanced sampling of ROI-head training samples, Libra R-CNN sec. 3.1.

A drop-in alternative to detectron2's :func:`detectron2.modeling.sampling.subsample_labels`:
same inputs plus each proposal's best IoU and matched ground truth, same outputs (indices of
the sampled positives and negatives). The number of positives and negatives drawn is exactly
the one detectron2 draws; only *which* ones differs:

- negatives: the IoU interval ``[floor_thresh, max IoU of the negatives]`` is split evenly
  into K bins and the N demanded negatives are distributed equally over them (eq. 2,
  ``p_k = N / K / M_k``); a bin with too few candidates gives all it has, and the remaining
  quota is filled uniformly at random from the negatives not yet drawn (those below the floor
  included);
- positives (optional, "Pos Balance" of Table 4): an equal number per ground truth
  (``"per_gt"``), or an equal number per class first and per ground truth inside each class
  (``"per_class"``); again the remaining quota is filled at random.

Every random choice uses ``torch.randperm`` with torch's global generator of the labels'
device, so the result is deterministic given that generator's state.

Shape shorthand: P = proposals of one image.
"""

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["POSITIVE_BALANCE_MODES", "iou_balanced_subsample"]


# "none": random positives (detectron2's); "per_gt" and "per_class": sec. 3.1, last paragraph.
POSITIVE_BALANCE_MODES = ("none", "per_gt", "per_class")


def _random_pick(candidates: Tensor, num: int) -> Tensor:
    """``num`` entries of the 1-D tensor ``candidates`` drawn uniformly without replacement
    (all of them, in random order, when there are not more than ``num``)."""
    perm = torch.randperm(candidates.numel(), device=candidates.device)[:num]
    return candidates[perm]


def _fill_randomly(candidates: Tensor, chosen: Tensor, quota: int) -> Tensor:
    """The ``candidates`` selected by the (M,) bool mask ``chosen``, plus as many of the
    others, drawn uniformly at random, as are needed to reach ``quota`` (or all of them)."""
    missing = quota - int(chosen.sum())
    if missing <= 0:
        return candidates[chosen]
    return torch.cat([candidates[chosen], _random_pick(candidates[~chosen], missing)])


def _random_ranks_within_groups(groups: Tensor) -> Tensor:
    """(M,) rank of every element inside its group, in a uniformly random order: the ranks
    of a group of n elements are a random permutation of 0..n-1.

    Args:
        groups: (M,) integer group key of each element.
    """
    m = groups.numel()
    positions = torch.arange(m, device=groups.device)
    perm = torch.randperm(m, device=groups.device)
    order = perm[torch.sort(groups[perm], stable=True).indices]  # grouped, random inside
    sorted_groups = groups[order]
    starts = torch.ones(m, dtype=torch.bool, device=groups.device)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    group_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    ranks = torch.empty_like(positions)
    ranks[order] = positions - group_start
    return ranks


def _pick_per_group(groups: Tensor, shares: Tensor, eligible: Tensor) -> Tensor:
    """(M,) mask choosing, uniformly at random, up to ``shares[g]`` eligible elements of every
    group g (all of them when the group has fewer).

    Args:
        groups: (M,) dense group index in 0..G-1 of each element.
        shares: (G,) number wanted from each group.
        eligible: (M,) bool, which elements may be chosen.
    """
    ranks = _random_ranks_within_groups(torch.where(eligible, groups, -1))
    return eligible & (ranks < shares[groups])


def _dense_ids(keys: Tensor) -> Tuple[Tensor, int]:
    """(M,) keys -> ((M,) dense ids 0..K-1, K)."""
    unique, ids = torch.unique(keys, return_inverse=True)
    return ids, unique.numel()


def _balanced_positives(
    positive: Tensor, labels: Tensor, matched_idxs: Tensor, quota: int, mode: str
) -> Tensor:
    """``quota`` of the ``positive`` proposal indices, balanced as ``mode`` says (sec. 3.1):
    "per_gt": ``quota // G`` per ground truth; "per_class": ``quota // K`` per class, of which
    an equal share per ground truth of the class first, the rest of the class's share at
    random from the class. The remaining quota is filled at random from all positives."""
    if mode == "none" or quota == 0:
        return _random_pick(positive, quota)
    everyone = torch.ones_like(positive, dtype=torch.bool)
    gt_ids, num_gts = _dense_ids(matched_idxs[positive])
    if mode == "per_gt":
        shares = torch.full((num_gts,), quota // num_gts, device=positive.device)
        chosen = _pick_per_group(gt_ids, shares, everyone)
    else:
        class_ids, num_classes = _dense_ids(labels[positive])
        class_share = quota // num_classes
        # (class, ground truth) pairs, so a ground truth counts once per class it is in.
        pair_ids, num_pairs = _dense_ids(class_ids * num_gts + gt_ids)
        pair_class = class_ids.new_zeros(num_pairs).scatter_(0, pair_ids, class_ids)
        pairs_per_class = torch.bincount(pair_class, minlength=num_classes)
        chosen = _pick_per_group(pair_ids, class_share // pairs_per_class[pair_class], everyone)
        missing = class_share - torch.bincount(class_ids[chosen], minlength=num_classes)
        chosen |= _pick_per_group(class_ids, missing, ~chosen)
    return _fill_randomly(positive, chosen, quota)


def _iou_balanced_negatives(
    negative: Tensor, max_ious: Tensor, quota: int, num_bins: int, floor_thresh: float
) -> Tensor:
    """``quota`` of the ``negative`` proposal indices: ``quota // K`` from each of the K
    equal IoU bins of ``[floor_thresh, max IoU of the negatives]`` (eq. 2), the remainder at
    random from all negatives."""
    if quota == 0:
        return negative[:0]
    ious = max_ious[negative]
    top = ious.max()
    # Inner edges of K even bins; each bin is [e_k, e_k+1), the last one closed at `top`.
    steps = torch.arange(1, num_bins, device=ious.device, dtype=ious.dtype) / num_bins
    bin_of = torch.bucketize(ious, floor_thresh + (top - floor_thresh) * steps, right=True)
    shares = torch.full((num_bins,), quota // num_bins, device=ious.device)
    chosen = _pick_per_group(bin_of, shares, ious >= floor_thresh)
    return _fill_randomly(negative, chosen, quota)


def iou_balanced_subsample(
    labels: Tensor,
    max_ious: Tensor,
    matched_idxs: Tensor,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
    *,
    num_bins: int = 3,
    floor_thresh: float = 0.0,
    positive_balance: str = "none",
) -> Tuple[Tensor, Tensor]:
    """Libra R-CNN's IoU-balanced sampling (sec. 3.1, eq. 2) of one image's proposals.

    Draws as many positives and negatives as
    :func:`detectron2.modeling.sampling.subsample_labels` does (positives:
    ``min(#positives, int(positive_fraction * num_samples))``; negatives:
    ``min(#negatives, num_samples - #positives drawn)``), choosing the negatives evenly
    from ``num_bins`` IoU bins and, optionally, the positives evenly per ground truth/class.

    Args:
        labels: (P,) class of each proposal: ``bg_label`` = background, -1 = ignore,
            anything else = foreground class.
        max_ious: (P,) each proposal's largest IoU with any ground-truth box
            (zeros for an image without ground truth).
        matched_idxs: (P,) index of the ground truth each proposal is matched to.
        num_samples: total number of proposals to sample (ROI_HEADS.BATCH_SIZE_PER_IMAGE).
        positive_fraction: target fraction of positives (ROI_HEADS.POSITIVE_FRACTION).
        bg_label: label of the background class.
        num_bins: K, the number of IoU bins of the negatives (paper default 3; Table 4
            shows K = 2, 3, 5 perform alike).
        floor_thresh: lower end of the binned IoU interval. The paper splits the whole
            sampling interval of the negatives, which starts at IoU 0, so the default is 0.0
            (every negative takes part in the bins). With a positive floor, negatives below
            it are only drawn by the random fill of the remaining quota.
        positive_balance: ``"none"`` (random positives), ``"per_gt"`` (equal number per
            ground truth) or ``"per_class"`` (equal number per class, then per ground truth
            inside each class); sec. 3.1, "Pos Balance" of Table 4.

    Returns:
        (positive indices, negative indices): two 1-D int64 tensors of proposal indices,
        of total length ``num_samples`` or fewer.
    """
    if num_bins < 1:
        raise ValueError(
            f"IoU-balanced sampling needs at least one IoU bin, got num_bins={num_bins}; "
            "set MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS >= 1 (the paper uses 3)."
        )
    if not 0.0 <= floor_thresh < 1.0:
        raise ValueError(
            f"floor_thresh must lie in [0, 1), got {floor_thresh}; "
            "set MODEL.ROI_HEADS.IOU_BALANCED.FLOOR_THRESH (default 0.0)."
        )
    if positive_balance not in POSITIVE_BALANCE_MODES:
        raise ValueError(
            f"Unknown positive_balance {positive_balance!r}; "
            f"MODEL.ROI_HEADS.IOU_BALANCED.POSITIVE_BALANCE must be one of "
            f"{POSITIVE_BALANCE_MODES}."
        )
    if labels.dim() != 1 or max_ious.shape != labels.shape or matched_idxs.shape != labels.shape:
        raise ValueError(
            "labels, max_ious and matched_idxs must be 1-D tensors of one length (one entry "
            f"per proposal), got shapes {tuple(labels.shape)}, {tuple(max_ious.shape)}, "
            f"{tuple(matched_idxs.shape)}."
        )
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).flatten()
    negative = torch.nonzero(labels == bg_label).flatten()

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    pos_idx = _balanced_positives(positive, labels, matched_idxs, num_pos, positive_balance)
    neg_idx = _iou_balanced_negatives(negative, max_ious, num_neg, num_bins, floor_thresh)
    return pos_idx, neg_idx
