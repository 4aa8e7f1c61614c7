"""Fixed AP (Dave et al. 2021) against hand computations on a hand-made LVIS json where the
per-image limit of standard LVIS AP and the per-category budget of Fixed AP disagree."""

import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from lvis import LVIS

from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats
from lt_d2.evaluation import build_lvis_evaluator, evaluate_fixed_ap, top_detections_per_category

from helpers.lvis import evaluate_detections, write_lvis_json

# contiguous categories 0 (frequent), 1 (rare), 2 (common); json ids 1, 2, 3
TRAIN = CategoryStats(instance_counts=[900, 6, 80], image_counts=[500, 5, 50], num_images=1000)
# ground truth: image 1 holds category 0 at (10, 10) and category 1 at (50, 10); image 2
# holds category 2 at (10, 10); every box 20 x 20.
GT = {1: [(0, 10, 10), (1, 50, 10)], 2: [(2, 10, 10)]}
NUM_FP = 300
# detections (image, contiguous category, x, y, score): on image 1, 300 false positives of
# category 0 (disjoint from its ground truth) outscore its two exact hits
DETS = (
    [(1, 0, 70, 70, 0.9)] * NUM_FP
    + [(1, 1, 50, 10, 0.5), (1, 0, 10, 10, 0.4)]
    + [(2, 2, 10, 10, 0.8)]
)

# By hand (every hit has IoU 1, so every IoU threshold gives the same AP):
# - standard LVIS AP, 300 detections per image: image 1 keeps its 300 false positives only,
#   so categories 0 and 1 have AP 0; category 2 has AP 1.
STANDARD = {"AP": 100 / 3, "APf": 0.0, "APr": 0.0, "APc": 100.0}
# - Fixed AP, K = 10000: category 0 keeps all 301 detections; its hit comes after 300 false
#   positives: precision 1/301 at recall 1, and the interpolated precision is 1/301 at every
#   recall threshold, AP_0 = 1/301. Categories 1 and 2: AP 1.
AP0 = 1 / (NUM_FP + 1)
FIXED_10000 = {"AP": 100 * (AP0 + 2) / 3, "APf": 100 * AP0, "APr": 100.0, "APc": 100.0}
# - Fixed AP, K = 300: category 0 keeps its 300 false positives only (AP 0), the others 1.
FIXED_300 = {"AP": 200 / 3, "APf": 0.0, "APr": 100.0, "APc": 100.0}


def _lvis_json(path):
    anns = [(img, c + 1, x, y) for img, objs in GT.items() for c, x, y in objs]
    cats = [{"name": f"cat{c}", "frequency": str(TRAIN.frequency_labels[c])} for c in range(3)]
    assert [c["frequency"] for c in cats] == ["f", "r", "c"]
    write_lvis_json(
        path,
        cats,
        anns,
        num_images=len(GT),
        image_size=100,
        box_size=20,
        url="http://x/val/{:012d}.jpg",
    )


def _results():
    return [
        {"image_id": i, "category_id": c + 1, "bbox": [float(x), float(y), 20.0, 20.0], "score": s}
        for i, c, x, y, s in DETS
    ]


def _assert_metrics(results, expected, suffix=""):
    for key, value in expected.items():
        assert results[key + suffix] == pytest.approx(value, abs=1e-6), key + suffix


@pytest.fixture
def json_path(tmp_path):
    path = tmp_path / "val.json"
    _lvis_json(path)
    return str(path)


def test_top_detections_per_category_pools_images():
    dets = [
        {"image_id": 1, "category_id": 1, "score": 0.2},
        {"image_id": 2, "category_id": 1, "score": 0.9},
        {"image_id": 1, "category_id": 2, "score": 0.1},
        {"image_id": 3, "category_id": 1, "score": 0.5},
    ]
    kept = top_detections_per_category(dets, 2)
    assert sorted((d["category_id"], d["score"]) for d in kept) == [(1, 0.5), (1, 0.9), (2, 0.1)]
    with pytest.raises(ValueError, match="DETS_PER_CATEGORY"):
        top_detections_per_category(dets, 0)


def test_fixed_ap_equals_hand_computation(json_path):
    gt = LVIS(json_path)
    results = _results()
    _assert_metrics(evaluate_fixed_ap(gt, results, "bbox", 10000), FIXED_10000, "-fixed")
    _assert_metrics(evaluate_fixed_ap(gt, results, "bbox", 300), FIXED_300, "-fixed")
    assert results == _results()  # the caller's detections are left as they were


def _run_evaluator(evaluator):
    return evaluate_detections(evaluator, DETS, GT, image_size=100, box_size=20)["bbox"]


def test_evaluator_reports_fixed_ap_beside_standard_ap(json_path, tmp_path):
    name = f"lt_test_fixed_ap_{tmp_path.name}"
    MetadataCatalog.get(name).set(
        json_file=json_path, thing_classes=["cat0", "cat1", "cat2"], evaluator_type="lvis"
    )
    cfg = get_cfg()
    add_lt_config(cfg)
    assert not cfg.TEST.FIXED_AP.ENABLED and cfg.TEST.FIXED_AP.DETS_PER_CATEGORY == 10000
    cfg.TEST.DETECTIONS_PER_IMAGE = 300  # LVIS's limit (the LVIS configs' value)
    off = _run_evaluator(build_lvis_evaluator(cfg, name, None, lambda: TRAIN))
    _assert_metrics(off, STANDARD)
    assert not any(k.endswith("-fixed") for k in off)

    cfg.TEST.FIXED_AP.ENABLED = True
    # more detections per image feed Fixed AP; the standard AP still keeps 300 per image
    cfg.TEST.DETECTIONS_PER_IMAGE = 1000
    on = _run_evaluator(build_lvis_evaluator(cfg, name, None, lambda: TRAIN))
    _assert_metrics(on, STANDARD)
    _assert_metrics(on, FIXED_10000, "-fixed")

    cfg.TEST.FIXED_AP.DETS_PER_CATEGORY = 0
    with pytest.raises(ValueError, match="DETS_PER_CATEGORY = 0"):
        build_lvis_evaluator(cfg, name, None, lambda: TRAIN)
