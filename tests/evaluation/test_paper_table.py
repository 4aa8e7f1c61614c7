"""python -m lt_d2.evaluation.paper_table: the record of published numbers, run-to-row
matching and the printed table, on OUTPUT_DIRs written the way train_net.py writes them."""

import json
import math
import os

import pytest

from lt_d2.engine import LTTrainer
from lt_d2.evaluation.paper_table import PAPER_RESULTS, load_paper_results, main

from helpers.config import DEMO_CONFIG, REPO, load_config
from helpers.training import evaluation_results

EQLV2 = os.path.join(REPO, "configs", "eqlv2", "eqlv2_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml")
EFL = os.path.join(REPO, "configs", "efl", "efl_atss_improved_R_50_FPN_2x_lvis_v1.yaml")


def _write_run(path, config_file, metrics, *opts):
    """An OUTPUT_DIR as train_net.py leaves it: config.yaml (default_setup writes cfg.dump())
    and metrics.json (JSONWriter: one JSON object per line, the evaluation's scalars in the
    line of the iteration after which it ran)."""
    os.makedirs(path)
    cfg = load_config(config_file, "OUTPUT_DIR", str(path), *opts)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    with open(os.path.join(path, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 19, "total_loss": 1.5, "lr": 0.02}) + "\n")
        f.write(json.dumps({"iteration": 39, "total_loss": 1.2, "bbox/AP": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 59, "total_loss": 1.1, **metrics}) + "\n")
    return str(path)


def _markdown_rows(table):
    """{run: [cells after the run column]} of a Markdown table."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| run "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_record_rows_name_existing_configs_and_published_metrics():
    record = load_paper_results(PAPER_RESULTS)
    assert len(record["rows"]) >= 40
    for row in record["rows"]:
        for config_file in row["configs"]:
            assert os.path.isfile(os.path.join(REPO, config_file)), config_file
        values = [v for task in ("bbox", "segm") for v in row.get(task, {}).values()]
        assert values and all(0.0 <= v <= 100.0 for v in values), row
    by_config = {c: r for r in record["rows"] for c in r["configs"]}
    # spot checks against the papers' tables, read by hand
    eqlv2 = by_config["configs/eqlv2/eqlv2_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml"]
    assert (eqlv2["table"], eqlv2["row"]) == ("1", "(h) EQL v2")
    assert eqlv2["segm"] == {"AP": 23.7, "APr": 14.9, "APc": 22.8, "APf": 28.6}
    assert eqlv2["bbox"] == {"AP": 24.2}
    drop = by_config["configs/droploss/droploss_rfs_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml"]
    assert drop["segm"] == {"AP": 22.3, "APr": 12.4, "APc": 22.3, "APf": 26.5}


def test_fabricated_runs_against_their_rows(tmp_path):
    eqlv2_metrics = {
        "bbox/AP": 25.0, "bbox/AP50": 40.0, "bbox/APr": 15.5, "bbox/APc": 24.0,
        "bbox/APf": 30.1, "segm/AP": 23.1, "segm/APr": 14.0, "segm/APc": 22.8,
        "segm/APf": 28.0,
    }  # fmt: skip
    runs = [
        # the EQL v2 recipe on 8 images per batch (the schedule scaled accordingly)
        _write_run(
            tmp_path / "eqlv2",
            EQLV2,
            eqlv2_metrics,
            "SOLVER.IMS_PER_BATCH",
            8,
            "SOLVER.BASE_LR",
            0.01,
            "SOLVER.MAX_ITER",
            180000,
            "SOLVER.STEPS",
            "(120000, 160000)",
            "DATALOADER.NUM_WORKERS",
            2,
        ),  # fmt: skip
        # the same recipe with another gamma: not the paper's row
        _write_run(
            tmp_path / "gamma10", EQLV2, eqlv2_metrics, "MODEL.CLASSIFIER.EQLV2.GAMMA", 10.0
        ),
        _write_run(
            tmp_path / "efl",
            EFL,
            {"bbox/AP": 27.9, "bbox/APr": 19.0, "bbox/APc": 26.1, "bbox/APf": 33.0},
        ),
        _write_run(tmp_path / "demo", DEMO_CONFIG, {"bbox/AP": 44.3, "segm/AP": 53.94}),
    ]
    rows = _markdown_rows(main([*runs, "--markdown"]))
    assert rows[runs[0]] == [
        "EQLv2 Table 1, (h) EQL v2",
        "25.0 (24.2, +0.8)",  # box AP: 25.0 - 24.2
        "15.5",  # box APr/c/f: not in the paper's table
        "24.0",
        "30.1",
        "23.1 (23.7, -0.6)",
        "14.0 (14.9, -0.9)",
        "22.8 (22.8, +0.0)",
        "28.0 (28.6, -0.6)",
    ]
    assert rows[runs[1]][:2] == ["(no paper row)", "25.0"]
    assert rows[runs[2]][:5] == [
        "EFL Table 2, EFL (Ours), ResNet-50",
        "27.9 (27.5, +0.4)",
        "19.0 (20.2, -1.2)",
        "26.1 (26.1, +0.0)",
        "33.0 (32.4, +0.6)",
    ]
    assert rows[runs[2]][5:] == ["-"] * 4  # a box-only detector: no mask metrics
    assert rows[runs[3]] == ["(no paper row)", "44.3", "-", "-", "-", "53.9", "-", "-", "-"]
    table = main(runs)  # plain text: the same content, with the notes below the table
    assert f"{runs[0]}: SOLVER.IMS_PER_BATCH = 8 (the config of the paper row: 16)" in table
    assert (
        f"{runs[1]}: no paper row; closest config "
        "configs/eqlv2/eqlv2_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml differs in 1 keys: "
        "MODEL.CLASSIFIER.EQLV2.GAMMA"
    ) in table


def test_missing_files_and_unfinished_runs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        main([str(tmp_path)])
    run = _write_run(tmp_path / "run", DEMO_CONFIG, {})
    with open(os.path.join(run, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 19, "total_loss": 1.5}) + "\n")
    with pytest.raises(ValueError, match="no evaluation result"):
        main([run])


def _fmt(v):
    return "-" if math.isnan(v) else f"{v:.1f}"


@pytest.mark.integration
def test_two_instant_demo_runs(instant_cfg, tmp_path):
    """Two real 20-iteration demo trainings (softmax and EQL v2), then the command."""
    runs, expected = [], {}
    for name in ("SoftmaxCE", "EQLv2"):
        cfg = instant_cfg("MODEL.CLASSIFIER.NAME", name).clone()
        cfg.defrost()
        cfg.OUTPUT_DIR = str(tmp_path / name)
        cfg.freeze()
        os.makedirs(cfg.OUTPUT_DIR)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())  # as detectron2's default_setup does
        trainer = LTTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        results = evaluation_results(trainer)
        runs.append(cfg.OUTPUT_DIR)
        expected[cfg.OUTPUT_DIR] = ["(no paper row)"] + [
            _fmt(results[task][m]) for task in ("bbox", "segm") for m in ("AP", "APr", "APc", "APf")
        ]
    rows = _markdown_rows(main([*runs, "--markdown"]))
    assert rows == expected
