"""Every YAML under configs/ parses on top of add_lt_config, and bad keys fail clearly."""

import glob
import os
import subprocess
import sys

import pytest

from helpers.config import REPO, load_config

CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def test_configs_exist():
    assert len(CONFIGS) >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_parses(path):
    cfg = load_config(path)
    assert "OUTPUT_DIR" not in open(path).read(), "leaf configs must not set OUTPUT_DIR"
    assert cfg.MODEL.CLASSIFIER.NAME


def test_lvis_configs_follow_the_lvis_recipe():
    cfg = load_config(os.path.join(REPO, "configs", "Base-Mask-RCNN-R50-FPN-LVIS-v1.yaml"))
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0001
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203


def _train_net(*args, timeout=120):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.integration
def test_unknown_key_in_file_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f'_BASE_: "{REPO}/configs/demo/Base-demo.yaml"\nMODEL:\n  CLASIFIER:\n    NAME: EQLv2\n'
    )
    proc = _train_net("--config-file", str(bad), "--eval-only")
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "MODEL.CLASIFIER" in proc.stderr


@pytest.mark.integration
def test_num_classes_mismatch_names_the_key_and_fix(tmp_path):
    proc = _train_net(
        "--config-file",
        os.path.join(REPO, "configs", "demo", "softmax_mask_rcnn_R_18_FPN_demo.yaml"),
        "--eval-only",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "7",
        "MODEL.WEIGHTS",
        str(tmp_path / "model_final.pth"),  # the model is checked before weights are read
        "OUTPUT_DIR",
        str(tmp_path),
    )
    assert proc.returncode != 0
    assert "MODEL.ROI_HEADS.NUM_CLASSES = 7" in proc.stderr
    assert "has 10 categories" in proc.stderr
