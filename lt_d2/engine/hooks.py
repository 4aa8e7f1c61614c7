"""Training hooks that make the per-category balance of a detector visible while it trains.

Shape shorthand: C = categories, L = the classifier's logits, A = anchors per location (dense
heads), D = the final layer's input features.
"""

import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from lt_d2.classifiers.gradient_stats import GradientStats
from lt_d2.classifiers.state import pop_nonfinite_updates
from lt_d2.data import CategoryStats
from lt_d2.evaluation.balance import (
    BALANCE_DIR,
    BalanceDump,
    balance_figure,
    figure_to_image,
    group_means,
    save_balance_dump,
)

__all__ = [
    "GradientBalanceHook",
    "NonFiniteStateHook",
    "nonfinite_update_warnings",
    "build_gradient_balance_hook",
    "classifier_weight_norms",
    "find_gradient_stats",
]

logger = logging.getLogger(__name__)


def classifier_weight_norms(layer: nn.Module, stats: GradientStats) -> np.ndarray:
    """(C,) L2 norm of each category's weights in the final classification layer
    ([EQLv2] Fig. 3, [BAGS] Fig. 1).

    ``layer`` is an ``nn.Linear`` with (L, D) weight (ROI heads) or an ``nn.Conv2d`` with
    (A * L, D, k, k) weight whose channels are anchor-major (dense heads; the norm is averaged
    over the A anchors). Category j's row is ``stats.logit_columns()[j]``.
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(
            f"the classification layer {type(layer).__name__} has no (out, in, ...) weight"
        )
    rows = torch.linalg.vector_norm(weight.detach().flatten(1).float(), dim=1)
    if rows.numel() % stats.num_logits:
        raise ValueError(
            f"the classification layer has {rows.numel()} outputs, not a multiple of the "
            f"classifier's {stats.num_logits} logits ({stats.classifier_name})"
        )
    per_anchor = rows.view(-1, stats.num_logits)[:, stats.columns.to(rows.device)]
    return per_anchor.mean(0).cpu().numpy()


def _final_layer(owner: nn.Module) -> Optional[nn.Module]:
    """The classification layer next to a GradientStats: ``owner.cls_score`` (detectron2's
    FastRCNNOutputLayers, lt_d2's box predictor) or ``owner.head.cls_score`` (RetinaNet /
    ATSS meta-architectures, whose head module holds the layer)."""
    layer = getattr(owner, "cls_score", None)
    if layer is None and isinstance(getattr(owner, "head", None), nn.Module):
        layer = getattr(owner.head, "cls_score", None)
    return layer if isinstance(layer, nn.Module) else None


def find_gradient_stats(
    model: nn.Module,
) -> List[Tuple[str, GradientStats, Optional[nn.Module]]]:
    """Every GradientStats in ``model`` (DDP-wrapped or not), in module order, as
    (name of the module owning it, the GradientStats, that module's classification layer or
    None)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        if isinstance(module, GradientStats):
            owner_name = name.rpartition(".")[0]
            found.append((owner_name, module, _final_layer(modules[owner_name])))
    return found


class GradientBalanceHook(HookBase):
    """Every ``period`` iterations (and after the last), all-reduce every GradientStats of
    the model and log, per stage (suffix ``_stage<k>`` when there are several):

    - scalars ``lt/grad_ratio_{r,c,f}``: mean accumulated pos/neg gradient ratio of the
      rare / common / frequent categories ([EQLv2] eq. 9, Fig. 1/2);
    - scalars ``lt/weight_norm_{r,c,f}``: mean classifier weight norm per group;
    - image ``lt/balance``: per-category curves sorted by training instance count (ratio,
      weight norm, and a stateful classifier's own weights);
    - ``<output_dir>/balance/iter_<iteration>.npz``: the full (C,) arrays (main process).

    Every worker must run it (the sync is a collective); place it before detectron2's
    PeriodicCheckpointer, so checkpoints hold the synced sums, and before PeriodicWriter.
    """

    def __init__(self, period: int, category_stats: CategoryStats, output_dir: str):
        if period < 1:
            raise ValueError(
                f"GradientBalanceHook needs period >= 1 (DIAGNOSTICS.PERIOD), " f"got {period}"
            )
        self._period = period
        self._category_stats = category_stats
        self._output_dir = output_dir
        self._stats: List[Tuple[str, GradientStats, Optional[nn.Module]]] = []

    def before_train(self):
        self._stats = find_gradient_stats(self.trainer.model)
        if not self._stats:
            logger.warning(
                "GradientBalanceHook: the model has no GradientStats (MODEL.GRADIENT_STATS."
                "ENABLED False, or a head without one): no balance statistics are logged"
            )
        num_classes = self._category_stats.num_classes
        for name, stats, layer in self._stats:
            if stats.num_classes != num_classes:
                raise ValueError(
                    f"GradientStats of '{name}' has {stats.num_classes} categories, the "
                    f"training set's statistics {num_classes}: NUM_CLASSES and DATASETS.TRAIN "
                    f"disagree"
                )
            if layer is None:
                logger.warning(
                    f"GradientBalanceHook: '{name}' has no 'cls_score' (or 'head.cls_score') "
                    f"layer, so its weight norms are not logged"
                )

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self.log_balance(next_iter)

    def log_balance(self, iteration: int) -> None:
        """Sync every GradientStats (all workers) and, on the main process, write scalars,
        images and the dump for ``iteration`` completed iterations."""
        stages = []
        for name, stats, layer in self._stats:
            balance = stats.synced()
            arrays = {
                "pos": balance.pos.cpu().numpy(),
                "neg": balance.neg.cpu().numpy(),
                "ratio": balance.ratio.cpu().numpy(),
            }
            if layer is not None:
                arrays["weight_norm"] = classifier_weight_norms(layer, stats)
            for key, value in stats.balance_weights().items():
                arrays[f"weight_{key}"] = value.detach().float().cpu().numpy()
            stages.append((name, arrays))
        if not stages or not comm.is_main_process():
            return
        storage = get_event_storage()
        frequency = self._category_stats.frequency_labels
        counts = self._category_stats.instance_count_array
        for k, (name, arrays) in enumerate(stages):
            suffix = f"_stage{k}" if len(stages) > 1 else ""
            for key, scalar in (("ratio", "grad_ratio"), ("weight_norm", "weight_norm")):
                if key in arrays:
                    for group, mean in group_means(arrays[key], frequency).items():
                        storage.put_scalar(
                            f"lt/{scalar}_{group}{suffix}", mean, smoothing_hint=False
                        )
            title = f"{name or 'model'} ({self._stats[k][1].classifier_name}), iter {iteration}"
            image = figure_to_image(balance_figure(arrays, counts, title))
            storage.put_image(f"lt/balance{suffix}", image)
        dump = BalanceDump(
            iteration=iteration,
            instance_counts=counts,
            frequency=frequency,
            stages=[name for name, _ in stages],
            arrays=[arrays for _, arrays in stages],
        )
        save_balance_dump(
            os.path.join(self._output_dir, BALANCE_DIR, f"iter_{iteration:07d}.npz"), dump
        )


def build_gradient_balance_hook(cfg, category_stats: CategoryStats) -> Optional[HookBase]:
    """The hook configured by ``DIAGNOSTICS.PERIOD`` (None when 0 or when
    ``MODEL.GRADIENT_STATS.ENABLED`` is False), dumping into ``cfg.OUTPUT_DIR``."""
    if not cfg.MODEL.GRADIENT_STATS.ENABLED or cfg.DIAGNOSTICS.PERIOD <= 0:
        return None
    return GradientBalanceHook(cfg.DIAGNOSTICS.PERIOD, category_stats, cfg.OUTPUT_DIR)


def nonfinite_update_warnings(model: nn.Module, names: Optional[List[str]] = None) -> List[str]:
    """One message per classifier (or GradientStats) of ``model`` that skipped a non-finite
    per-category update since the last call, naming it and the categories (``names``: the
    (C,) category names, when known); clears the counters (:func:`pop_nonfinite_updates`)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    messages = []
    for module_name, (class_name, counts) in pop_nonfinite_updates(model).items():
        bad = counts.nonzero()[:, 0].tolist()
        cats = [f"{j} ({names[j]})" if names else str(j) for j in bad[:10]]
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        messages.append(
            f"{class_name} ('{module_name}'): non-finite logit gradients for categories "
            f"{', '.join(cats)}{more} ({int(counts.sum())} per-category updates skipped); "
            f"their accumulated state was left unchanged. Non-finite logits mean the model "
            f"diverges: lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS"
        )
    return messages


class NonFiniteStateHook(HookBase):
    """Every ``period`` iterations (and after the last), warn about every stateful classifier
    or GradientStats that skipped a non-finite update (see :mod:`lt_d2.classifiers.state`).
    One host sync per stateful module per period; each worker reports its own."""

    def __init__(self, period: int = 20, names: Optional[List[str]] = None):
        self._period = period
        self._names = names

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            for message in nonfinite_update_warnings(self.trainer.model, self._names):
                logger.warning("iteration %d: %s", next_iter, message)
