"""Datasets are checked before the first iteration: a malformed LVIS-format json names the
file and the fault; missing training images are counted; a damaged test json, or a test set of
other categories, fails when the trainer is built, not after training."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from lt_d2.data import read_lvis_json, register_lvis_format
from lt_d2.engine import LTTrainer

from helpers.lvis import write_tiny_lvis_json


def test_annotation_category_outside_the_categories_names_the_json(tmp_path):
    file = write_tiny_lvis_json(tmp_path / "bad_ids.json", ["a", "b"], [(1, 1), (2, 3)])
    with pytest.raises(ValueError, match=r"bad_ids\.json.*category_id outside.*1\.\.2"):
        read_lvis_json(file)


def test_missing_image_files_are_counted_before_training(tiny_dataset, instant_cfg):
    names = [f"c{k}" for k in range(10)]
    tiny_dataset("lt_ue_missing", names, [(1, 1), (2, 2), (3, 3)], images_present=[2])
    cfg = instant_cfg("DATASETS.TRAIN", "('lt_ue_missing',)")
    with pytest.raises(FileNotFoundError, match=r"2 of the 3 images.*lt_ue_missing\.json.*000001"):
        LTTrainer.build_train_loader(cfg)


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
