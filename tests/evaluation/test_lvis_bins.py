"""LTLVISEvaluator's bin APs against lvis-api's per-category APs, on a hand-made LVIS json."""

import json

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from lvis import LVIS, LVISEval, LVISResults

from lt_d2.compat import numpy_aliases_for_lvis
from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats
from lt_d2.evaluation import LTLVISEvaluator, build_lvis_evaluator

from helpers.lvis import evaluate_detections, write_lvis_json

# Training statistics of 6 categories: bins [0,10) = {0, 1}, [10,100) = {2}, [100,1000) =
# {3, 4}, [1000, inf) = {5}; rare = {0, 1}, common = {2}, frequent = {3, 4, 5}.
TRAIN = CategoryStats(
    instance_counts=[2, 7, 50, 500, 600, 5000],
    image_counts=[2, 5, 40, 300, 400, 900],
    num_images=1000,
)
NUM_IMAGES = 3


def _box(x, y, s=20):
    return [float(x), float(y), float(s), float(s)]


# ground truth per image: (contiguous category, x, y); category 4 has none in this split
GT = {
    1: [(0, 10, 10), (1, 50, 10), (2, 10, 50), (3, 50, 50)],
    2: [(2, 10, 10), (3, 40, 40), (5, 70, 10), (5, 10, 70)],
    3: [(1, 10, 10), (5, 60, 60), (0, 30, 60)],
}
# detections: (image, contiguous category, x, y, score). Exact hits (IoU 1), shifted hits
# (IoU 0.6 / 0.33) and disjoint false positives on images whose ground truth has the category.
DETS = [
    (1, 0, 10, 10, 0.9),
    (1, 0, 75, 75, 0.8),  # FP
    (3, 0, 34, 60, 0.3),  # IoU 16*20 / (2*400 - 320) = 0.67
    (1, 1, 50, 10, 0.7),
    (3, 1, 60, 60, 0.95),  # FP
    (1, 2, 10, 50, 0.6),
    (2, 2, 20, 10, 0.5),  # IoU 0.33: FP at 0.5
    (1, 3, 50, 50, 0.4),
    (2, 3, 40, 40, 0.9),
    (2, 3, 0, 0, 0.2),  # FP
    (2, 5, 70, 10, 0.8),
    (3, 5, 60, 60, 0.85),
    (2, 5, 45, 75, 0.9),  # FP
]


def _lvis_json(path):
    anns = [(img, c + 1, x, y) for img, objs in GT.items() for c, x, y in objs]
    cats = [
        {"name": f"cat{c}", "frequency": str(TRAIN.frequency_labels[c])}
        for c in range(TRAIN.num_classes)
    ]
    write_lvis_json(
        path,
        cats,
        anns,
        num_images=NUM_IMAGES,
        image_size=100,
        box_size=20,
        url="http://x/val/{:012d}.jpg",
    )


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "val.json"
    _lvis_json(path)
    name = f"lt_test_lvis_bins_{tmp_path.name}"
    MetadataCatalog.get(name).set(
        json_file=str(path), thing_classes=[f"cat{c}" for c in range(6)], evaluator_type="lvis"
    )
    return name, str(path)


def _run_evaluator(evaluator):
    images = range(1, NUM_IMAGES + 1)
    return evaluate_detections(evaluator, DETS, images, image_size=100, box_size=20)


def test_bin_ap_equals_lvis_api_per_category_ap(dataset, tmp_path):
    name, path = dataset
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.TEST.DETECTIONS_PER_IMAGE = 300
    cfg.MODEL.MASK_ON = False  # boxes only: the detections carry no masks
    evaluator = build_lvis_evaluator(cfg, name, str(tmp_path / "out"), lambda: TRAIN)
    numpy_before = set(np.__dict__)
    res = _run_evaluator(evaluator)["bbox"]
    assert set(np.__dict__) == numpy_before  # lvis-api's numpy alias did not leak out

    # By hand, for bin 4 = {category 5}: ground truth on images 2 (two) and 3 (one);
    # detections by score 0.9 (FP), 0.85 (TP), 0.8 (TP), exact boxes, so every IoU threshold
    # agrees. Recall 0, 1/3, 2/3 with precision 0, 1/2, 2/3, interpolated to 2/3 up to recall
    # 2/3: lvis-api's 101 recall thresholds 0.00..0.66 (67 of them) score 2/3, the rest 0.
    # The same value on numpy 1.x and 2.x (lt_d2.compat bridges lvis 0.5.3's np.float).
    assert res["AP4"] == pytest.approx(100 * (2 / 3) * 67 / 101, abs=1e-9)

    # lvis-api run independently on the same detections (1-based category ids)
    gt = LVIS(path)
    dets = [
        {"image_id": i, "category_id": c + 1, "bbox": _box(x, y), "score": s}
        for i, c, x, y, s in DETS
    ]
    ev = LVISEval(gt, LVISResults(gt, dets, max_dets=300), "bbox")
    with numpy_aliases_for_lvis():
        ev.run()
    precision = ev.eval["precision"][:, :, :, 0]  # area "all"
    ap = []
    for k in range(6):
        p = precision[:, :, k]
        ap.append(p[p > -1].mean() if (p > -1).any() else None)
    assert ap[4] is None  # no ground truth in this split: excluded from its bin
    bins = [[0, 1], [2], [3, 4], [5]]
    for b, cats in enumerate(bins):
        values = [ap[k] for k in cats if ap[k] is not None]
        assert res[f"AP{b + 1}"] == pytest.approx(100 * np.mean(values), abs=1e-9)
    assert res["AP1"] != pytest.approx(res["AP4"])  # the bins are not all alike
    for key in ("AP", "APr", "APc", "APf", "AR@300"):
        assert res[key] == pytest.approx(100 * ev.get_results()[key], abs=1e-9)

    # EFL Fig. 4 margins by hand, at IoU 0.5: (mean TP score) - (mean FP score) per category
    margin = {0: np.mean([0.9, 0.3]) - 0.8, 1: 0.7 - 0.95, 2: 0.6 - 0.5, 3: 0.65 - 0.2}
    margin[5] = np.mean([0.8, 0.85]) - 0.9
    assert res["score_margin_r"] == pytest.approx(np.mean([margin[0], margin[1]]))
    assert res["score_margin_c"] == pytest.approx(margin[2])
    assert res["score_margin_f"] == pytest.approx(np.mean([margin[3], margin[5]]))

    with open(tmp_path / "out" / "lt_per_category_bbox.json") as f:
        per_cat = json.load(f)
    assert per_cat["ap"][4] is None
    np.testing.assert_allclose(per_cat["ap"][:4], ap[:4])
    np.testing.assert_allclose(per_cat["score_margin"][5], margin[5], rtol=1e-6)


def test_bins_without_training_categories_are_left_out(dataset, tmp_path):
    name, _ = dataset
    small = CategoryStats(
        instance_counts=[2, 7, 50, 500, 600, 900], image_counts=[1] * 6, num_images=10
    )
    evaluator = LTLVISEvaluator(name, tasks=("bbox",), category_stats=small)
    res = _run_evaluator(evaluator)["bbox"]
    assert {"AP1", "AP2", "AP3"} <= set(res) and "AP4" not in res


def test_category_count_mismatch_fails_at_construction(dataset):
    name, _ = dataset
    wrong = CategoryStats(instance_counts=[1, 2], image_counts=[1, 1], num_images=2)
    with pytest.raises(ValueError, match="training set's categories"):
        LTLVISEvaluator(name, category_stats=wrong)


def test_ap_of_a_frequency_group_absent_from_the_validation_set_is_nan(tiny_dataset):
    # two frequent categories, no rare or common one: lvis-api's APr / APc placeholder is -1
    tiny_dataset("lt_ue_no_rare", ["a", "b"], [(1, 1), (1, 2)], num_images=1)
    stats = CategoryStats(instance_counts=[500, 600], image_counts=[200, 300], num_images=300)
    evaluator = LTLVISEvaluator(
        "lt_ue_no_rare", tasks=("bbox",), output_dir=None, category_stats=stats
    )
    # both boxes of write_tiny_lvis_json (8-pixel squares at (2, 2)) detected exactly
    res = evaluate_detections(
        evaluator, [(1, 0, 2.0, 2.0, 0.9), (1, 1, 2.0, 2.0, 0.8)], [1], image_size=32, box_size=8
    )["bbox"]
    assert res["APf"] == pytest.approx(100.0)
    assert np.isnan(res["APr"]) and np.isnan(res["APc"])
    assert not np.isnan(res["AP3"])  # the bin both categories fall in
