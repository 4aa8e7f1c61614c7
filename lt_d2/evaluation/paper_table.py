"""Paper-vs-run tables: each run's final LVIS / COCO metrics beside the published row of its
config.

    python -m lt_d2.evaluation.paper_table OUTPUT_DIR [OUTPUT_DIR ...] [--markdown]

The published numbers live in ``paper_results.json`` beside this module: one entry per paper
table row (paper, table, row, dataset, box and mask AP / APr / APc / APf where published) with
the config files under ``configs/`` that reproduce it.

How a run finds its row. detectron2 writes the *merged* config to ``OUTPUT_DIR/config.yaml``
(no trace of the file it came from), so a run is matched by its recipe: every key of its
config.yaml is compared with the same key of each row's config file, merged the way
train_net.py merges it (``get_cfg`` + ``add_lt_config`` + ``merge_lt_config``), leaving out
the keys in :data:`RUN_ENVIRONMENT_KEYS` (paths, workers, seeds, logging periods, diagnostics
and the schedule's length and batch size, which users scale to their machines). A run matches
a row when nothing else differs; a run that matches no row (the demo, a modified recipe) is
listed with its own numbers, and the closest config with the keys that differ is reported
below the table. A schedule that differs from the row's config is reported there too.

The final metrics are the last evaluation in ``OUTPUT_DIR/metrics.json`` (the lines
detectron2's JSONWriter writes after an evaluation: ``bbox/AP``, ``bbox/APr``, ...,
``segm/AP``, ...). ``--eval-only`` runs write no metrics.json and cannot be listed.
"""

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = [
    "RUN_ENVIRONMENT_KEYS",
    "METRICS",
    "RunResult",
    "load_paper_results",
    "flatten",
    "recipe",
    "read_run",
    "match_runs",
    "format_table",
    "main",
]

PAPER_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.json")

# Keys that describe where and how fast a run was made, not which recipe it trained: left out
# of the comparison (a prefix ending in "." covers a whole node).
RUN_ENVIRONMENT_KEYS = (
    "OUTPUT_DIR",
    "SEED",
    "CUDNN_BENCHMARK",
    "VIS_PERIOD",
    "VERSION",
    "GLOBAL.",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.REFERENCE_WORLD_SIZE",
    "TEST.EVAL_PERIOD",
    "TEST.FIXED_AP.",
    "DIAGNOSTICS.",
    "MODEL.GRADIENT_STATS.",
)
# Keys whose difference is reported (not a mismatch): the schedule.
SCHEDULE_KEYS = ("SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER")

# (task, metric) columns of the table
METRICS = tuple((task, m) for task in ("bbox", "segm") for m in ("AP", "APr", "APc", "APf"))


def load_paper_results(path: str = PAPER_RESULTS) -> dict:
    """The record of published numbers, checked for the fields the table reads."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    for i, row in enumerate(record.get("rows", [])):
        missing = {"paper", "table", "row", "configs"} - set(row)
        if missing or row["paper"] not in record["papers"]:
            raise ValueError(
                f"{path}: row {i} needs 'paper' (one of {sorted(record['papers'])}), 'table', "
                f"'row' and 'configs'; missing {sorted(missing)}"
            )
        for task in ("bbox", "segm"):
            values = row.get(task, {})
            if not isinstance(values, dict) or not all(
                isinstance(v, (int, float)) for v in values.values()
            ):
                raise ValueError(
                    f"{path}: row {i} ({row['paper']} Table {row['table']}, {row['row']}): "
                    f"'{task}' must map metric names to numbers, got {values!r}"
                )
    return record


def flatten(node: dict, prefix: str = "") -> Dict[str, object]:
    """Nested config dict -> {"A.B.C": value}."""
    out: Dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe(config: Dict[str, object]) -> Dict[str, object]:
    """A flattened config without :data:`RUN_ENVIRONMENT_KEYS`."""

    def ignored(key: str) -> bool:
        return any(
            key == k or (k.endswith(".") and key.startswith(k)) for k in RUN_ENVIRONMENT_KEYS
        )

    return {k: v for k, v in config.items() if not ignored(k)}


def _config_of_file(config_file: str) -> Dict[str, object]:
    """A config file merged as train_net.py merges it, flattened (values as config.yaml
    holds them: through ``cfg.dump()``)."""
    from detectron2.config import get_cfg

    from lt_d2.config import add_lt_config, merge_lt_config

    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(cfg, config_file)
    return flatten(yaml.safe_load(cfg.dump()))


def _final_metrics(path: str, test_datasets: Sequence[str]) -> Dict[str, float]:
    """The last evaluation in a detectron2 metrics.json (JSON lines): {"bbox/AP": ...}."""
    # with several test sets detectron2 prefixes each result with the dataset's name
    prefix = f"{test_datasets[0]}/" if len(test_datasets) > 1 else ""
    last = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                entry = json.loads(line)
                if f"{prefix}bbox/AP" in entry:
                    last = entry
    if last is None:
        raise ValueError(
            f"{path} holds no evaluation result ('{prefix}bbox/AP'): the run has not finished "
            f"its final evaluation (TEST.EVAL_PERIOD / end of training)"
        )
    return {
        k[len(prefix) :]: float(v)
        for k, v in last.items()
        if k.startswith(prefix) and k[len(prefix) :].split("/")[0] in ("bbox", "segm")
    }


@dataclass
class RunResult:
    """One OUTPUT_DIR: its flattened config, final metrics and (after matching) paper row."""

    output_dir: str
    config: Dict[str, object]
    metrics: Dict[str, float]
    row: Optional[dict] = None
    notes: List[str] = field(default_factory=list)


def read_run(output_dir: str) -> RunResult:
    """Read ``OUTPUT_DIR/config.yaml`` and the final metrics of ``OUTPUT_DIR/metrics.json``."""
    paths = [os.path.join(output_dir, n) for n in ("config.yaml", "metrics.json")]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(
                f"{p} not found: pass the OUTPUT_DIR of a train_net.py run (it writes "
                f"config.yaml at start and metrics.json with the final evaluation)"
            )
    with open(paths[0], encoding="utf-8") as f:
        config = flatten(yaml.safe_load(f))
    metrics = _final_metrics(paths[1], config.get("DATASETS.TEST") or [""])
    return RunResult(output_dir=output_dir, config=config, metrics=metrics)


def _differences(a: Dict[str, object], b: Dict[str, object]) -> List[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def match_runs(runs: Sequence[RunResult], record: dict, repo_root: str) -> None:
    """Attach to each run the record row whose config has the run's recipe (in place), with
    notes on schedule differences or, without a match, on the closest config."""
    candidates: List[Tuple[dict, str, Dict[str, object]]] = []
    for row in record["rows"]:
        for config_file in row["configs"]:
            path = os.path.join(repo_root, config_file)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} (a config of the paper record) not found: pass --repo-root, the "
                    f"lt_d2 checkout holding configs/"
                )
            candidates.append((row, config_file, _config_of_file(path)))
    for run in runs:
        run_recipe = recipe(run.config)
        best = None
        for row, config_file, cfg in candidates:
            diffs = _differences(run_recipe, recipe(cfg))
            if best is None or len(diffs) < len(best[3]):
                best = (row, config_file, cfg, diffs)
        row, config_file, cfg, diffs = best
        if diffs:
            shown = ", ".join(diffs[:5]) + (", ..." if len(diffs) > 5 else "")
            run.notes.append(
                f"no paper row; closest config {config_file} differs in {len(diffs)} keys: {shown}"
            )
            continue
        run.row = row
        for key in SCHEDULE_KEYS:
            if run.config.get(key) != cfg.get(key):
                run.notes.append(
                    f"{key} = {run.config.get(key)} (the config of the paper row: {cfg.get(key)})"
                )


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _cell(run: RunResult, task: str, metric: str) -> str:
    """'run (paper, run - paper)', or the run's value alone without a published one."""
    ours = run.metrics.get(f"{task}/{metric}")
    paper = (run.row or {}).get(task, {}).get(metric)
    if paper is None:
        return _fmt(ours)
    if ours is None:
        return f"- ({paper:.1f})"
    return f"{_fmt(ours)} ({paper:.1f}, {ours - paper:+.1f})"


def format_table(runs: Sequence[RunResult], markdown: bool = False) -> str:
    """One line per run: its paper row and, per metric, "run (paper, difference)"."""
    header = ["run", "paper row"] + [
        f"{'box' if task == 'bbox' else 'mask'} {m}" for task, m in METRICS
    ]
    lines = []
    for run in runs:
        row = run.row
        name = f"{row['paper']} Table {row['table']}, {row['row']}" if row else "(no paper row)"
        lines.append([run.output_dir, name] + [_cell(run, t, m) for t, m in METRICS])
    notes = [f"{run.output_dir}: {note}" for run in runs for note in run.notes]
    legend = "Cells: run (paper, run - paper) where the paper publishes the metric."
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        out += ["", legend] + [f"- {n}" for n in notes]
    else:
        widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + lines]
        out += ["", legend] + notes
    return "\n".join(out)


def _default_repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m lt_d2.evaluation.paper_table",
        description="Each run's final metrics beside the published row of its config.",
    )
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--repo-root",
        default=_default_repo_root(),
        help="the lt_d2 checkout whose configs/ the record names (default: this package's)",
    )
    parser.add_argument("--record", default=PAPER_RESULTS, help="the published-numbers record")
    args = parser.parse_args(argv)
    runs = [read_run(d) for d in args.output_dirs]
    match_runs(runs, load_paper_results(args.record), args.repo_root)
    table = format_table(runs, markdown=args.markdown)
    print(table)
    return table


if __name__ == "__main__":
    main()
