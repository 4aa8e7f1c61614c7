"""Category statistics come from the data they describe: a cached set computed from another
version of the annotation file is recomputed, with a log line naming the file; a registered
dataset whose files are absent points to datasets/README.md."""

import logging
import os

import pytest
from detectron2.data import MetadataCatalog

from lt_d2.data import CategoryStats
from lt_d2.data.stats_cli import main as stats_main

from helpers.lvis import write_tiny_lvis_json


def test_stale_category_stats_cache_is_recomputed_with_a_log_line(tiny_dataset, tmp_path, caplog):
    file = tiny_dataset("lt_ue_stats", ["a", "b"], [(1, 1), (2, 1), (3, 2)])
    cache_dir = str(tmp_path / "cache")
    first = CategoryStats.from_dataset("lt_ue_stats", cache_dir=cache_dir)
    assert first.instance_count_array.tolist() == [2, 1]
    # the annotation file changes (one more 'b' on every image): the cache is stale
    write_tiny_lvis_json(file, ["a", "b"], [(1, 1), (2, 1), (3, 2), (1, 2), (2, 2)])
    with caplog.at_level(logging.INFO, logger="lt_d2"):
        second = CategoryStats.from_dataset("lt_ue_stats", cache_dir=cache_dir)
    assert second.instance_count_array.tolist() == [2, 3]
    assert second.image_count_array.tolist() == [2, 3]
    assert "recomputing" in caplog.text and file in caplog.text


def test_stats_cli_on_a_registered_dataset_without_files_points_to_the_readme():
    json_file = MetadataCatalog.get("lvis_v1_train").json_file
    if os.path.exists(json_file):
        pytest.skip(f"{json_file} exists here")
    with pytest.raises(SystemExit, match=r"lvis_v1_train.*datasets/README\.md"):
        stats_main(["lvis_v1_train"])
