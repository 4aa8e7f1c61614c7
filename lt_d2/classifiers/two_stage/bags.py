"""Balanced Group Softmax, BAGS (Li et al. 2020, sec. 4).

Categories are split by training instance count into N groups G_1..G_N (eq. 3, lower bounds
s^l = 0, 10, 100, 1000), and a softmax runs inside each group only (eq. 4), so that tail
categories never compete with head categories. Every group holds an extra category "others"
(sec. 4.2); the background group G_0 is a 2-way softmax of background vs. its "others"
(= any foreground). For a ROI of class c, G_0 and the group holding c are trained with c's
label, every other group with "others" (eq. 5). Per group G_n (n >= 1) only
m_n = beta * (foreground ROIs of G_n in the batch) "others" ROIs are sampled at random
(all of them when there are fewer), and a group without foreground ROIs in the batch is
skipped (sec. 4.3); G_0 uses every ROI. Each group's cross entropy is averaged over the ROIs
it uses, and the group losses are summed.

At inference (sec. 4.4) each group's softmax gives p_j for its categories ("others"
dropped), rescaled by G_0's foreground probability: p~_j = p_fg p_j.

Logit layout (L = (C + 1) + (N + 1), the paper's z): columns [0, C) the categories in
contiguous-id order, column C background and column C + 1 G_0's "others" (foreground) --
so the first C + 1 columns are detectron2's softmax layout, which a decoupled second stage
initialises from -- then column C + 1 + n the "others" of group G_n, n = 1..N.

Shape shorthand: R = ROIs, C = foreground classes, N = groups, L = ``num_logits``.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from lt_d2.data import BAGS_GROUP_BOUNDS, CategoryStats

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..checks import check_gt_classes, check_logit_count

__all__ = ["BAGS", "sample_others"]

logger = logging.getLogger(__name__)


def sample_others(candidates: torch.Tensor, num: int) -> torch.Tensor:
    """Indices of ``min(num, #candidates)`` ROIs drawn uniformly without replacement from the
    True entries of ``candidates`` (R,) bool (BAGS sec. 4.3, uses the global torch RNG)."""
    index = candidates.nonzero(as_tuple=True)[0]
    if num >= index.numel():
        return index
    return index[torch.randperm(index.numel(), device=index.device)[:num]]


@CLASSIFIER_REGISTRY.register()
class BAGS(Classifier):
    """Balanced group softmax over instance-count groups with "others" calibration.

    Args:
        num_classes: C.
        category_stats: training-set statistics; their instance counts form the groups.
        group_bounds: lower instance-count bounds s^l_1..s^l_N of G_1..G_N (eq. 3); the last
            group is open-ended. Paper: (0, 10, 100, 1000).
        beta: "others" ROIs sampled per foreground ROI of a group (sec. 4.3). Paper: 8.
    """

    uses_category_stats = True

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        category_stats: CategoryStats,
        group_bounds: Sequence[int] = BAGS_GROUP_BOUNDS,
        beta: float = 8.0,
    ):
        super().__init__(num_classes=num_classes)
        if category_stats is None:
            raise ValueError(
                "BAGS forms its groups from per-category training instance counts: pass the "
                "dataset's CategoryStats (build_classifier does so from DATASETS.TRAIN)"
            )
        if category_stats.num_classes != num_classes:
            raise ValueError(
                f"BAGS got statistics of {category_stats.num_classes} categories for a model "
                f"with {num_classes}: set NUM_CLASSES to the dataset's category count"
            )
        if beta < 0:
            raise ValueError(f"BAGS beta (MODEL.CLASSIFIER.BAGS.BETA) must be >= 0, got {beta}")
        bounds = [int(b) for b in group_bounds]
        groups = torch.as_tensor(category_stats.instance_groups(bounds), dtype=torch.long)
        self.group_bounds = tuple(bounds)
        self.beta = float(beta)
        self.num_groups = len(bounds)
        for n in range(self.num_groups):
            if not (groups == n).any():
                hi = bounds[n + 1] if n + 1 < len(bounds) else "inf"
                raise ValueError(
                    f"BAGS group G{n + 1} (training instance counts in [{bounds[n]}, {hi})) "
                    f"holds no category; instance counts range over "
                    f"[{int(category_stats.instance_count_array.min())}, "
                    f"{int(category_stats.instance_count_array.max())}]. Choose "
                    f"MODEL.CLASSIFIER.BAGS.GROUP_BOUNDS that leave every group non-empty"
                )
        # G_n (n = 1..N) of every category and its position within the group's softmax
        group_of_class = groups + 1
        index_in_group = torch.empty_like(groups)
        for n in range(self.num_groups):
            members = (groups == n).nonzero(as_tuple=True)[0]
            index_in_group[members] = torch.arange(members.numel())
            # the group's softmax columns: its categories, then its "others"
            columns = torch.cat([members, members.new_tensor([num_classes + 2 + n])])
            self.register_buffer(f"group{n + 1}_columns", columns, persistent=False)
        self.register_buffer("group_of_class", group_of_class, persistent=False)
        self.register_buffer("index_in_group", index_in_group, persistent=False)
        logger.info(
            "BAGS groups by instance count %s: %s categories",
            list(bounds),
            [int((groups == n).sum()) for n in range(self.num_groups)],
        )

    @classmethod
    def from_config(cls, cfg, num_classes, category_stats):
        node = cfg.MODEL.CLASSIFIER.BAGS
        return {
            "num_classes": num_classes,
            "category_stats": category_stats,
            "group_bounds": list(node.GROUP_BOUNDS),
            "beta": node.BETA,
        }

    @property
    def num_logits(self) -> int:
        return self.num_classes + self.num_groups + 2

    def group_columns(self, n: int) -> torch.Tensor:
        """(K_n + 1,) logit columns of group G_n's softmax (n = 1..N): its K_n categories in
        id order, then its "others"."""
        return getattr(self, f"group{n}_columns")

    def group_targets(self, gt_classes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(R,) group index of each ROI's class (0 for background) and (R,) its position in
        that group's softmax (0 for background)."""
        C = self.num_classes
        fg = gt_classes < C
        safe = gt_classes.clamp(max=C - 1)
        group = torch.where(fg, self.group_of_class[safe], torch.zeros_like(gt_classes))
        index = torch.where(fg, self.index_in_group[safe], torch.zeros_like(gt_classes))
        return group, index

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Sum over groups of each group's softmax cross entropy (eq. 5) averaged over the ROIs
        it uses: all R for G_0; the foreground ROIs of G_n plus beta times as many sampled
        "others" ROIs for G_n (skipped without foreground).

        Args:
            logits: (R, L).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        check_gt_classes(logits, gt_classes, self.num_classes)
        check_logit_count(logits, self.num_logits, "BAGS")
        C, L = self.num_classes, self.num_logits
        num_rois = logits.shape[0]
        # (rows, columns, targets) of every trained group; G_0: background (column C,
        # label 0) vs. "others" = foreground (column C + 1, label 1), over all ROIs
        all_rows = torch.arange(num_rois, device=logits.device)
        blocks = [(all_rows, all_rows.new_tensor([C, C + 1]), (gt_classes < C).long())]
        group, index = self.group_targets(gt_classes)
        for n in range(1, self.num_groups + 1):
            members = group == n
            num_fg = int(members.sum())
            if num_fg == 0:
                continue  # sec. 4.3: no normal category activated, group ignored
            columns = self.group_columns(n)
            others = sample_others(~members, int(self.beta * num_fg))
            rows = torch.cat([members.nonzero(as_tuple=True)[0], others])
            targets = torch.cat([index[members], others.new_full(others.shape, len(columns) - 1)])
            blocks.append((rows, columns, targets))
        # one gather for all groups (one scatter in backward instead of one per group)
        flat = torch.cat(
            [(rows[:, None] * L + cols[None, :]).flatten() for rows, cols, _ in blocks]
        )
        values = logits.reshape(-1)[flat].split([len(r) * len(c) for r, c, _ in blocks])
        loss = logits.new_zeros(())
        for (rows, cols, targets), z in zip(blocks, values):
            z = z.view(len(rows), len(cols))
            loss = loss + F.cross_entropy(z, targets, reduction="sum") / max(len(rows), 1)
        return {"loss_cls": loss}

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Sec. 4.4: p~_j = p_fg p_j, p_j the softmax of j's group without "others", p_fg the
        foreground probability of G_0; background column = G_0's background probability.

        Args:
            logits: (R, L). Returns: (R, C + 1).
        """
        C = self.num_classes
        p0 = torch.softmax(logits[:, C : C + 2], dim=1)
        scores = logits.new_zeros(logits.shape[0], C + 1)
        for n in range(1, self.num_groups + 1):
            columns = self.group_columns(n)
            p = torch.softmax(logits[:, columns], dim=1)[:, :-1]
            scores[:, columns[:-1]] = p * p0[:, 1:]
        scores[:, C] = p0[:, 0]
        return scores

    def logit_columns(self) -> List[int]:
        """Categories occupy columns [0, C); the rest are background and "others"."""
        return list(range(self.num_classes))
