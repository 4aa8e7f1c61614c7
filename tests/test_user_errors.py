"""A catalogue of what a user can get wrong, and what lt_d2 answers (issue 10).

One test per case: a bad input or a fault, and the check that it is caught where it happens,
before the first iteration when the config and the dataset files determine it, with a message
naming the file / key / value and the fix. Nothing is silently dropped, replaced or reused.
"""

import importlib.util
import logging
import os
import types
import zipfile

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.structures import Boxes, Instances
from torch import nn

from lt_d2.classifiers.dense.efl import EqualizedFocalLoss
from lt_d2.classifiers.dense.eqlv2_focal import EQLv2Focal
from lt_d2.classifiers.gradient_stats import GradientStats
from lt_d2.classifiers.two_stage.eqlv2 import EQLv2
from lt_d2.classifiers.two_stage.eqlv2_softmax2c import EQLv2Softmax2C
from lt_d2.classifiers.two_stage.softmax_ce import SoftmaxCE
from lt_d2.data import CategoryStats, read_lvis_json, register_lvis_format
from lt_d2.data.stats_cli import main as stats_main
from lt_d2.engine import LTCheckpointer, LTTrainer
from lt_d2.engine.hooks import NonFiniteStateHook, nonfinite_update_warnings
from lt_d2.evaluation import LTLVISEvaluator
from lt_d2.evaluation.plot_balance import main as plot_balance_main

from helpers.config import DEMO_CONFIG, REPO, load_config
from helpers.lvis import write_lvis_json

C = 4


# ----------------------------------------------------------------------------------------
# 2. Non-finite logits never enter a classifier's accumulated state
# ----------------------------------------------------------------------------------------
def _two_stage_batch(bad_value, bad_class=2, num_logits=C + 1):
    torch.manual_seed(0)
    gt = torch.tensor([0, 1, C, C, 3, C])
    logits = torch.randn(len(gt), num_logits)
    logits[3, bad_class] = bad_value  # a background ROI: a negative of bad_class
    return logits, gt


@pytest.mark.parametrize("cls", [EQLv2, EQLv2Softmax2C])
def test_nan_logit_is_not_folded_into_eqlv2_state(cls):
    clf = cls(num_classes=C).train()
    clf.losses(*_two_stage_batch(float("nan"), num_logits=clf.num_logits))
    assert torch.isfinite(clf.pos_grad).all() and torch.isfinite(clf.neg_grad).all()
    assert clf.neg_grad[2] == 0  # category 2's update skipped, the others applied
    assert (clf.neg_grad[[0, 1, 3]] > 0).all()
    q, r = clf.weights()
    assert torch.isfinite(q).all() and torch.isfinite(r).all()
    (message,) = nonfinite_update_warnings(clf, names=["a", "b", "c", "d"])
    assert cls.__name__ in message and "categories 2 (c)" in message
    assert nonfinite_update_warnings(clf) == []  # reported once


@pytest.mark.parametrize("cls", [EqualizedFocalLoss, EQLv2Focal])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_logit_is_not_folded_into_dense_state(cls, bad):
    clf = cls(num_classes=C).train()
    torch.manual_seed(0)
    logits = torch.randn(8, C, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 3, C, C, C, -1])
    with torch.no_grad():
        logits[5, 1] = bad
    clf.losses(logits, gt, normalizer=4.0)
    assert torch.isfinite(clf.pos_grad).all() and torch.isfinite(clf.neg_grad).all()
    assert clf.neg_grad[1] == 0 and clf.pos_grad[1] == 0
    assert (clf.neg_grad[[0, 2, 3]] > 0).all()
    (message,) = nonfinite_update_warnings(clf)
    assert cls.__name__ in message and "categories 1 " in message


def test_skipped_update_is_reported_by_the_trainer_hook_at_its_period(caplog):
    clf = EQLv2(num_classes=C).train()
    clf.losses(*_two_stage_batch(float("nan"), num_logits=clf.num_logits))
    hook = NonFiniteStateHook(period=20, names=["a", "b", "c", "d"])
    hook.trainer = types.SimpleNamespace(model=clf, iter=18, max_iter=100)
    with caplog.at_level(logging.WARNING, logger="lt_d2"):
        hook.after_step()  # iteration 19: not a reporting iteration
        assert caplog.text == ""
        hook.trainer.iter = 19
        hook.after_step()
    assert "iteration 20: EQLv2" in caplog.text and "2 (c)" in caplog.text


def test_nan_gradient_is_not_folded_into_gradient_stats():
    stats = GradientStats(SoftmaxCE(num_classes=C)).train()
    logits, gt = _two_stage_batch(float("nan"))
    logits.requires_grad_(True)
    watched = stats.observe(logits, gt)
    torch.nn.functional.cross_entropy(watched, gt).backward()
    balance = stats.synced()
    assert torch.isfinite(balance.pos).all() and torch.isfinite(balance.neg).all()
    (message,) = nonfinite_update_warnings(stats)
    assert "GradientStats" in message


# ----------------------------------------------------------------------------------------
# helpers: a tiny LVIS-format dataset on disk, train_net.py imported as a module
# ----------------------------------------------------------------------------------------
def _write_lvis(path, names, annotations, num_images=3, frequency="f"):
    """An LVIS-format json: ``annotations`` is a list of (image id, category id) pairs."""
    return write_lvis_json(
        path,
        [{"name": n, "frequency": frequency} for n in names],
        [(img, cat, 2.0, 2.0) for img, cat in annotations],
        num_images=num_images,
        image_size=32,
        box_size=8,
    )


@pytest.fixture
def tiny_dataset(tmp_path):
    """Factory registering a tiny LVIS-format dataset; removed from the catalogs after."""
    registered = []

    def make(name, names, annotations, images_present=(), **kw):
        file = _write_lvis(tmp_path / f"{name}.json", names, annotations, **kw)
        os.makedirs(tmp_path / "train", exist_ok=True)
        for i in images_present:
            (tmp_path / "train" / f"{i:06d}.jpg").write_bytes(b"")
        register_lvis_format(name, file, str(tmp_path))
        registered.append(name)
        return file

    yield make
    for name in registered:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_loggers():
    """train_net.setup configures the 'lt_d2', 'detectron2' and 'fvcore' loggers (handlers,
    propagation): put them back so that later tests' caplog still sees their records."""
    names = ("lt_d2", "detectron2", "fvcore")
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names
    }
    yield
    for n, (handlers, propagate) in saved.items():
        logger = logging.getLogger(n)
        for h in logger.handlers:
            if h not in handlers:
                h.flush()
                logger.removeHandler(h)
        logger.propagate = propagate


def _args(*argv):
    return default_argument_parser().parse_args(["--config-file", DEMO_CONFIG, *argv])


# ----------------------------------------------------------------------------------------
# 1. A category-statistics cache is reused only for the data it was computed from
# ----------------------------------------------------------------------------------------
def test_stale_category_stats_cache_is_recomputed_with_a_log_line(tiny_dataset, tmp_path, caplog):
    file = tiny_dataset("lt_ue_stats", ["a", "b"], [(1, 1), (2, 1), (3, 2)])
    cache_dir = str(tmp_path / "cache")
    first = CategoryStats.from_dataset("lt_ue_stats", cache_dir=cache_dir)
    assert first.instance_count_array.tolist() == [2, 1]
    # the annotation file changes (one more 'b' on every image): the cache is stale
    _write_lvis(file, ["a", "b"], [(1, 1), (2, 1), (3, 2), (1, 2), (2, 2)])
    with caplog.at_level(logging.INFO, logger="lt_d2"):
        second = CategoryStats.from_dataset("lt_ue_stats", cache_dir=cache_dir)
    assert second.instance_count_array.tolist() == [2, 3]
    assert second.image_count_array.tolist() == [2, 3]
    assert "recomputing" in caplog.text and file in caplog.text


# ----------------------------------------------------------------------------------------
# 3. lt_d2's log lines reach the console and OUTPUT_DIR/log.txt
# ----------------------------------------------------------------------------------------
def test_lt_d2_log_lines_reach_log_txt(tmp_path, restore_loggers):
    _train_net().setup(_args("OUTPUT_DIR", str(tmp_path)))
    logging.getLogger("lt_d2.classifiers.two_stage.bags").info("probe-info: BAGS groups")
    logging.getLogger("lt_d2.engine.hooks").warning("probe-warning")
    for h in logging.getLogger("lt_d2").handlers:
        h.flush()
    text = (tmp_path / "log.txt").read_text()
    assert "probe-info: BAGS groups" in text and "probe-warning" in text


# ----------------------------------------------------------------------------------------
# 4. Dataset validation before the first iteration
# ----------------------------------------------------------------------------------------
def test_annotation_category_outside_the_categories_names_the_json(tmp_path):
    file = _write_lvis(tmp_path / "bad_ids.json", ["a", "b"], [(1, 1), (2, 3)])
    with pytest.raises(ValueError, match=r"bad_ids\.json.*category_id outside.*1\.\.2"):
        read_lvis_json(file)


def test_missing_image_files_are_counted_before_training(tiny_dataset, instant_cfg):
    names = [f"c{k}" for k in range(10)]
    file = tiny_dataset("lt_ue_missing", names, [(1, 1), (2, 2), (3, 3)], images_present=[2])
    cfg = instant_cfg("DATASETS.TRAIN", "('lt_ue_missing',)")
    with pytest.raises(FileNotFoundError, match=r"2 of the 3 images.*lt_ue_missing\.json.*000001"):
        LTTrainer.build_train_loader(cfg)
    assert file


def test_damaged_test_json_fails_before_training(tmp_path, instant_cfg):
    bad = tmp_path / "broken_val.json"
    bad.write_text('{"images": [')
    register_lvis_format("lt_ue_broken_val", str(bad), str(tmp_path))
    try:
        cfg = instant_cfg("DATASETS.TEST", "('lt_ue_broken_val',)")
        with pytest.raises(ValueError, match=r"DATASETS.TEST.*broken_val\.json.*not valid JSON"):
            LTTrainer(cfg)
    finally:
        DatasetCatalog.remove("lt_ue_broken_val")
        MetadataCatalog.remove("lt_ue_broken_val")


def test_test_set_with_other_categories_fails_before_training(tiny_dataset, instant_cfg):
    others = [f"other{k}" for k in range(10)]  # the demo's count, other names
    tiny_dataset("lt_ue_other_val", others, [(1, 1)], images_present=[1, 2, 3])
    cfg = instant_cfg("DATASETS.TEST", "('lt_ue_other_val',)")
    with pytest.raises(ValueError, match=r"lt_ue_other_val\.json.*categories.*lvis_demo_train"):
        LTTrainer(cfg)


# ----------------------------------------------------------------------------------------
# 5. Checkpoints, --eval-only and classifier keys
# ----------------------------------------------------------------------------------------
class _TinyDetector(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.cls_score = nn.Linear(3, classifier.num_logits)
        self.classifier = classifier


def test_checkpoint_of_another_classifier_with_the_same_logit_count_is_refused(tmp_path):
    # EQL v2 (C sigmoid tasks + objectness) and softmax (C classes + background): both C + 1
    LTCheckpointer(_TinyDetector(EQLv2(num_classes=C)), str(tmp_path)).save("eqlv2")
    softmax = _TinyDetector(SoftmaxCE(num_classes=C))
    assert softmax.cls_score.out_features == C + 1
    with pytest.raises(ValueError, match=r"eqlv2\.pth.*EQLv2.*SoftmaxCE.*MODEL.CLASSIFIER.NAME"):
        LTCheckpointer(softmax).load(str(tmp_path / "eqlv2.pth"))
    # the decoupled stage changes the classifier on purpose
    LTCheckpointer(softmax, allow_classifier_change=True).load(str(tmp_path / "eqlv2.pth"))
    assert torch.equal(
        softmax.cls_score.weight, torch.load(tmp_path / "eqlv2.pth")["model"]["cls_score.weight"]
    )


def test_eval_only_without_weights_is_refused(tmp_path, restore_loggers):
    with pytest.raises(ValueError, match=r"--eval-only.*MODEL.WEIGHTS"):
        _train_net().setup(_args("--eval-only", "OUTPUT_DIR", str(tmp_path)))


def test_eval_only_with_weights_that_leave_layers_random_is_refused(tmp_path):
    backbone_only = {"model": {"cls_score.weight": torch.zeros(C + 1, 3)}}  # no bias
    torch.save(backbone_only, tmp_path / "partial.pth")
    model = _TinyDetector(SoftmaxCE(num_classes=C))
    with pytest.raises(ValueError, match=r"partial\.pth lacks 1 .*cls_score\.bias"):
        LTCheckpointer(model, require_all_weights=True).load(str(tmp_path / "partial.pth"))


@pytest.mark.parametrize(
    "config, key, value, use",
    [
        ("efl/efl_atss_R_18_FPN_demo.yaml", "MODEL.CLASSIFIER.NAME", "EQLv2", "DENSE_CLASSIFIER"),
        ("efl/efl_retinanet_R_18_FPN_demo.yaml", "MODEL.CLASSIFIER.NAME", "BAGS", "DENSE_"),
        (
            "softmax_mask_rcnn_R_18_FPN_demo.yaml",
            "MODEL.DENSE_CLASSIFIER.NAME",
            "EQLv2Focal",
            "MODEL.CLASSIFIER.NAME",
        ),
    ],
)
def test_classifier_key_ignored_by_the_meta_architecture_is_refused(config, key, value, use):
    cfg = load_config(os.path.join(REPO, "configs", "demo", config), key, value)
    with pytest.raises(ValueError, match=rf"{key} = '{value}' is ignored.*{use}"):
        LTTrainer.build_model(cfg)


# ----------------------------------------------------------------------------------------
# 6. Messages that name the file / key and the fix
# ----------------------------------------------------------------------------------------
def test_unknown_key_on_the_command_line_names_it(tmp_path, restore_loggers):
    with pytest.raises(KeyError, match=r"command line.*MODEL.NO_SUCH_KEY.*spelling"):
        _train_net().setup(_args("OUTPUT_DIR", str(tmp_path), "MODEL.NO_SUCH_KEY", "1"))


def test_truncated_checkpoint_names_the_path(tmp_path):
    model = _TinyDetector(SoftmaxCE(num_classes=C))
    LTCheckpointer(model, str(tmp_path)).save("full")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"cut\.pth.*truncated.*MODEL.WEIGHTS"):
        LTCheckpointer(model).load(str(tmp_path / "cut.pth"))


def test_truncated_balance_dump_names_the_path(tmp_path):
    run = tmp_path / "run" / "balance"
    run.mkdir(parents=True)
    np.savez(run / "iter_0000020.npz", stages=np.asarray(["roi_heads"]), iteration=np.int64(20))
    data = (run / "iter_0000020.npz").read_bytes()
    (run / "iter_0000020.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"iter_0000020\.npz.*truncated"):
        plot_balance_main([str(tmp_path / "run"), "--out", str(tmp_path / "fig")])
    with pytest.raises(zipfile.BadZipFile):  # what np.load itself says: no path
        np.load(run / "iter_0000020.npz")


def test_stats_cli_on_a_registered_dataset_without_files_points_to_the_readme():
    json_file = MetadataCatalog.get("lvis_v1_train").json_file
    if os.path.exists(json_file):
        pytest.skip(f"{json_file} exists here")
    with pytest.raises(SystemExit, match=r"lvis_v1_train.*datasets/README\.md"):
        stats_main(["lvis_v1_train"])


def test_ap_of_a_frequency_group_absent_from_the_validation_set_is_nan(tiny_dataset, tmp_path):
    # two frequent categories, no rare or common one: lvis-api's APr / APc placeholder is -1
    tiny_dataset("lt_ue_no_rare", ["a", "b"], [(1, 1), (1, 2)], num_images=1)
    stats = CategoryStats(instance_counts=[500, 600], image_counts=[200, 300], num_images=300)
    evaluator = LTLVISEvaluator(
        "lt_ue_no_rare", tasks=("bbox",), output_dir=None, category_stats=stats
    )
    evaluator.reset()
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[2.0, 2.0, 10.0, 10.0], [2.0, 2.0, 10.0, 10.0]]))
    inst.scores = torch.tensor([0.9, 0.8])
    inst.pred_classes = torch.tensor([0, 1])
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    res = evaluator.evaluate()["bbox"]
    assert res["APf"] == pytest.approx(100.0)
    assert np.isnan(res["APr"]) and np.isnan(res["APc"])
    assert not (np.isnan(res["AP3"]))  # the bin both categories fall in
