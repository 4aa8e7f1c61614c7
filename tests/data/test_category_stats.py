"""CategoryStats against a hand-built LVIS-format annotation file.

The file has 120 training images and 6 categories whose counts sit on LVIS's r/c/f
boundaries (10 | 11 images, 100 | 101 images) and on BAGS's instance-group boundaries:

    category  images           instances                      LVIS  BAGS group
    apple     1..120 (120)     1 each + 1 extra on image 1: 121   f     2 [100, 1000)
    banana    1..11  (11)      2 each: 22                         c     1 [10, 100)
    cherry    1..10  (10)      1 each: 10                         r     1 [10, 100)
    date      5      (1)       3 on image 5: 3                    r     0 [0, 10)
    fig       1..100 (100)     1 each: 100                        c     2 [100, 1000)
    grape     1..101 (101)     1 each: 101                        f     2 [100, 1000)
"""

import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from lt_d2.data import CategoryStats, register_lvis_format
from lt_d2.data.stats_cli import main as stats_main

from helpers.config import REPO
from helpers.lvis import write_lvis_json

NAMES = ["apple", "banana", "cherry", "date", "fig", "grape"]
IMAGES = [120, 11, 10, 1, 100, 101]
INSTANCES = [121, 22, 10, 3, 100, 101]
FREQUENCY = ["f", "c", "r", "r", "c", "f"]
BAGS_GROUPS = [2, 1, 1, 0, 2, 2]
NUM_IMAGES = 120


def _hand_built_lvis(path) -> str:
    # (category id, image id, number of instances on that image)
    placements = (
        [(1, i, 1) for i in range(1, 121)]
        + [(1, 1, 1)]
        + [(2, i, 2) for i in range(1, 12)]
        + [(3, i, 1) for i in range(1, 11)]
        + [(4, 5, 3)]
        + [(5, i, 1) for i in range(1, 101)]
        + [(6, i, 1) for i in range(1, 102)]
    )
    annotations = []
    for cat, img, n in placements:
        for _ in range(n):
            annotations.append((img, cat, len(annotations) % 20, 2.0))
    categories = [
        {
            "name": NAMES[k],
            "synset": f"{NAMES[k]}.n.01",
            "synonyms": [NAMES[k]],
            "def": NAMES[k],
            "frequency": FREQUENCY[k],
            "image_count": IMAGES[k],
            "instance_count": INSTANCES[k],
        }
        for k in range(len(NAMES))
    ]
    return write_lvis_json(
        path / "hand_lvis_train.json",
        categories,
        annotations,
        num_images=NUM_IMAGES,
        image_size=32,
        box_size=4,
        url="http://localhost/hand/train/{:06d}.jpg",
    )


@pytest.fixture
def hand_dataset(tmp_path):
    """The hand-built file registered as 'lt_d2_test_hand_train'."""
    file = _hand_built_lvis(tmp_path)
    name = "lt_d2_test_hand_train"
    register_lvis_format(name, file, str(tmp_path))
    yield name, file
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _assert_hand_counts(stats: CategoryStats):
    assert stats.num_classes == 6
    assert stats.num_images == NUM_IMAGES
    assert stats.instance_count_array.tolist() == INSTANCES
    assert stats.image_count_array.tolist() == IMAGES
    assert stats.frequency_labels.tolist() == FREQUENCY
    assert list(stats.names) == NAMES


def test_from_lvis_json_reads_hand_counts(hand_dataset):
    stats = CategoryStats.from_lvis_json(hand_dataset[1])
    _assert_hand_counts(stats)
    assert stats.frequency_mask("r").tolist() == [False, False, True, True, False, False]
    assert stats.instance_groups().tolist() == BAGS_GROUPS
    np.testing.assert_allclose(stats.image_frequency, np.asarray(IMAGES) / 120.0)


def test_from_lvis_json_reads_a_counts_only_file(tmp_path):
    # a file holding only the categories and num_images (the shipped LVIS v1 counts' format)
    cats = [
        {"id": 2, "name": "b", "frequency": "r", "image_count": 3, "instance_count": 4},
        {"id": 1, "name": "a", "frequency": "f", "image_count": 150, "instance_count": 900},
    ]
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"source": "hand", "num_images": 200, "categories": cats}))
    stats = CategoryStats.from_lvis_json(str(path))
    assert stats.num_images == 200
    assert list(stats.names) == ["a", "b"]  # ordered by id
    assert stats.instance_count_array.tolist() == [900, 4]
    assert stats.image_count_array.tolist() == [150, 3]
    assert stats.frequency_labels.tolist() == ["f", "r"]
    path.write_text(json.dumps({"categories": cats}))
    with pytest.raises(ValueError, match="num_images"):
        CategoryStats.from_lvis_json(str(path))


def test_shipped_lvis_v1_counts_match_the_lvis_v1_train_facts():
    # LVIS v1 train: 1203 categories (337 rare, 461 common, 405 frequent), 100,170 images,
    # 1,270,141 instances (Gupta et al. 2019; lvis_v1_train.json)
    path = os.path.join(REPO, "datasets", "lvis_v1_train_category_counts.json")
    stats = CategoryStats.from_lvis_json(path)
    assert stats.num_classes == 1203 and stats.num_images == 100170
    assert int(stats.instance_count_array.sum()) == 1270141
    assert [int(stats.frequency_mask(g).sum()) for g in "rcf"] == [337, 461, 405]
    # LVIS's own r/c/f labels follow its image-count rule (<= 10, <= 100, > 100)
    derived = CategoryStats(
        instance_counts=stats.instance_count_array.tolist(),
        image_counts=stats.image_count_array.tolist(),
        num_images=stats.num_images,
    )
    assert derived.frequency_labels.tolist() == stats.frequency_labels.tolist()


def test_from_dataset_dicts_counts_annotations_and_agrees_with_json(hand_dataset):
    name, file = hand_dataset
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == NUM_IMAGES
    counted = CategoryStats.from_dataset_dicts(dicts, 6, names=NAMES)
    # counted from the annotations; frequency derived with LVIS's rule from the image counts
    _assert_hand_counts(counted)
    assert counted.to_dict() == CategoryStats.from_lvis_json(file).to_dict()


def test_from_dataset_uses_registered_metadata_and_json_cache(hand_dataset, tmp_path):
    name, file = hand_dataset
    cache_dir = tmp_path / "cache"
    stats = CategoryStats.from_dataset(name, cache_dir=str(cache_dir))
    _assert_hand_counts(stats)
    cache = cache_dir / f"{name}.category_stats.json"
    assert json.loads(cache.read_text())["instance_counts"] == INSTANCES
    # second call reads the cache (keyed by the annotation file's content, tests below)
    again = CategoryStats.from_dataset(name, cache_dir=str(cache_dir))
    assert again.to_dict() == stats.to_dict()
    assert CategoryStats.load(str(cache)).to_dict() == stats.to_dict()


def test_cache_is_keyed_by_content_so_a_copy_elsewhere_reuses_it(
    hand_dataset, tmp_path, monkeypatch, caplog
):
    name, file = hand_dataset
    cache_dir = str(tmp_path / "cache")
    stats = CategoryStats.from_dataset(name, cache_dir=cache_dir)
    cache = os.path.join(cache_dir, f"{name}.category_stats.json")
    written = os.stat(cache).st_mtime_ns
    # the same bytes on "another machine": another path, another modification time
    copy = tmp_path / "elsewhere" / "lvis_train.json"
    copy.parent.mkdir()
    copy.write_bytes(open(file, "rb").read())
    os.utime(copy, ns=(1, 1))
    register_lvis_format(name, str(copy), str(tmp_path))  # replaces the registration

    def not_read(*args, **kwargs):
        raise AssertionError("the annotation file was read although the cache matches it")

    monkeypatch.setattr(CategoryStats, "from_lvis_json", not_read)
    monkeypatch.setattr(CategoryStats, "save", not_read)
    with caplog.at_level(logging.INFO, logger="lt_d2"):
        again = CategoryStats.from_dataset(name, cache_dir=cache_dir)
    assert again.to_dict() == stats.to_dict()
    assert os.stat(cache).st_mtime_ns == written
    assert cache in caplog.text and "SHA-1" in caplog.text


def test_cache_is_written_atomically(hand_dataset, tmp_path, monkeypatch):
    name, _ = hand_dataset
    cache_dir = tmp_path / "cache"
    stats = CategoryStats.from_dataset(name, cache_dir=str(cache_dir))
    cache = cache_dir / f"{name}.category_stats.json"
    before = cache.read_text()

    def dump_half_then_fail(obj, f):  # a full disk or a killed process mid-write
        f.write(json.dumps(obj)[:10])
        raise OSError("No space left on device")

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        stats.save(str(cache), source={"sha1": "other", "size": 1})
    assert cache.read_text() == before  # the reader still sees the whole old file
    assert os.listdir(cache_dir) == [cache.name]  # and no temporary file is left


def test_dataset_without_annotation_file_is_loaded_once_and_not_cached(tmp_path):
    name = "lt_d2_test_dicts_only"
    loads = []

    def load():
        loads.append(1)
        return [
            {"file_name": f"{i}.jpg", "annotations": [{"category_id": i % 2}]} for i in range(3)
        ]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    try:
        stats = CategoryStats.from_dataset(name, cache_dir=str(tmp_path))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert stats.instance_count_array.tolist() == [2, 1] and stats.num_images == 3
    assert len(loads) == 1  # counted from one load, not fingerprinted by another
    assert os.listdir(tmp_path) == []


def test_damaged_cache_names_the_file_and_the_fix(hand_dataset, tmp_path):
    name, _ = hand_dataset
    cache = tmp_path / f"{name}.category_stats.json"
    cache.write_text('{"instance_counts": [1, 2')
    with pytest.raises(ValueError, match=r"category_stats\.json is not valid JSON.*delete it"):
        CategoryStats.from_dataset(name, cache_dir=str(tmp_path))


def test_stats_cli_prints_table_sorted_by_instances(hand_dataset, capsys):
    stats_main(["--json", hand_dataset[1]])
    out = capsys.readouterr().out
    rows = [
        line.split() for line in out.splitlines() if line.split()[1:2] and line.split()[1] in NAMES
    ]
    assert [r[1] for r in rows] == ["apple", "grape", "fig", "banana", "cherry", "date"]
    assert [r[2:5] for r in rows][0] == ["121", "120", "f"]
    totals = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line[:2] in ("r ", "c ", "f ")
    }
    # r: cherry + date; c: banana + fig; f: apple + grape  (categories, instances, images)
    assert totals == {"r": ["2", "13", "11"], "c": ["2", "122", "111"], "f": ["2", "222", "221"]}


def test_stats_cli_on_registered_dataset(hand_dataset, capsys):
    stats_main([hand_dataset[0]])
    out = capsys.readouterr().out
    assert "training images: 120" in out


def test_stats_cli_unknown_dataset():
    with pytest.raises(SystemExit, match="not registered"):
        stats_main(["no_such_dataset_xyz"])


def test_stats_cli_missing_or_malformed_json(tmp_path):
    with pytest.raises(SystemExit, match=r"nope\.json"):
        stats_main(["--json", str(tmp_path / "nope.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    with pytest.raises(SystemExit, match=r"bad\.json"):
        stats_main(["--json", str(bad)])
