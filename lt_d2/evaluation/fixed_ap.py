"""Fixed AP: the LVIS protocol of Dave et al. 2021, "Evaluating large-vocabulary object
detectors: the devil is in the details" (its definition as implemented by the authors'
``scripts/evaluate_ap_fixed.py``, achalddave/large-vocab-devil).

LVIS's standard AP keeps each image's 300 highest-scoring detections, so categories compete
for one budget and the AP of a category depends on the scores of the others (the paper's
"cross-category" dependence). Fixed AP replaces the per-image budget by a per-category one:
the K highest-scoring detections of each category over the whole evaluation set (K = 10,000
for LVIS), with no limit per image, evaluated by lvis-api otherwise unchanged (same matching,
same 101-point precision, same rare / common / frequent averages).

A detector's ordinary inference already caps detections per image
(``TEST.DETECTIONS_PER_IMAGE``) and drops low scores (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``),
so most categories get far fewer than K candidates and Fixed AP comes out low; the authors
re-run inference to output K detections per category. Raise those two settings for a
faithful number; :func:`evaluate_fixed_ap` logs how many categories fall short.

The paper's other metric, pooled AP (one precision-recall curve over all categories after
calibration), is not implemented.
"""

import logging
from collections import Counter
from typing import Dict, List

from .lvis_api import run_lvis_eval

__all__ = ["top_detections_per_category", "evaluate_fixed_ap", "FIXED_AP_METRICS"]

logger = logging.getLogger(__name__)

# lvis-api's AP results reported under Fixed AP, as "<name>-fixed"
FIXED_AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def top_detections_per_category(lvis_results: List[dict], dets_per_category: int) -> List[dict]:
    """The ``dets_per_category`` highest-scoring detections of each category over the whole
    set, images pooled (ties keep their input order).

    Args:
        lvis_results: LVIS-format detections (``category_id``, ``score``, ...).
        dets_per_category: K >= 1.

    Returns:
        the kept detections (the same dicts), grouped by category.
    """
    if dets_per_category < 1:
        raise ValueError(
            f"TEST.FIXED_AP.DETS_PER_CATEGORY must be >= 1, got {dets_per_category} "
            f"(the paper uses 10000)"
        )
    by_category: Dict[int, List[dict]] = {}
    for det in lvis_results:
        by_category.setdefault(det["category_id"], []).append(det)
    kept = []
    for dets in by_category.values():
        kept.extend(sorted(dets, key=lambda d: d["score"], reverse=True)[:dets_per_category])
    return kept


def evaluate_fixed_ap(
    lvis_gt, lvis_results: List[dict], task: str, dets_per_category: int = 10000
) -> Dict[str, float]:
    """Fixed AP of ``lvis_results`` (percent), keys ``"<metric>-fixed"`` for
    :data:`FIXED_AP_METRICS`.

    Args:
        lvis_gt: an ``lvis.LVIS`` of the evaluation json.
        lvis_results: LVIS-format detections, category ids of the json. Not modified
            (lvis-api writes into the dicts it gets: it gets copies).
        task: ``"bbox"`` or ``"segm"``.
        dets_per_category: K (the paper: 10000).
    """
    kept = top_detections_per_category(lvis_results, dets_per_category)
    if not kept:
        logger.warning("No predictions from the model: Fixed AP is nan.")
        return {f"{m}-fixed": float("nan") for m in FIXED_AP_METRICS}
    counts = Counter(d["category_id"] for d in kept)
    short = sum(counts.get(c, 0) < dets_per_category for c in lvis_gt.get_cat_ids())
    if short:
        logger.warning(
            f"Fixed AP: {short} of {len(lvis_gt.get_cat_ids())} categories have fewer than "
            f"{dets_per_category} detections, which lowers their AP; raise "
            f"TEST.DETECTIONS_PER_IMAGE and lower MODEL.ROI_HEADS.SCORE_THRESH_TEST (the "
            f"paper outputs {dets_per_category} detections per category)"
        )
    results = run_lvis_eval(lvis_gt, kept, task, max_dets=-1).get_results()
    return {f"{m}-fixed": float(results[m]) * 100 for m in FIXED_AP_METRICS}
