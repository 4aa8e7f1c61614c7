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
from lt_d2.modeling.classifier_head import ClassifierHead, classifier_heads, unwrap_ddp

__all__ = [
    "GradientBalanceHook",
    "NonFiniteStateHook",
    "nonfinite_update_warnings",
    "build_gradient_balance_hook",
    "classifier_weight_norms",
]

logger = logging.getLogger(__name__)


def classifier_weight_norms(head: ClassifierHead) -> np.ndarray:
    """(C,) L2 norm of each category's weights in the head's final classification layer
    ([EQLv2] Fig. 3, [BAGS] Fig. 1).

    The layer (:meth:`ClassifierHead.classification_layer`) is an ``nn.Linear`` with (L, D)
    weight (ROI heads) or an ``nn.Conv2d`` with (A * L, D, k, k) weight whose channels are
    anchor-major (dense heads; the norm is averaged over the A anchors). Category j's row is
    ``classifier.logit_columns()[j]``.
    """
    layer, classifier = head.classification_layer(), head.classifier
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(
            f"the classification layer {type(layer).__name__} has no (out, in, ...) weight"
        )
    rows = torch.linalg.vector_norm(weight.detach().flatten(1).float(), dim=1)
    num_logits = classifier.num_logits
    if rows.numel() % num_logits:
        raise ValueError(
            f"the classification layer has {rows.numel()} outputs, not a multiple of the "
            f"classifier's {num_logits} logits ({type(classifier).__name__})"
        )
    columns = torch.as_tensor(classifier.logit_columns(), device=rows.device)
    return rows.view(-1, num_logits)[:, columns].mean(0).cpu().numpy()


class GradientBalanceHook(HookBase):
    """Every ``period`` iterations (and after the last), all-reduce the gradient statistics
    of every :class:`~lt_d2.modeling.classifier_head.ClassifierHead` of the model and log,
    per stage (suffix ``_stage<k>`` when there are several):

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
        self._heads: List[Tuple[str, ClassifierHead]] = []

    def before_train(self):
        self._heads = [
            (name, head)
            for name, head in classifier_heads(self.trainer.model)
            if head.gradient_stats is not None
        ]
        if not self._heads:
            logger.warning(
                "GradientBalanceHook: the model has no lt_d2 head with gradient statistics "
                "(MODEL.GRADIENT_STATS.ENABLED False, or detectron2's own heads): no balance "
                "statistics are logged"
            )
        num_classes = self._category_stats.num_classes
        for name, head in self._heads:
            if head.classifier.num_classes != num_classes:
                raise ValueError(
                    f"the classifier of '{name}' has {head.classifier.num_classes} categories, "
                    f"the training set's statistics {num_classes}: {head.num_classes_key} and "
                    f"DATASETS.TRAIN disagree"
                )

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self.log_balance(next_iter)

    def log_balance(self, iteration: int) -> None:
        """Sync every GradientStats (all workers) and, on the main process, write scalars,
        images and the dump for ``iteration`` completed iterations."""
        stages = []
        for name, head in self._heads:
            balance = head.gradient_balance()
            arrays = {
                "pos": balance.pos.cpu().numpy(),
                "neg": balance.neg.cpu().numpy(),
                "ratio": balance.ratio.cpu().numpy(),
                "weight_norm": classifier_weight_norms(head),
            }
            for key, value in head.classifier.balance_weights().items():
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
            classifier_name = type(self._heads[k][1].classifier).__name__
            title = f"{name or 'model'} ({classifier_name}), iter {iteration}"
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


def nonfinite_update_warnings(
    model: nn.Module, names: Optional[List[str]] = None, loss_scaled: bool = False
) -> List[str]:
    """One message per classifier (or GradientStats) of ``model`` that skipped a non-finite
    per-category update since the last call, naming it and the categories (``names``: the
    (C,) category names, when known); clears the counters (:func:`pop_nonfinite_updates`).

    With ``loss_scaled`` (mixed precision: SOLVER.AMP.ENABLED), a GradientStats's skipped
    updates are GradScaler overflows, steps the scaler skips too, and not reported; the
    classifiers' own state is computed from float32 probabilities and still is."""
    model = unwrap_ddp(model)
    messages = []
    for module_name, (class_name, counts) in pop_nonfinite_updates(model).items():
        if loss_scaled and isinstance(model.get_submodule(module_name), GradientStats):
            continue
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
    One host sync per stateful module per period; each worker reports its own.
    ``loss_scaled``: training with a GradScaler (see :func:`nonfinite_update_warnings`)."""

    def __init__(
        self, period: int = 20, names: Optional[List[str]] = None, loss_scaled: bool = False
    ):
        self._period = period
        self._names = names
        self._loss_scaled = loss_scaled

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            for message in nonfinite_update_warnings(
                self.trainer.model, self._names, self._loss_scaled
            ):
                logger.warning("iteration %d: %s", next_iter, message)
