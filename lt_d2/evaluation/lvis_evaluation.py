"""detectron2's LVIS evaluator plus the long-tail views of the papers.

On top of lvis-api's AP, APr, APc, APf (boxes and masks) it reports, from the same single
LVISEval run per task:

- ``AP1``..``AP4``: AP of the training instance-count bins of [BAGS] Table 1 ([0, 10),
  [10, 100), [100, 1000), [1000, inf)): the mean over the bin's categories of lvis-api's
  per-category AP (its precision array averaged over IoU and recall thresholds, absent
  entries (-1) excluded), i.e. how lvis-api itself averages APr / APc / APf; a bin without
  training categories is left out, one whose categories have no ground truth here is nan;
- ``AR@300`` (and lvis-api's small / medium / large AR);
- with ``fixed_ap_dets_per_category`` K > 0, ``AP-fixed``, ``APr-fixed``, ...: Fixed AP of
  Dave et al. 2021 (the top K detections per category, no per-image limit; ``fixed_ap.py``);
- ``score_margin_{r,c,f}``: per category, the mean score of the detections matched to a
  ground truth at IoU 0.5 minus that of the unmatched ones (lvis-api's ignored detections
  left out), averaged per frequency group ([EFL] Fig. 4);

and writes the per-category arrays to ``<output_dir>/lt_per_category_<task>.json``.

Shape shorthand: C = categories, K = categories of the evaluation json (= C), T = IoU
thresholds, R = recall thresholds, A = area ranges.
"""

import itertools
import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from detectron2.evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from lt_d2.data import BAGS_GROUP_BOUNDS, CategoryStats
from lt_d2.data.category_stats import instance_groups

from .fixed_ap import evaluate_fixed_ap
from .lvis_api import run_lvis_eval

__all__ = [
    "LTLVISEvaluator",
    "build_lvis_evaluator",
    "per_category_ap",
    "bin_average",
    "score_margins",
]

logger = logging.getLogger(__name__)

# LVIS's official limit of detections per image (lvis-api's default).
LVIS_MAX_DETS = 300


def per_category_ap(precision: np.ndarray, area_index: int = 0) -> np.ndarray:
    """(T, R, K, A) lvis-api precision array -> (K,) AP per category (nan where the category
    has no valid entry, e.g. no ground truth in the evaluation set)."""
    p = precision[:, :, :, area_index]
    valid = p > -1
    count = valid.sum(axis=(0, 1))
    total = np.where(valid, p, 0.0).sum(axis=(0, 1))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def bin_average(values: np.ndarray, bins: np.ndarray, num_bins: int) -> List[float]:
    """Mean of (K,) ``values`` over each bin 0..num_bins-1 given (K,) bin indices, nan
    values excluded; nan for a bin without valid values."""
    out = []
    for b in range(num_bins):
        v = values[(bins == b) & ~np.isnan(values)]
        out.append(float(v.mean()) if v.size else float("nan"))
    return out


def score_margins(lvis_eval) -> np.ndarray:
    """(K,) mean score of true positives minus mean score of false positives per category,
    at IoU 0.5 over all areas, from a run LVISEval's per-image results ([EFL] Fig. 4);
    nan where a category has no true positive or no false positive."""
    params = lvis_eval.params
    num_cats, num_areas, num_imgs = len(params.cat_ids), len(params.area_rng), len(params.img_ids)
    area = params.area_rng_lbl.index("all")
    thr = int(np.argmin(np.abs(np.asarray(params.iou_thrs) - 0.5)))
    sums = np.zeros((2, num_cats))  # row 0: positives, row 1: negatives
    counts = np.zeros((2, num_cats))
    for k in range(num_cats):
        start = (k * num_areas + area) * num_imgs  # eval_imgs: category, area, image order
        for e in lvis_eval.eval_imgs[start : start + num_imgs]:
            if e is None or len(e["dt_scores"]) == 0:
                continue
            scores = np.asarray(e["dt_scores"], dtype=np.float64)
            kept = ~np.asarray(e["dt_ignore"][thr], dtype=bool)
            matched = np.asarray(e["dt_matches"][thr]) > 0
            for row, mask in enumerate((kept & matched, kept & ~matched)):
                sums[row, k] += scores[mask].sum()
                counts[row, k] += mask.sum()
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means[0] - means[1]


def _group_nanmean(values: np.ndarray, labels: np.ndarray, label) -> float:
    v = values[(labels == label) & ~np.isnan(values)]
    return float(v.mean()) if v.size else float("nan")


class LTLVISEvaluator(LVISEvaluator):
    """:class:`detectron2.evaluation.LVISEvaluator` whose results also hold instance-count
    bin APs (``AP1``..``AP4``), average recall and score margins per frequency group.

    The bins and groups are defined by *training* counts. LVIS stores the training split's
    per-category ``instance_count`` and ``frequency`` in the categories of every split's json
    (the demo does too); the evaluator reads them there, so evaluating never loads a training
    set. Only for a json whose categories lack them are the training statistics needed.

    Args:
        category_stats: statistics of the training set, used instead of the counts stored in
            the json; its categories must be the evaluation json's, in id order.
        training_stats: called for the training statistics when ``category_stats`` is None
            and the json's categories store no counts (e.g. the config's ``DATASETS.TRAIN``).
        bin_bounds: lower instance-count bounds of the bins ([BAGS]: 0, 10, 100, 1000).
        fixed_ap_dets_per_category: K of Fixed AP (Dave et al. 2021: 10000); 0 = off.
        Other arguments: LVISEvaluator's.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        category_stats: Optional[CategoryStats] = None,
        training_stats: Optional[Callable[[], CategoryStats]] = None,
        bin_bounds: Sequence[int] = BAGS_GROUP_BOUNDS,
        max_dets_per_image: int = LVIS_MAX_DETS,
        fixed_ap_dets_per_category: int = 0,
    ):
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
        )
        cat_ids = sorted(self._lvis_api.get_cat_ids())
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        # lvis-api orders categories by id; detectron2 maps id -> id - 1 without a mapping
        self._contiguous = np.asarray([mapping[c] if mapping else c - 1 for c in cat_ids])
        if self._contiguous.min() < 0 or self._contiguous.max() >= len(cat_ids):
            raise ValueError(
                f"dataset '{dataset_name}': category ids must be 1..{len(cat_ids)} (or given "
                f"by thing_dataset_id_to_contiguous_id metadata)"
            )
        cats = self._lvis_api.load_cats(cat_ids)
        stored = all("instance_count" in c and "frequency" in c for c in cats)
        if category_stats is None and not stored:
            if training_stats is None:
                raise ValueError(
                    f"dataset '{dataset_name}': its json's categories store no training "
                    f"'instance_count' / 'frequency' (LVIS's do); pass the training set's "
                    f"category_stats"
                )
            category_stats = training_stats()
        # per category, in lvis-api's (id) order
        if category_stats is None:
            self._instance_counts = np.asarray([c["instance_count"] for c in cats])
            self._frequency = np.asarray([c["frequency"] for c in cats])
            self._names = [c["name"] for c in cats]
            logger.info(
                "Evaluation bins of '%s': the training counts stored in its categories",
                dataset_name,
            )
        else:
            if len(cat_ids) != category_stats.num_classes:
                raise ValueError(
                    f"dataset '{dataset_name}' has {len(cat_ids)} categories but the training "
                    f"statistics {category_stats.num_classes}: evaluate on a dataset with the "
                    f"training set's categories"
                )
            self._instance_counts = category_stats.instance_count_array[self._contiguous]
            self._frequency = category_stats.frequency_labels[self._contiguous]
            names = category_stats.names
            self._names = None if names is None else [names[k] for k in self._contiguous]
        self._fixed_ap_dets_per_category = fixed_ap_dets_per_category
        self._bin_bounds = list(bin_bounds)
        self._bins = instance_groups(self._instance_counts, self._bin_bounds)

    def _eval_predictions(self, predictions):
        """Evaluate ``predictions``' instances on every task, one LVISEval run per task."""
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        to_dataset_id = {v: k for k, v in mapping.items()} if mapping else None
        for result in lvis_results:
            c = result["category_id"]
            result["category_id"] = to_dataset_id[c] if to_dataset_id else c + 1
        if self._output_dir:
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            with PathManager.open(path, "w") as f:
                json.dump(lvis_results, f)
        if not self._do_evaluation:
            logger.info("The annotation file has no annotations: nothing to evaluate.")
            return
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        for task in sorted(tasks):
            self._results[task] = self._evaluate_task(lvis_results, task)

    def _evaluate_task(self, lvis_results: List[dict], task: str) -> Dict[str, float]:
        if not lvis_results:
            logger.warning("No predictions from the model: every metric is nan.")
            return {"AP": float("nan")}
        lvis_eval = run_lvis_eval(self._lvis_api, lvis_results, task, self._max_dets_per_image)
        lvis_eval.print_results()
        # lvis-api writes -1 for a group without categories (APr on a validation set with no
        # rare category): nan, as for an empty bin below, never -100
        results = {
            k: float("nan") if v == -1 else float(v) * 100
            for k, v in lvis_eval.get_results().items()
        }

        ap = per_category_ap(
            lvis_eval.eval["precision"], lvis_eval.params.area_rng_lbl.index("all")
        )
        for b, value in enumerate(bin_average(ap, self._bins, len(self._bin_bounds))):
            if (self._bins == b).any():  # a bin no training category falls in is left out
                results[f"AP{b + 1}"] = value * 100
        margins = score_margins(lvis_eval)
        for g in ("r", "c", "f"):
            results[f"score_margin_{g}"] = _group_nanmean(margins, self._frequency, g)
        if self._fixed_ap_dets_per_category > 0:
            results.update(
                evaluate_fixed_ap(
                    self._lvis_api, lvis_results, task, self._fixed_ap_dets_per_category
                )
            )
        logger.info(f"LVIS {task} results:\n" + create_small_table(results))
        self._dump_per_category(task, ap, margins)
        return results

    def _dump_per_category(self, task: str, ap: np.ndarray, margins: np.ndarray) -> None:
        if not self._output_dir:
            return
        order = np.argsort(self._contiguous)  # back to contiguous category order
        data = {
            "bin_bounds": self._bin_bounds,
            "names": None if self._names is None else [self._names[k] for k in order],
            "instance_counts": self._instance_counts[order].tolist(),
            "frequency": self._frequency[order].tolist(),
            "ap": [None if np.isnan(v) else float(v) for v in ap[order]],
            "score_margin": [None if np.isnan(v) else float(v) for v in margins[order]],
        }
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, f"lt_per_category_{task}.json")
        with PathManager.open(path, "w") as f:
            json.dump(data, f)


def build_lvis_evaluator(
    cfg,
    dataset_name: str,
    output_folder: Optional[str],
    training_stats: Optional[Callable[[], CategoryStats]] = None,
) -> LTLVISEvaluator:
    """The evaluator of an LVIS-format dataset: boxes (and masks with MODEL.MASK_ON), bins
    ``DIAGNOSTICS.INSTANCE_BINS``, ``TEST.DETECTIONS_PER_IMAGE`` detections per image (LVIS:
    300), and Fixed AP with ``TEST.FIXED_AP.ENABLED``. ``training_stats``: see
    :class:`LTLVISEvaluator`."""
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    fixed_k = cfg.TEST.FIXED_AP.DETS_PER_CATEGORY if cfg.TEST.FIXED_AP.ENABLED else 0
    if cfg.TEST.FIXED_AP.ENABLED and fixed_k < 1:
        raise ValueError(
            f"TEST.FIXED_AP.DETS_PER_CATEGORY = {fixed_k}: Fixed AP needs K >= 1 detections "
            f"per category (the paper: 10000), or TEST.FIXED_AP.ENABLED False"
        )
    if fixed_k and max_dets > LVIS_MAX_DETS:
        # the extra detections per image feed Fixed AP; the standard AP keeps each image's
        # 300 best, which is the standard protocol applied to the same model
        max_dets = LVIS_MAX_DETS
    if max_dets != LVIS_MAX_DETS:
        logger.warning(
            f"TEST.DETECTIONS_PER_IMAGE = {max_dets}: LVIS AP is defined with "
            f"{LVIS_MAX_DETS} detections per image; set TEST.DETECTIONS_PER_IMAGE "
            f"{LVIS_MAX_DETS} to compare with published numbers"
        )
    return LTLVISEvaluator(
        dataset_name,
        tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
        output_dir=output_folder,
        training_stats=training_stats,
        bin_bounds=cfg.DIAGNOSTICS.INSTANCE_BINS,
        max_dets_per_image=max_dets,
        fixed_ap_dets_per_category=fixed_k,
    )
