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

Every group, G_0 included, is one softmax over its columns of the (R, L) logits (the groups
partition the columns). The loss takes the columns group by group, so each group's softmax
runs over one contiguous block, with no data-dependent shapes (:func:`bags_loss`). The random
"others" ROIs are drawn outside it (:func:`bags_trained_rows`).

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
from detectron2.config import configurable

from lt_d2.data import BAGS_GROUP_BOUNDS, CategoryStats

from ..base import CLASSIFIER_REGISTRY, Classifier
from ..compile import compiled_loss, loss_dtype
from .softmax_ce import group_logsumexp

__all__ = ["BAGS", "bags_loss", "bags_trained_rows"]

logger = logging.getLogger(__name__)


def bags_trained_rows(group: torch.Tensor, num_groups: int, beta: float) -> torch.Tensor:
    """Which ROIs each group's softmax is trained on (BAGS sec. 4.3).

    G_0: every ROI. G_n (n >= 1): its foreground ROIs plus m_n = floor(beta * their number)
    "others" ROIs drawn uniformly without replacement from the rest (all of them when there
    are fewer); none at all when the batch has no foreground ROI of G_n. The draw ranks the
    candidates by uniform random keys (torch's global generator) and keeps the m_n first, on
    the device and without a host synchronisation.

    Args:
        group: (R,) int64 group index n of each ROI's class, 0 for background.
        num_groups: N + 1 (G_0 included).
        beta: "others" ROIs per foreground ROI.

    Returns:
        (R, N + 1) bool.
    """
    own = group[:, None] == torch.arange(num_groups, device=group.device)
    num_foreground = own.sum(dim=0)
    quota = torch.floor(beta * num_foreground)
    keys = torch.rand(own.shape, device=group.device).masked_fill_(own, 2.0)  # members last
    rank = keys.argsort(dim=0).argsort(dim=0)
    trained = (own | (rank < quota)) & (num_foreground > 0)
    trained[:, 0] = True
    return trained


@compiled_loss
def bags_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    trained: torch.Tensor,
    class_group: torch.Tensor,
    others_columns: torch.Tensor,
    grouped_columns: torch.Tensor,
    group_sizes: Tuple[int, ...],
) -> torch.Tensor:
    """BAGS eq. 5: L = sum_n (1 / |I_n|) sum_{i in I_n} -log softmax_{G_n}(z_i)[t_i^n].

    The label t_i^n of ROI i in group G_n is the ROI's own column (its class, or background
    for G_0) when its class belongs to G_n, else G_n's "others" column; I_n are the ROIs the
    group is trained on. The columns are taken group by group (``grouped_columns``), so that
    each group's softmax (eq. 4) runs over one contiguous block of its own columns.

    Args:
        logits: (R, L), any float dtype (computed in float32).
        gt_classes: (R,) int64 in [0, C]; column C is background, so a label is its column.
        trained: (R, N + 1) bool I_n (:func:`bags_trained_rows`).
        class_group: (C + 1,) int64 group of each label (background: G_0).
        others_columns: (N + 1,) int64 "others" column of each group.
        grouped_columns: (L,) int64 the columns of G_0, then of G_1, ..., each group's in
            column order.
        group_sizes: |G_0|, ..., |G_N| in columns.
    """
    z = logits.to(loss_dtype(logits))
    num_groups = trained.shape[1]
    own = class_group[gt_classes][:, None] == torch.arange(num_groups, device=z.device)
    target = torch.where(own, gt_classes[:, None], others_columns)  # (R, N + 1) t_i^n
    # position of t_i^n among the grouped columns (int32: compared at twice int64's width)
    position = torch.argsort(grouped_columns)[target].int()
    weight = trained / trained.sum(dim=0).clamp(min=1)  # 1 / |I_n| on I_n, else 0
    grouped = z[:, grouped_columns]
    loss, start = z.new_zeros(()), 0
    for n, size in enumerate(group_sizes):
        block = grouped[:, start : start + size]  # G_n's columns
        columns = torch.arange(start, start + size, dtype=torch.int32, device=z.device)
        z_target = torch.where(columns == position[:, n, None], block, 0.0).sum(dim=1)
        ce = torch.logsumexp(block, dim=1) - z_target  # -log softmax_{G_n}(z_i)[t_i^n] (eq. 4)
        loss = loss + (weight[:, n] * ce).sum()  # eq. 5
        start += size
    return loss


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
        # group of each logit column and label: categories in G_1..G_N, background and
        # "others" of G_0 (columns C, C + 1) in G_0, then "others" of G_n at C + 1 + n
        group_ids = torch.arange(self.num_groups + 1)
        self.register_buffer(
            "column_group",
            torch.cat([groups + 1, torch.zeros(1, dtype=torch.long), group_ids]),
            persistent=False,
        )
        self.register_buffer(
            "class_group", torch.cat([groups + 1, torch.zeros(1, dtype=torch.long)]), False
        )
        self.register_buffer("others_columns", num_classes + 1 + group_ids, persistent=False)
        # the columns group by group (a stable sort keeps each group's in column order)
        self.register_buffer(
            "grouped_columns", torch.sort(self.column_group, stable=True).indices, False
        )
        self.group_sizes = tuple(int((self.column_group == n).sum()) for n in group_ids)
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

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Sum over groups of each group's softmax cross entropy (eq. 5) averaged over the ROIs
        it uses: all R for G_0; the foreground ROIs of G_n plus beta times as many sampled
        "others" ROIs for G_n (skipped without foreground).

        Args:
            logits: (R, L).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        self.check_inputs(logits, gt_classes)
        trained = bags_trained_rows(self.class_group[gt_classes], self.num_groups + 1, self.beta)
        loss = bags_loss(
            logits,
            gt_classes,
            trained,
            self.class_group,
            self.others_columns,
            self.grouped_columns,
            self.group_sizes,
        )
        return {"loss_cls": loss}

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Sec. 4.4: p~_j = p_fg p_j, p_j the softmax of j's group without "others", p_fg the
        foreground probability of G_0; background column = G_0's background probability.

        Args:
            logits: (R, L). Returns: (R, C + 1).
        """
        C = self.num_classes
        lse = group_logsumexp(logits, self.column_group, self.num_groups + 1)
        p = torch.exp(logits - lse[:, self.column_group])  # within each column's group (eq. 4)
        return torch.cat([p[:, :C] * p[:, C + 1 : C + 2], p[:, C : C + 1]], dim=1)

    def logit_columns(self) -> List[int]:
        """Categories occupy columns [0, C); the rest are background and "others"."""
        return list(range(self.num_classes))
