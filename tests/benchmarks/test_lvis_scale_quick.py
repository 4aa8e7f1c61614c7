"""benchmarks/lvis_scale_classifiers.py and simulation_report.py: what holds by construction,
in the simulation's --quick mode.

Every registered classifier (plus the RFS and decoupled variants) trains and is evaluated
by lvis-api on a 1203-category LVIS v1-format json; the figures and balance dumps are
written; the simulated data has LVIS v1's profile and the ROI sampling rule; the fast
inference path returns what detectron2's own one does; the weight norms are the effective
rows; the calibration objective and the predicted-vs-published changes are the differences
they claim to be. No simulated AP is asserted (the --quick run trains 12 steps).
"""

import importlib.util
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

from lt_d2.classifiers import CLASSIFIER_REGISTRY
from lt_d2.evaluation.balance import list_balance_dumps, load_balance_dump

from helpers.config import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "benchmarks", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sim = _load("lvis_scale_classifiers")
report = _load("simulation_report")

NUM_LVIS_V1_CATEGORIES = 1203


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("lvis_scale"))
    return out, sim.run(out, replace(sim.SimConfig(), **sim.QUICK))


@pytest.fixture(scope="module")
def profile():
    stats = sim.CategoryStats.from_lvis_json(sim.COUNTS_JSON)
    return sim.LVISProfile(stats, np.random.default_rng(0))


@pytest.mark.integration  # the benchmark's whole --quick run (quick_run)
def test_every_classifier_and_variant_trains_and_is_evaluated(quick_run):
    out, summary = quick_run
    assert summary["failures"] == {}
    runs = [row["run"] for row in summary["rows"]]
    registered = sorted(name for name, _ in CLASSIFIER_REGISTRY)
    assert set(registered) <= set(runs)
    for extra in ("SoftmaxCE + RFS", "SigmoidBCE + RFS", "cRT (SoftmaxCE, CBS)"):
        assert extra in runs
    assert any(r.startswith("LWS") for r in runs) and any(r.startswith("tau-norm") for r in runs)
    table = open(os.path.join(out, "results.md")).read()
    assert all(f"| {r} |" in table for r in runs)
    assert [r["run"] for r in json.load(open(os.path.join(out, "results.json")))["rows"]] == runs


def test_lvis_evaluator_runs_at_1203_categories(tmp_path):
    # an untrained softmax layer scores every class ~1/1204 > the 1e-4 threshold, so every
    # image gets its 300 detections and lvis-api reports every group's AP
    torch.manual_seed(0)
    cfg = replace(sim.SimConfig(), **sim.QUICK)
    ctx = sim.prepare(str(tmp_path), cfg)
    predictor = sim.build_predictor("SoftmaxCE", ctx["stats"], cfg).eval()
    val = ctx["val"]
    with torch.no_grad():
        counts = [len(sim.detect(predictor, f, p)) for f, p in zip(val.features, val.proposals)]
    assert counts == [sim.LVIS_MAX_DETS] * len(val.image_ids)
    metrics = sim.evaluate(predictor, val, ctx["dataset"], ctx["stats"])
    for key in ("AP", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4"):
        assert 0.0 <= metrics[key] <= 100.0, key


@pytest.mark.integration  # the benchmark's whole --quick run (quick_run)
def test_validation_json_has_the_1203_lvis_v1_categories(quick_run):
    out, _ = quick_run
    data = json.load(open(os.path.join(out, "lvis_sim_v1_val.json")))
    assert len(data["categories"]) == NUM_LVIS_V1_CATEGORIES
    counts = json.load(open(sim.COUNTS_JSON))["categories"]
    assert [c["frequency"] for c in data["categories"]] == [c["frequency"] for c in counts]
    positives = {(a["image_id"], a["category_id"]) for a in data["annotations"]}
    negatives = {(im["id"], c) for im in data["images"] for c in im["neg_category_ids"]}
    assert negatives and not negatives & positives  # verified absent where it is absent


@pytest.mark.integration  # the benchmark's whole --quick run (quick_run)
def test_figures_and_balance_dumps_are_written(quick_run):
    out, summary = quick_run
    names = sorted(os.path.basename(p) for p in summary["figures"])
    assert names == ["grad_ratio.png", "weight_norm.png"]
    for path in summary["figures"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    dumps = list_balance_dumps(os.path.join(out, "SoftmaxCE"))
    assert len(dumps) == sim.QUICK["snapshots"]
    last = load_balance_dump(dumps[-1])
    assert last.iteration == sim.QUICK["steps"]
    assert last.arrays[0]["ratio"].shape == (NUM_LVIS_V1_CATEGORIES,)


@pytest.mark.integration  # the benchmark's whole --quick run (quick_run)
def test_decoupled_stages_keep_the_first_stages_box_head(quick_run):
    out, _ = quick_run
    first = torch.load(os.path.join(out, "SoftmaxCE", "model_final.pth"))
    head = [k for k in first if k.startswith("box_head.")]
    assert head, "the quick run trains a box head"
    for stage in ("cRT (SoftmaxCE, CBS)", "LWS (SoftmaxCE, CBS)"):
        second = torch.load(os.path.join(out, sim._slug(stage), "model_final.pth"))
        for k in head:
            torch.testing.assert_close(second[k], first[k], rtol=0, atol=0)


def test_profile_places_each_category_in_its_lvis_image_count(profile):
    stats = profile.stats
    seen = np.zeros(stats.num_classes, dtype=np.int64)
    for i in range(stats.num_images):
        cats = profile.image_categories(i)
        assert len(np.unique(cats)) == len(cats)
        np.add.at(seen, cats, 1)
    np.testing.assert_array_equal(seen, stats.image_count_array)


def test_training_batch_follows_the_roi_sampling_rule(profile):
    cfg = replace(sim.SimConfig(), **sim.QUICK)
    model = sim.GenerativeModel(profile.stats.num_classes, cfg, np.random.default_rng(1))
    images = list(range(40))
    feats, labels = sim.training_batch(profile, model, images, cfg, np.random.default_rng(2))
    assert feats.shape == (40 * cfg.rois_per_image, cfg.dim)
    background = profile.stats.num_classes
    per_image = labels.view(40, cfg.rois_per_image)
    for i, row in zip(images, per_image):
        fg = row[row != background]
        assert len(fg) <= int(cfg.rois_per_image * cfg.fg_fraction)
        # every foreground label is a category annotated in that image
        assert set(fg.tolist()) <= set(profile.image_categories(i).tolist())
        # an image with objects fills its foreground quota up to what its objects allow
        expected = min(
            int(cfg.rois_per_image * cfg.fg_fraction),
            cfg.rois_per_instance * len(profile.image_categories(i)),
        )
        assert len(fg) >= expected


def test_preselected_inference_equals_detectron2s_full_inference(profile):
    cfg = replace(sim.SimConfig(), **sim.QUICK)
    torch.manual_seed(0)
    predictor = sim.build_predictor("SigmoidBCE", profile.stats, cfg).eval()
    torch.nn.init.normal_(predictor.cls_score.weight, std=0.3)  # spread (untied) scores
    rng = np.random.default_rng(3)
    proposals = sim.Instances(sim.IMAGE_SIZE)
    proposals.proposal_boxes = sim.Boxes(torch.as_tensor(sim._random_boxes(rng, 30)).float())
    feats = torch.randn(30, cfg.dim)
    with torch.no_grad():
        fast = sim.detect(predictor, feats, proposals, preselect=1000)
        logits = sim.predict(predictor, feats)
        boxes = predictor.predict_boxes(logits, [proposals])[0]
        scores = predictor.predict_probs(logits, [proposals])[0]
        full, _ = fast_rcnn_inference_single_image(
            boxes, scores, sim.IMAGE_SIZE, 1e-4, 0.5, sim.LVIS_MAX_DETS
        )
    assert len(full) == sim.LVIS_MAX_DETS
    torch.testing.assert_close(fast.scores, full.scores)
    torch.testing.assert_close(fast.pred_classes, full.pred_classes)
    torch.testing.assert_close(fast.pred_boxes.tensor, full.pred_boxes.tensor)


def test_weight_norms_are_the_effective_rows_under_tau_norm_and_lws(profile):
    cfg = replace(sim.SimConfig(), **sim.QUICK)
    torch.manual_seed(0)
    predictor = sim.build_predictor("SoftmaxCE", profile.stats, cfg, lws=True)
    C = profile.stats.num_classes
    with torch.no_grad():
        predictor.cls_score.weight.normal_(std=0.5)
        predictor.logit_scale.uniform_(-2.0, 2.0)
    w = predictor.cls_score.weight.detach()[:C]  # SoftmaxCE: category j is row j
    row_norms = torch.sqrt((w * w).sum(dim=1))
    expected = (row_norms * predictor.logit_scale.detach()[:C].abs()).numpy()
    np.testing.assert_allclose(sim.weight_norms(predictor), expected, rtol=1e-5)
    predictor.tau_norm = 1.0  # |w| / |w|^1: every row has norm 1 at inference, times its scale
    expected = predictor.logit_scale.detach()[:C].abs().numpy()
    np.testing.assert_allclose(sim.weight_norms(predictor), expected, rtol=1e-5)


def test_calibration_objective_is_the_largest_gap_to_the_papers_baselines():
    targets = {"SoftmaxCE": {"APr": 0.0, "APc": 12.0, "APf": 27.4}}
    rows = [{"run": "SoftmaxCE", "APr": 1.0, "APc": 8.5, "APf": 29.0}]
    # gaps 1.0, 3.5, 1.6
    assert report.deviation(rows, targets) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="no baseline row"):
        report.deviation([], targets)


def test_paper_targets_are_table_1_rows_a_and_b():
    # [EQLv2] Table 1, mask AP, as printed: (a) Softmax 0.0 / 12.0 / 27.4, (b) Sigmoid
    # 0.0 / 13.1 / 27.3 (APr / APc / APf)
    assert report.paper_targets() == {
        "SoftmaxCE": {"APr": 0.0, "APc": 12.0, "APf": 27.4},
        "SigmoidBCE": {"APr": 0.0, "APc": 13.1, "APf": 27.3},
    }


def test_predicted_changes_are_paired_by_seed_and_set_against_the_papers(tmp_path):
    # two seeds; EQLv2 vs SigmoidBCE: APr +2 and +4 -> mean +3, sample std sqrt(2)
    values = {
        0: {"SigmoidBCE": (0.0, 10.0, 30.0), "EQLv2": (2.0, 12.0, 29.0)},
        1: {"SigmoidBCE": (1.0, 11.0, 31.0), "EQLv2": (5.0, 14.0, 31.0)},
    }
    dirs = []
    for seed, runs in values.items():
        parts = []  # each run in its own directory: one seed split over processes
        for k, v in runs.items():
            d = tmp_path / f"seed{seed}_{k}"
            d.mkdir()
            row = {"run": k, "APr": v[0], "APc": v[1], "APf": v[2]}
            (d / "results.json").write_text(json.dumps({"rows": [row]}))
            parts.append(str(d))
        dirs.append(",".join(parts))
    (record,) = report.predictions(report.load_seeds(dirs))
    assert record["run"] == "EQLv2" and record["reference"] == "SigmoidBCE"
    assert record["seeds"] == 2
    assert record["APr"] == pytest.approx((3.0, 2**0.5))
    assert record["APc"] == pytest.approx((2.5, 0.5**0.5))
    assert record["APf"] == pytest.approx((-0.5, 0.5**0.5))
    # [EQLv2] Table 1 (h) minus (b), mask AP: 14.9 - 0.0, 22.8 - 13.1, 28.6 - 27.3
    assert record["paper"] == pytest.approx({"APr": 14.9, "APc": 9.7, "APf": 1.3})
    table = report.markdown([record])
    assert "| EQLv2 (vs SigmoidBCE) | 2 | +3.0 ± 1.4 | +14.9 |" in table
