"""One run of lvis-api's evaluation, as every lt_d2 protocol calls it."""

from typing import List

from lt_d2.compat import numpy_aliases_for_lvis

__all__ = ["run_lvis_eval"]


def run_lvis_eval(lvis_gt, lvis_results: List[dict], task: str, max_dets: int):
    """Evaluate LVIS-format detections with lvis-api and return the finished ``LVISEval``.

    Args:
        lvis_gt: an ``lvis.LVIS`` of the evaluation json.
        lvis_results: LVIS-format detections (category ids of the json); not modified.
        task: ``"bbox"`` or ``"segm"``; mask AP uses mask areas for the size ranges, so the
            boxes are dropped (as detectron2 does).
        max_dets: detections kept per image (LVIS: 300), or -1 for no per-image limit
            (then neither ``LVISResults`` nor ``LVISEval`` applies one).
    """
    from lvis import LVISEval, LVISResults

    # lvis-api writes into the dicts it gets: it gets copies
    results = [dict(r) for r in lvis_results]
    if task == "segm":
        for r in results:
            r.pop("bbox", None)
    lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=max_dets), task)
    if max_dets < 0:
        lvis_eval.params.max_dets = -1
    with numpy_aliases_for_lvis():  # lvis 0.5.3 under numpy >= 1.24
        lvis_eval.run()
    return lvis_eval
