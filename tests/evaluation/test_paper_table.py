"""python -m lt_d2.evaluation.paper_table: the record of published numbers, run-to-row
matching and the printed table, on OUTPUT_DIRs written the way train_net.py writes them."""

import json
import math
import os

import pytest
import yaml
from detectron2.config import get_cfg

from lt_d2.engine import LTTrainer
from lt_d2.evaluation.paper_table import PAPER_RESULTS, load_paper_results, main, read_run

from helpers.config import DEMO_CONFIG, REPO, load_config
from helpers.training import evaluation_results

EQLV2 = os.path.join(REPO, "configs", "eqlv2", "eqlv2_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml")
EFL = os.path.join(REPO, "configs", "efl", "efl_atss_improved_R_50_FPN_2x_lvis_v1.yaml")
EFL_STS = os.path.join(REPO, "configs", "efl", "efl_atss_sts_R_50_FPN_2x_lvis_v1.yaml")
DROPLOSS = os.path.join(REPO, "configs", "droploss", "droploss_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml")
SOFTMAX = os.path.join(REPO, "configs", "eqlv2", "softmax_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml")
BAGS = os.path.join(REPO, "configs", "eqlv2", "bags_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml")


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
    # each row's configs train and test on the dataset the row names
    datasets = {"LVIS v0.5": "lvis_v0.5_val", "LVIS v1.0": "lvis_v1_val", "1203": "lvis_v1_val"}
    for row in record["rows"]:
        wanted = [d for key, d in datasets.items() if key in row["dataset"]] or ["coco_2017_val"]
        for config_file in row["configs"] + [row.get("starts_from") or row["configs"][0]]:
            cfg = load_config(os.path.join(REPO, config_file))
            assert list(cfg.DATASETS.TEST) == wanted[:1], (row["row"], config_file)
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
    assert rows[runs[0]][:-1] == [
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
    assert rows[runs[2]][5:9] == ["-"] * 4  # a box-only detector: no mask metrics
    assert rows[runs[3]][:-1] == ["(no paper row)", "44.3", "-", "-", "-", "53.9", "-", "-", "-"]
    # the scaled schedule, beside the numbers: every key with the run's and the config's value
    assert rows[runs[0]][-1].split("; ") == [
        "SOLVER.BASE_LR = 0.01 (config: 0.02)",
        "SOLVER.IMS_PER_BATCH = 8 (config: 16)",
        "SOLVER.MAX_ITER = 180000 (config: 75000)",
        "SOLVER.STEPS = [120000, 160000] (config: [50000, 68750])",
    ]
    assert rows[runs[2]][-1] == ""  # the config's own recipe
    table = main(runs)  # plain text: the same content, with the notes below the table
    assert (
        f"{runs[1]}: no paper row; closest config "
        "configs/eqlv2/eqlv2_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml differs in 1 keys: "
        "MODEL.CLASSIFIER.EQLV2.GAMMA = 10.0 (config: 12.0)"
    ) in table


def test_missing_files_and_unfinished_runs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        main([str(tmp_path)])
    run = _write_run(tmp_path / "run", DEMO_CONFIG, {})
    with open(os.path.join(run, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 19, "total_loss": 1.5}) + "\n")
    with pytest.raises(ValueError, match="no evaluation result"):
        main([run])


def test_learning_rate_and_warm_up_are_reported_beside_the_numbers(tmp_path):
    """A DropLoss run at the printed LR 0.2 and an EFL stabilized-settings run with 1000
    warm-up iterations keep their rows, with the difference in the row's line."""
    warmup = load_config(EFL_STS).SOLVER.WARMUP_ITERS
    runs = [
        _write_run(tmp_path / "drop", DROPLOSS, {"bbox/AP": 20.0}, "SOLVER.BASE_LR", 0.2),
        _write_run(tmp_path / "sts", EFL_STS, {"bbox/AP": 26.0}, "SOLVER.WARMUP_ITERS", 1000),
    ]
    rows = _markdown_rows(main([*runs, "--markdown"]))
    assert rows[runs[0]][0] == "DropLoss Table 2 (bottom, LVIS v1.0), DropLoss, without RFS"
    assert rows[runs[0]][-1] == "SOLVER.BASE_LR = 0.2 (config: 0.02)"
    assert rows[runs[1]][0] == "EFL Table 5, row 2: EFL + STS"
    assert rows[runs[1]][-1] == f"SOLVER.WARMUP_ITERS = 1000 (config: {warmup})"


def test_precomputed_proposals_are_reported_beside_the_numbers(tmp_path):
    """Libra R-CNN's ablations run on pre-computed proposals: such a run keeps its row."""
    ibs = os.path.join(REPO, "configs", "libra", "libra-ibs_faster_rcnn_R_50_FPN_1x_coco.yaml")
    run = _write_run(
        tmp_path / "ibs",
        ibs,
        {"bbox/AP": 36.5},
        "MODEL.LOAD_PROPOSALS",
        True,
        "MODEL.PROPOSAL_GENERATOR.NAME",
        "PrecomputedProposals",
        "DATASETS.PROPOSAL_FILES_TRAIN",
        "('rpn/box_proposals_train.pkl',)",
    )  # fmt: skip
    rows = _markdown_rows(main([run, "--markdown"]))
    assert rows[run][:2] == ["Libra Table 3, row 2: + IoU-balanced sampling", "36.5 (36.8, -0.3)"]
    assert rows[run][-1].split("; ") == [
        "DATASETS.PROPOSAL_FILES_TRAIN = ['rpn/box_proposals_train.pkl'] (config: [])",
        "MODEL.LOAD_PROPOSALS = True (config: False)",
        "MODEL.PROPOSAL_GENERATOR.NAME = 'PrecomputedProposals' (config: 'RPN')",
    ]


def _stage_one(path, config_file, ap):
    """A finished first-stage run with its final model file."""
    run = _write_run(path, config_file, {"bbox/AP": ap})
    weights = os.path.join(run, "model_final.pth")
    open(weights, "wb").close()
    return weights


def test_second_stage_is_matched_by_the_run_it_started_from(tmp_path):
    """BAGS re-trained on an EQL v2 model is EQL v2 Table 6, not Table 1 (g) (on softmax)."""
    softmax = _stage_one(tmp_path / "softmax", SOFTMAX, 16.0)
    eqlv2 = _stage_one(tmp_path / "eqlv2", EQLV2, 24.0)
    metrics = {"bbox/AP": 24.0, "segm/AP": 23.5}
    runs = [
        _write_run(tmp_path / "on_softmax", BAGS, metrics, "MODEL.WEIGHTS", softmax),
        _write_run(tmp_path / "on_eqlv2", BAGS, metrics, "MODEL.WEIGHTS", eqlv2),
        _write_run(tmp_path / "on_file", BAGS, metrics, "MODEL.WEIGHTS", "/elsewhere/m.pth"),
    ]
    rows = _markdown_rows(main([*runs, "--markdown"]))
    assert rows[runs[0]][0] == "EQLv2 Table 1, (g) BAGS"
    assert rows[runs[0]][-1] == (
        f"MODEL.WEIGHTS: started from {tmp_path / 'softmax'} (recipe: "
        "configs/eqlv2/softmax_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml)"
    )
    assert rows[runs[1]][0] == "EQLv2 Table 6, BAGS, EQL v2 pre-trained"
    assert rows[runs[1]][1] == "24.0 (24.5, -0.5)"  # Table 6: box AP 24.5
    assert rows[runs[1]][-1] == (
        f"MODEL.WEIGHTS: started from {tmp_path / 'eqlv2'} (recipe: "
        "configs/eqlv2/eqlv2_mask_rcnn_R_50_FPN_1x_lvis_v1.yaml)"
    )
    # weights that are no run's model: the row cannot be told, and the table says so
    assert "not another run's model" in rows[runs[2]][-1]
    table = main([*runs, "--markdown"])
    assert f"- {runs[2]}: matches equally: EQLv2 Table 6, BAGS, EQL v2 pre-trained" in table


def _edit_config(run, edit):
    path = os.path.join(run, "config.yaml")
    with open(path) as f:
        config = yaml.safe_load(f)
    edit(config)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)


# Keys detectron2 main's config has and v0.6's lacks.
MAIN_ONLY_KEYS = ("DATALOADER.REPEAT_SQRT", "FLOAT32_PRECISION")


def test_keys_of_another_version_are_listed_not_compared(tmp_path):
    """A config.yaml written under the other detectron2 version (v0.6 here: detectron2 main's
    keys added; main here: them removed) with mixed precision, and one written by an lt_d2
    without a key and with another type of one (a value this version cannot take, here a
    string for a float): both keep their row."""
    on_main = "REPEAT_SQRT" in get_cfg().DATALOADER

    def newer(config):
        if on_main:  # a run written under v0.6
            del config["DATALOADER"]["REPEAT_SQRT"], config["FLOAT32_PRECISION"]
        else:  # a run written under main
            config["DATALOADER"]["REPEAT_SQRT"] = True
            config["FLOAT32_PRECISION"] = ""
        config["SOLVER"]["AMP"]["ENABLED"] = True

    def older(config):
        del config["MODEL"]["CLASSIFIER"]["EQLV2"]["GAMMA"]
        config["MODEL"]["CLASSIFIER"]["EQLV2"]["MU"] = "high"

    runs = [_write_run(tmp_path / name, EQLV2, {"bbox/AP": 24.0}) for name in ("newer", "older")]
    _edit_config(runs[0], newer)
    _edit_config(runs[1], older)
    table = main([*runs, "--markdown"])
    rows = _markdown_rows(table)
    assert rows[runs[0]][0] == rows[runs[1]][0] == "EQLv2 Table 1, (h) EQL v2"
    assert rows[runs[0]][-1] == "SOLVER.AMP.ENABLED = True (config: False)"
    assert rows[runs[1]][-1] == ""
    which = "not in the run" if on_main else "the run's, unknown here or typed otherwise"
    assert (
        f"- {runs[0]}: keys of another detectron2 / lt_d2 version, not compared: {which}: "
        + ", ".join(MAIN_ONLY_KEYS)
    ) in table
    assert (
        f"- {runs[1]}: keys of another detectron2 / lt_d2 version, not compared: the run's, "
        "unknown here or typed otherwise: MODEL.CLASSIFIER.EQLV2.MU; not in the run: "
        "MODEL.CLASSIFIER.EQLV2.GAMMA, MODEL.CLASSIFIER.EQLV2.MU"
    ) in table


def _append_metrics(run, *entries):
    with open(os.path.join(run, "metrics.json"), "a") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")


def test_a_second_run_in_one_output_dir_is_not_shown_with_the_first_runs_numbers(tmp_path):
    """detectron2 overwrites config.yaml and appends to metrics.json: a second run that stops
    before its evaluation must not show the first run's numbers under its own config."""
    run = _write_run(tmp_path / "reused", EQLV2, {"bbox/AP": 24.0})
    _append_metrics(run, {"iteration": 19, "total_loss": 2.0}, {"iteration": 39})
    with pytest.raises(ValueError, match="holds 2 training runs.*own OUTPUT_DIR"):
        main([run])
    # the second run evaluates: its numbers, the ones config.yaml belongs to
    _append_metrics(run, {"iteration": 59, "bbox/AP": 30.0})
    rows = _markdown_rows(main([run, "--markdown"]))
    assert rows[run][1] == "30.0 (24.2, +5.8)"


def test_a_resumed_run_keeps_its_evaluation(tmp_path):
    """A run resumed from its checkpoint continues after its first iterations: one run."""
    run = _write_run(tmp_path / "resumed", EQLV2, {"bbox/AP": 24.0})  # evaluated at 59
    _append_metrics(run, {"iteration": 49, "total_loss": 1.0}, {"iteration": 69})
    rows = _markdown_rows(main([run, "--markdown"]))
    assert rows[run][1] == "24.0 (24.2, -0.2)"


def test_runs_of_one_recipe_are_one_line_with_mean_and_spread(tmp_path):
    """DropLoss publishes means of 3 runs: 3 seeds of one recipe are one line."""
    aps = (23.0, 23.6, 24.2)  # mean 23.6; sample sd sqrt((0.6^2 + 0 + 0.6^2) / 2) = 0.6
    runs = [
        _write_run(tmp_path / f"seed{seed}", EQLV2, {"bbox/AP": ap}, "SEED", seed)
        for seed, ap in zip((1, 2, 3), aps)
    ]
    other = _write_run(tmp_path / "lr", EQLV2, {"bbox/AP": 20.0}, "SOLVER.BASE_LR", 0.01)
    rows = _markdown_rows(main([*runs, other, "--markdown"]))
    assert rows[f"{', '.join(runs)} (n = 3)"][:2] == [
        "EQLv2 Table 1, (h) EQL v2",
        "23.6 ± 0.6 (24.2, -0.6)",
    ]
    assert rows[other][1] == "20.0 (24.2, -4.2)"  # another schedule: its own line
    assert len(rows) == 2


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
        expected[cfg.OUTPUT_DIR] = (
            ["(no paper row)"]
            + [
                _fmt(results[task][m])
                for task in ("bbox", "segm")
                for m in ("AP", "APr", "APc", "APf")
            ]
            + [""]
        )
    rows = _markdown_rows(main([*runs, "--markdown"]))
    assert rows == expected


def test_a_run_with_keys_of_another_lt_d2_version_matches_its_config_row(tmp_path):
    # a RetinaNet EFL run whose config.yaml names the dense classifiers' sections EFL / FOCAL
    # (keys this lt_d2 does not have): the table lists the keys only one side has and matches
    # the run on the others
    new_scale = "MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.SCALE"
    other_scale = "MODEL.DENSE_CLASSIFIER.EFL.SCALE"
    cfg = load_config(
        os.path.join(REPO, "configs", "efl", "efl_retinanet_R_50_FPN_2x_lvis_v1.yaml")
    )
    dumped = cfg.dump().replace("EQUALIZED_FOCAL_LOSS:", "EFL:").replace("FOCAL_LOSS:", "FOCAL:")
    assert "    EFL:\n" in dumped and "    FOCAL:\n" in dumped
    (tmp_path / "config.yaml").write_text(dumped)
    (tmp_path / "metrics.json").write_text('{"bbox/AP": 20.0, "iteration": 179999}\n')
    run = read_run(str(tmp_path))
    assert other_scale in run.unknown and new_scale in run.absent
    table = main([str(tmp_path)])
    assert "EFL Table 6, RetinaNet + EFL" in table
    assert f"typed otherwise: {', '.join(run.unknown)}; not in the run:" in table
