"""The synthetic demo dataset: LVIS v1 format, long tail, determinism, registration, errors."""

import json
import multiprocessing
import os
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from lvis import LVIS, LVISEval, LVISResults
from PIL import Image

from lt_d2.compat import numpy_aliases_for_lvis
from lt_d2.data import read_lvis_json, register_demo_datasets, register_lvis_format
from lt_d2.data.demo_dataset import (
    demo_category_specs,
    demo_json_path,
    ensure_demo_dataset,
    generate_demo_dataset,
)
from lt_d2.data.demo_dataset import main as demo_main

TINY = {"num_train": 16, "num_val": 8, "num_classes": 4, "image_size": 64}


def _lvis_frequency(image_count: int) -> str:
    """LVIS v1 split by training images: rare 1-10, common 11-100, frequent > 100."""
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


@pytest.fixture(scope="module")
def default_json(tmp_path_factory):
    """The default-size demo annotations (json only; images are not needed here)."""
    root = str(tmp_path_factory.mktemp("demo_default"))
    generate_demo_dataset(root, write_images=False)
    return root


@pytest.fixture
def registered_tiny(tmp_path):
    """A tiny demo dataset with images, registered as 'lt_d2_test_tiny_{train,val}'."""
    root = str(tmp_path / "tiny")
    generate_demo_dataset(root, seed=3, **TINY)
    names = []
    for split in ("train", "val"):
        name = f"lt_d2_test_tiny_{split}"
        register_lvis_format(name, demo_json_path(root, split), root)
        names.append(name)
    yield root, names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_default_size_loads_with_lvis_api_and_has_rare_common_frequent(default_json):
    train = LVIS(demo_json_path(default_json, "train"))
    val = LVIS(demo_json_path(default_json, "val"))
    assert len(train.imgs) == 256 and len(val.imgs) == 64
    cats = [train.cats[k] for k in sorted(train.cats)]
    assert [c["id"] for c in cats] == list(range(1, 11))
    # counts recomputed here from the annotations
    images, instances = defaultdict(set), defaultdict(int)
    for ann in train.anns.values():
        images[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    for c in cats:
        assert c["image_count"] == len(images[c["id"]])
        assert c["instance_count"] == instances[c["id"]]
        assert c["frequency"] == _lvis_frequency(c["image_count"])
    freq = [c["frequency"] for c in cats]
    assert freq.count("f") >= 2 and freq.count("c") >= 2 and freq.count("r") >= 2
    # long tail: image counts never increase from the first to the last category
    counts = [c["image_count"] for c in cats]
    assert counts == sorted(counts, reverse=True) and counts[-1] >= 1
    # val: same categories (with the training counts, as LVIS), every one present
    assert val.dataset["categories"] == train.dataset["categories"]
    assert {a["category_id"] for a in val.anns.values()} == set(range(1, 11))
    # exhaustive annotations: negatives are exactly the absent categories
    for lvis in (train, val):
        for img_id, img in lvis.imgs.items():
            present = {a["category_id"] for a in lvis.img_ann_map[img_id]}
            assert present, "every image holds at least one object"
            assert set(img["neg_category_ids"]) == set(range(1, 11)) - present
            assert img["not_exhaustive_category_ids"] == []


def test_perfect_detections_score_ap_one_with_lvis_eval(default_json):
    """lvis-api evaluates the val file end to end, rare categories included."""
    gt = LVIS(demo_json_path(default_json, "val"))
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt.anns.values()
    ]
    ev = LVISEval(gt, LVISResults(gt, dets), iou_type="bbox")
    with numpy_aliases_for_lvis():  # lvis 0.5.3 under numpy >= 1.24
        ev.run()
    for key in ("AP", "APr", "APc", "APf"):
        assert ev.results[key] == pytest.approx(1.0), key


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_demo_dataset(a, seed=5, **TINY)
    generate_demo_dataset(b, seed=5, **TINY)
    generate_demo_dataset(c, seed=6, **TINY)
    files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
    assert len(files) == 16 + 8 + 2
    for rel in files:
        with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
            assert fa.read() == fb.read(), rel
    with open(demo_json_path(a, "train")) as fa, open(demo_json_path(c, "train")) as fc:
        assert fa.read() != fc.read()


def test_registered_loader_gives_polygons_inside_boxes_and_painted_pixels(registered_tiny):
    root, (train_name, val_name) = registered_tiny
    specs = demo_category_specs(num_classes=4)
    meta = MetadataCatalog.get(train_name)
    assert meta.thing_classes == [s["name"] for s in specs]
    assert meta.evaluator_type == "lvis" and meta.json_file == demo_json_path(root, "train")
    raw = json.load(open(demo_json_path(root, "train")))
    assert [c["image_count"] for c in meta.class_image_count] == [
        c["image_count"] for c in raw["categories"]
    ]
    dicts = DatasetCatalog.get(train_name) + DatasetCatalog.get(val_name)
    assert len(dicts) == 24
    num_objects = 0
    for record in dicts:
        assert os.path.isfile(record["file_name"]), record["file_name"]
        pixels = np.asarray(Image.open(record["file_name"]).convert("RGB"), np.float64)
        assert pixels.shape == (record["height"], record["width"], 3)
        for obj in record["annotations"]:
            x, y, w, h = obj["bbox"]
            assert 0 <= obj["category_id"] < 4
            for poly in obj["segmentation"]:
                xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
                assert xs.min() >= x - 1e-6 and xs.max() <= x + w + 1e-6
                assert ys.min() >= y - 1e-6 and ys.max() <= y + h + 1e-6
            # the pixels under the polygon carry the category's colour (jitter 25, noise 8)
            rle = mask_util.merge(mask_util.frPyObjects(obj["segmentation"], *pixels.shape[:2]))
            mask = mask_util.decode(rle).astype(bool)
            mean = pixels[mask].mean(axis=0)
            assert np.abs(mean - specs[obj["category_id"]]["rgb"]).max() < 35
            num_objects += 1
    assert num_objects >= 24


def test_register_demo_datasets_generates_on_first_load(tmp_path):
    root = str(tmp_path / "d2" / "lvis_demo")
    try:
        assert register_demo_datasets(root) == ["lvis_demo_train", "lvis_demo_val"]
        register_demo_datasets(root)  # twice: no error
        assert not os.path.exists(root)  # registering does not generate
        assert len(MetadataCatalog.get("lvis_demo_train").thing_classes) == 10
        val = DatasetCatalog.get("lvis_demo_val")
        assert len(val) == 64 and os.path.isfile(demo_json_path(root, "train"))
        assert MetadataCatalog.get("lvis_demo_train").image_root == root
        assert len(MetadataCatalog.get("lvis_demo_train").thing_classes) == 10
    finally:
        register_demo_datasets()  # back to the default root for the rest of the session


def _ensure_tiny(root):
    ensure_demo_dataset(root, seed=1, **TINY)


def test_concurrent_first_use_is_safe(tmp_path):
    root = str(tmp_path / "race" / "lvis_demo")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ensure_tiny, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert os.listdir(tmp_path / "race") == ["lvis_demo"]  # no temporary folders left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(root).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert len(LVIS(demo_json_path(root, "val")).imgs) == 8
    assert len(os.listdir(os.path.join(root, "train"))) == 16


def test_cli_regenerates_in_place(tmp_path, capsys):
    root = str(tmp_path / "cli")
    args = ["--root", root, "--num-train", "16", "--num-val", "8"]
    demo_main(args + ["--seed", "1"])
    first = open(demo_json_path(root, "train")).read()
    demo_main(args + ["--seed", "2"])
    assert open(demo_json_path(root, "train")).read() != first
    assert sorted(os.listdir(tmp_path)) == ["cli"]
    assert "wrote" in capsys.readouterr().out


def test_missing_annotation_file_names_file_and_fix(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*python -m lt_d2\.data\.demo_dataset"):
        read_lvis_json(missing)
    register_lvis_format("lt_d2_test_missing", missing, str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match=r"nope\.json"):
            DatasetCatalog.get("lt_d2_test_missing")
    finally:
        DatasetCatalog.remove("lt_d2_test_missing")
        MetadataCatalog.remove("lt_d2_test_missing")


def test_partial_demo_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "lvis_demo"
    root.mkdir()
    (root / "something").write_text("user data")
    with pytest.raises(FileNotFoundError, match="lvis_demo_train.json.*--root"):
        ensure_demo_dataset(str(root), **TINY)
    assert os.listdir(root) == ["something"]


def _valid_tiny_json(tmp_path) -> dict:
    root = str(tmp_path / "src")
    generate_demo_dataset(root, write_images=False, **TINY)
    return json.load(open(demo_json_path(root, "train")))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {k: v for k, v in d.items() if k != "categories"}, "'categories' list"),
        (
            lambda d: {
                **d,
                "images": [{k: v for k, v in d["images"][0].items() if k != "neg_category_ids"}]
                + d["images"][1:],
            },
            "neg_category_ids",
        ),
        (
            lambda d: {**d, "categories": [{**c, "id": c["id"] + 1} for c in d["categories"]]},
            "category ids must be exactly 1..4",
        ),
        (
            lambda d: {
                **d,
                "annotations": [{**d["annotations"][0], "segmentation": [[1, 2, 3, 4]]}],
            },
            "at least 3 points",
        ),
    ],
)
def test_malformed_annotation_file_names_file_and_problem(tmp_path, corrupt, message):
    data = corrupt(_valid_tiny_json(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ValueError, match="bad.json") as err:
        read_lvis_json(str(bad))
    assert message in str(err.value)


def test_malformed_file_does_not_break_registration_but_fails_on_load(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    register_lvis_format("lt_d2_test_bad", str(bad), str(tmp_path))  # e.g. on import
    try:
        with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON"):
            DatasetCatalog.get("lt_d2_test_bad")
    finally:
        DatasetCatalog.remove("lt_d2_test_bad")
        MetadataCatalog.remove("lt_d2_test_bad")
