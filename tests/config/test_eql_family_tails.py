"""The tail of every EQL-family config (EQL, BackgroundEQL, DropLoss) on LVIS v1's own counts.

The counts are facts from LVIS v1's train annotations (per category: image count and
'r' / 'c' / 'f' label), read from the repository's copy (datasets/, source named in
datasets/README.md). Each config's
expected tail is derived here from the rule its paper or official config states, not from
the code under test:

- configs/droploss/: DropLoss eq. 7, T_lambda(f_j) = 1 exactly for the rare and common
  categories.
- configs/eqlv2/eql_*: EQL v2 sec. 4.5 and its official config ``eql_r50_8x2_1x.py``:
  image frequency f_j = image_count_j / num_images below lambda = 1.1e-3.
"""

import glob
import json
import os

import pytest

from lt_d2.classifiers import build_classifier
from lt_d2.data.category_stats import CategoryStats

from helpers.config import REPO, load_config

COUNTS = os.path.join(REPO, "datasets", "lvis_v1_train_category_counts.json")
EQL_FAMILY = ("EQL", "BackgroundEQL", "DropLoss")


def _lvis_v1():
    with open(COUNTS) as f:
        return json.load(f)


def _eql_family_lvis_v1_configs():
    paths = glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    found = []
    for path in sorted(paths):
        cfg = load_config(path)
        if cfg.MODEL.CLASSIFIER.NAME in EQL_FAMILY and "lvis_v1_train" in cfg.DATASETS.TRAIN:
            found.append(os.path.relpath(path, REPO))
    return found


def _expected_tail(relpath, data):
    """Category ids of the tail the config's source prescribes."""
    cats = data["categories"]
    if relpath.startswith("configs/droploss/"):
        return {c["id"] for c in cats if c["frequency"] in ("r", "c")}
    if relpath.startswith("configs/eqlv2/eql_"):
        return {c["id"] for c in cats if c["image_count"] / data["num_images"] < 1.1e-3}
    raise AssertionError(f"{relpath}: no source for its EQL tail in this test; add one")


CONFIGS = _eql_family_lvis_v1_configs()


def test_every_eql_family_config_is_covered():
    # 12 DropLoss LVIS v1 configs (3 methods x Mask/Cascade x with/without RFS) + 5 EQL v2
    # (Table 1 (c) and its Cascade variant; Table 5's Mask-R50, Mask-R101, Cascade-R101)
    assert len([p for p in CONFIGS if p.startswith("configs/droploss/")]) == 12
    assert len([p for p in CONFIGS if p.startswith("configs/eqlv2/")]) == 5


@pytest.mark.parametrize("relpath", CONFIGS)
def test_tail_matches_the_paper(relpath):
    data = _lvis_v1()
    cats = sorted(data["categories"], key=lambda c: c["id"])  # contiguous ids 0..C-1
    stats = CategoryStats(
        instance_counts=[c["instance_count"] for c in cats],
        image_counts=[c["image_count"] for c in cats],
        num_images=data["num_images"],
        frequency=[c["frequency"] for c in cats],
    )
    cfg = load_config(os.path.join(REPO, relpath))
    clf = build_classifier(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES, stats)
    tail = {cats[j]["id"] for j in clf.tail.nonzero().flatten().tolist()}
    expected = _expected_tail(relpath, data)
    assert tail == expected
    labels = {c["id"]: c["frequency"] for c in cats}
    if relpath.startswith("configs/droploss/"):
        # eq. 7: every rare and common category, no frequent one
        assert {labels[i] for i in tail} == {"r", "c"}
        assert len(tail) == sum(c["frequency"] != "f" for c in cats)
