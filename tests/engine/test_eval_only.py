"""``--eval-only`` never loads the training set: a config whose training set cannot be read
still evaluates, with the LVIS bins taken from the training counts the evaluated json stores.

Integration test: train_net.py in a subprocess (tests/helpers/unreadable_train_set_train_net.py
registers a training set whose loader raises).
"""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from lt_d2.engine import LTCheckpointer, LTTrainer

from helpers.config import DEMO_CONFIG, REPO, load_config

pytestmark = pytest.mark.integration  # train_net.py in a subprocess

SCRIPT = os.path.join(REPO, "tests", "helpers", "unreadable_train_set_train_net.py")
LOADER_ERROR = "the training set is not on disk"


def _eval_only(tmp_path, config_file, *opts):
    cfg = load_config(config_file, "MODEL.DEVICE", "cpu")
    weights = str(tmp_path / "model.pth")
    model = LTTrainer.build_model(cfg)  # complete weights (untrained): evaluation runs on them
    LTCheckpointer(model, str(tmp_path)).save("model")
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, "--config-file", config_file, "--eval-only"]
    cmd += ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out)]
    cmd += ["DATASETS.TRAIN", '("lt_test_unreadable_train",)', "TEST.DETECTIONS_PER_IMAGE", "300"]
    cmd += [str(o) for o in opts]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True), out


def test_eval_only_without_the_training_set_evaluates(tmp_path):
    proc, out = _eval_only(tmp_path, DEMO_CONFIG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert LOADER_ERROR not in proc.stdout + proc.stderr
    with open(out / "inference" / "lvis_demo_val" / "lt_per_category_bbox.json") as f:
        dumped = json.load(f)
    # the bins' training counts, counted here from the training annotations themselves
    train = DatasetCatalog.get("lvis_demo_train")
    counts = Counter(a["category_id"] for record in train for a in record["annotations"])
    num_classes = len(MetadataCatalog.get("lvis_demo_train").thing_classes)
    expected = [counts.get(k, 0) for k in range(num_classes)]
    assert dumped["instance_counts"] == expected
    assert len(dumped["ap"]) == num_classes


def test_a_classifier_defined_by_training_counts_names_what_it_could_not_read(tmp_path):
    # EQL's tail is part of the model's definition, so building EQL needs the training set's
    # statistics even for evaluation; the error names the classifier and the dataset
    cmd = [sys.executable, SCRIPT, "--config-file", DEMO_CONFIG, "--eval-only"]
    cmd += ["MODEL.WEIGHTS", str(tmp_path / "none.pth"), "OUTPUT_DIR", str(tmp_path)]
    cmd += ["MODEL.CLASSIFIER.NAME", "EQL", "DATASETS.TRAIN", '("lt_test_unreadable_train",)']
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "EQL is defined by the training set's category statistics" in proc.stderr
    assert "lt_test_unreadable_train" in proc.stderr and LOADER_ERROR in proc.stderr
