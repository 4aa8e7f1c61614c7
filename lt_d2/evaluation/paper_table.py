"""Paper-vs-run tables: each run's final LVIS / COCO metrics beside the published row of its
config, with every way the run's recipe differs from that config.

    python -m lt_d2.evaluation.paper_table OUTPUT_DIR [OUTPUT_DIR ...] [--markdown]

The published numbers live in ``paper_results.json`` beside this module: one entry per paper
table row (paper, table, row, dataset, box and mask AP / APr / APc / APf where published), the
config files under ``configs/`` that reproduce it and, for a second training stage, the config
of the run whose model it starts from (``starts_from``).

How a run finds its row. detectron2 writes the *merged* config to ``OUTPUT_DIR/config.yaml``
(no trace of the file it came from), so a run is matched by its recipe. Both the run's
config.yaml and each row's config file are merged over ``get_cfg()`` + ``add_lt_config`` and
compared key by key, in four kinds of keys:

- the run's environment (:data:`RUN_ENVIRONMENT_KEYS`: paths, workers, seeds, logging and
  evaluation periods, diagnostics) is left out;
- the schedule, precision, starting weights and pre-computed proposals (:data:`REPORTED_KEYS`)
  are reported beside the numbers with both values, and do not decide the row;
- keys that only one side knows (a run written under another detectron2 or lt_d2 version) are
  not compared, and are listed;
- every other key must be equal: a run whose recipe differs in one of them has no paper row,
  and the closest config is reported with the keys that differ and both values.

Starting weights are traced: when ``MODEL.WEIGHTS`` is a file of another OUTPUT_DIR, that
run's config.yaml names the recipe the run started from, which must be the row's
``starts_from`` (EQL v2 Table 1 (g) and Table 6 train the same BAGS stage from a softmax and
from an EQL v2 model).

The final metrics are the last evaluation in ``OUTPUT_DIR/metrics.json`` (the lines
detectron2's JSONWriter writes after an evaluation: ``bbox/AP``, ``bbox/APr``, ...,
``segm/AP``, ...) of the last run in that file: detectron2 appends to metrics.json and
overwrites config.yaml, so a second run started in the same OUTPUT_DIR (its iterations start
again from the beginning; a resumed run continues from its checkpoint's iteration) owns
config.yaml, and an evaluation of an earlier run is refused. ``--eval-only`` runs write no
metrics.json and cannot be listed.

Runs of one recipe (same row, same recipe, starting weights of the same recipe; seeds and
paths may differ) are shown on one line as mean +- sample standard deviation over n runs.
"""

import argparse
import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = [
    "RUN_ENVIRONMENT_KEYS",
    "REPORTED_KEYS",
    "METRICS",
    "RunResult",
    "load_paper_results",
    "flatten",
    "read_config",
    "read_run",
    "match_runs",
    "format_table",
    "main",
]

PAPER_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.json")

# Keys that describe where a run was made, not which recipe it trained: left out of the
# comparison (a prefix ending in "." covers a whole node).
RUN_ENVIRONMENT_KEYS = (
    "OUTPUT_DIR",
    "SEED",
    "CUDNN_BENCHMARK",
    "VIS_PERIOD",
    "VERSION",
    "GLOBAL.",
    "MODEL.DEVICE",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
    "TEST.FIXED_AP.",
    "DIAGNOSTICS.",
    "MODEL.GRADIENT_STATS.",
)
# Keys whose difference is reported beside the numbers and does not decide the row: the
# schedule (users scale batch, LR, iterations, steps and warm-up to their machines), mixed
# precision, the starting weights (traced to their run when they are another run's model) and
# pre-computed proposals (the protocol of [Libra]'s ablations, docs/reproduction.md).
REPORTED_KEYS = (
    "MODEL.WEIGHTS",
    "MODEL.LOAD_PROPOSALS",
    "MODEL.PROPOSAL_GENERATOR.NAME",
    "DATASETS.PROPOSAL_FILES_TRAIN",
    "DATASETS.PROPOSAL_FILES_TEST",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.REFERENCE_WORLD_SIZE",
    "SOLVER.AMP.ENABLED",
)

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


def _in(key: str, keys: Sequence[str]) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


@dataclass
class LoadedConfig:
    """A config file merged over this installation's defaults, flattened (values as
    ``cfg.dump()`` writes them), with the keys only one side knows."""

    values: Dict[str, object]
    unknown: List[str]  # keys of the file this installation lacks or types otherwise
    absent: List[str]  # keys of this installation the file does not set (or set otherwise)


def read_config(path: str, strict: bool = False) -> LoadedConfig:
    """``path`` (with its ``_BASE_`` files) merged over ``get_cfg()`` + ``add_lt_config``.

    A key this installation does not have (a config.yaml written under another detectron2 or
    lt_d2 version) or whose value has another type here is not merged and is listed in
    ``unknown``; with ``strict`` it raises KeyError naming the file and the key instead (the
    record's own configs must merge cleanly).
    """
    from detectron2.config import CfgNode, get_cfg

    from lt_d2.config import add_lt_config

    cfg = get_cfg()
    add_lt_config(cfg)
    installed = flatten(yaml.safe_load(cfg.dump()))
    loaded = flatten(CfgNode.load_yaml_with_base(path, allow_unsafe=True))
    loaded.pop("_BASE_", None)
    unknown = []
    for key, value in loaded.items():
        if key not in installed:
            unknown.append(key)
            continue
        update: dict = {}
        node = update
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
        try:
            cfg.merge_from_other_cfg(CfgNode(update))
        except (KeyError, ValueError):  # yacs: a value of another type than this version's
            unknown.append(key)
    if strict and unknown:
        raise KeyError(
            f"{path}: keys {unknown} are not config keys of this detectron2 + lt_d2 (or have "
            f"another type): check their spelling against lt_d2/config/defaults.py"
        )
    values = flatten(yaml.safe_load(cfg.dump()))
    merged = set(loaded) - set(unknown)
    absent = sorted(k for k in installed if k not in merged)
    return LoadedConfig(values=values, unknown=sorted(unknown), absent=absent)


def _split_runs(entries: List[dict]) -> List[List[dict]]:
    """metrics.json lines -> one list per training run. A run starts again from its first
    iteration; a resumed run continues from its checkpoint, after its first logged iteration."""
    runs: List[List[dict]] = []
    first = None
    for entry in entries:
        it = entry.get("iteration")
        if runs and it is not None and first is not None:
            previous = runs[-1][-1].get("iteration")
            if previous is not None and it < previous and it <= first:
                runs.append([])
        if not runs:
            runs.append([])
            first = it
        runs[-1].append(entry)
    return runs


def _final_metrics(path: str, test_datasets: Sequence[str]) -> Tuple[Dict[str, float], int]:
    """The last evaluation in a detectron2 metrics.json (JSON lines) of the last run in it:
    ({"bbox/AP": ...}, number of runs in the file)."""
    # with several test sets detectron2 prefixes each result with the dataset's name
    prefix = f"{test_datasets[0]}/" if len(test_datasets) > 1 else ""
    with open(path, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    runs = _split_runs(entries)
    evaluations = [[e for e in run if f"{prefix}bbox/AP" in e] for run in runs]
    if not any(evaluations):
        raise ValueError(
            f"{path} holds no evaluation result ('{prefix}bbox/AP'): the run has not finished "
            f"its final evaluation (TEST.EVAL_PERIOD / end of training)"
        )
    if not evaluations[-1]:
        raise ValueError(
            f"{path} holds {len(runs)} training runs (the iterations start again at line "
            f"{len(entries) - len(runs[-1]) + 1}); the last one, which config.yaml describes, "
            f"has no evaluation result, and an earlier run's evaluation cannot be tied to its "
            f"overwritten config.yaml: give each run its own OUTPUT_DIR"
        )
    last = evaluations[-1][-1]
    metrics = {
        k[len(prefix) :]: float(v)
        for k, v in last.items()
        if k.startswith(prefix) and k[len(prefix) :].split("/")[0] in ("bbox", "segm")
    }
    return metrics, len(runs)


@dataclass
class RunResult:
    """One OUTPUT_DIR: its merged config, final metrics and (after matching) paper row with
    the recipe's differences from the row's config."""

    output_dir: str
    config: Dict[str, object]
    metrics: Dict[str, float]
    unknown: List[str] = field(default_factory=list)
    absent: List[str] = field(default_factory=list)
    row: Optional[dict] = None
    config_file: Optional[str] = None  # the record config the run matched or is closest to
    differences: List[str] = field(default_factory=list)  # reported beside the numbers
    start: Optional[str] = None  # the recipe (record config) of the run it started from
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
    config = read_config(paths[0])
    metrics, n_runs = _final_metrics(paths[1], config.values.get("DATASETS.TEST") or [""])
    run = RunResult(output_dir, config.values, metrics, config.unknown, config.absent)
    if n_runs > 1:
        run.notes.append(
            f"metrics.json holds {n_runs} training runs; the numbers are the last one's, the "
            f"run config.yaml describes"
        )
    return run


def _compared(run: RunResult, cfg: Dict[str, object]) -> List[str]:
    """Keys compared between a run and a config: both know them, not the environment."""
    absent = set(run.absent)
    return sorted(
        k for k in run.config if k in cfg and k not in absent and not _in(k, RUN_ENVIRONMENT_KEYS)
    )


def _start_dir(weights: str) -> Optional[str]:
    """The OUTPUT_DIR whose model ``weights`` is (its folder holds a config.yaml), or None."""
    folder = os.path.dirname(weights)
    if weights and os.path.isfile(weights) and os.path.isfile(os.path.join(folder, "config.yaml")):
        return folder
    return None


@functools.lru_cache(maxsize=None)
def _record_config(path: str, mtime_ns: int) -> Dict[str, object]:
    """A config of the record, merged once per process (and again when the file changes)."""
    return read_config(path, strict=True).values


Candidate = Tuple[dict, str, Dict[str, object]]  # (row, config file, merged config)


class _Matcher:
    """The record's configs, merged once, and the comparisons of runs against them."""

    def __init__(self, record: dict, repo_root: str):
        self._merged: Dict[str, Dict[str, object]] = {}
        self.candidates: List[Candidate] = []
        for row in record["rows"]:
            for config_file in row["configs"]:
                self.candidates.append((row, config_file, self.config(repo_root, config_file)))
            if row.get("starts_from"):
                self.config(repo_root, row["starts_from"])
        self._starts: Dict[str, RunResult] = {}

    def config(self, repo_root: str, config_file: str) -> Dict[str, object]:
        if config_file not in self._merged:
            path = os.path.join(repo_root, config_file)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} (a config of the paper record) not found: pass --repo-root, the "
                    f"lt_d2 checkout holding configs/"
                )
            self._merged[config_file] = _record_config(path, os.stat(path).st_mtime_ns)
        return self._merged[config_file]

    def recipe_of(self, run: RunResult) -> Optional[str]:
        """The record config whose recipe (all keys but the environment and the reported
        ones) the run has, or None."""
        for config_file, cfg in self._merged.items():
            if not self._mismatches(run, cfg):
                return config_file
        return None

    def start_of(self, run: RunResult) -> Optional[RunResult]:
        """The run whose model the run started from (its config only), or None."""
        folder = _start_dir(str(run.config.get("MODEL.WEIGHTS", "")))
        if folder is None:
            return None
        if folder not in self._starts:
            loaded = read_config(os.path.join(folder, "config.yaml"))
            self._starts[folder] = RunResult(folder, loaded.values, {}, absent=loaded.absent)
            self._starts[folder].config_file = self.recipe_of(self._starts[folder])
        return self._starts[folder]

    @staticmethod
    def _mismatches(run: RunResult, cfg: Dict[str, object]) -> List[str]:
        return [
            f"{k} = {run.config[k]!r} (config: {cfg[k]!r})"
            for k in _compared(run, cfg)
            if not _in(k, REPORTED_KEYS) and run.config[k] != cfg[k]
        ]

    def compare(self, run: RunResult, candidate: Candidate) -> Tuple[List[str], List[str]]:
        """(differences that rule the row out, differences reported beside the numbers)."""
        row, _, cfg = candidate
        mismatches = self._mismatches(run, cfg)
        reported = [
            f"{k} = {run.config[k]!r} (config: {cfg[k]!r})"
            for k in _compared(run, cfg)
            if _in(k, REPORTED_KEYS) and k != "MODEL.WEIGHTS" and run.config[k] != cfg[k]
        ]
        weights = run.config.get("MODEL.WEIGHTS")
        start = self.start_of(run)
        wanted = row.get("starts_from")
        started = start and (
            f"MODEL.WEIGHTS: started from {start.output_dir} (recipe: "
            f"{start.config_file or 'no record config'})"
        )
        if wanted and start is None:
            reported.append(
                f"MODEL.WEIGHTS = {weights!r}: not another run's model (no config.yaml beside "
                f"it); the paper row starts from a model of {wanted}"
            )
        elif wanted and self._mismatches(start, self._merged[wanted]):
            mismatches.append(f"{started}; the paper row starts from a model of {wanted}")
        elif start is not None:
            reported.append(started)
        elif "MODEL.WEIGHTS" in cfg and weights != cfg["MODEL.WEIGHTS"]:
            reported.append(f"MODEL.WEIGHTS = {weights!r} (config: {cfg['MODEL.WEIGHTS']!r})")
        return mismatches, reported


_SHOWN = 10  # differing keys listed for a run without a paper row


def match_runs(runs: Sequence[RunResult], record: dict, repo_root: str) -> None:
    """Attach to each run the record row whose config has the run's recipe (in place), with
    its reported differences; without a match, notes on the closest config."""
    matcher = _Matcher(record, repo_root)
    for run in runs:
        scored = []
        for candidate in matcher.candidates:
            mismatches, reported = matcher.compare(run, candidate)
            scored.append((len(mismatches), len(reported), candidate, mismatches, reported))
        best = min(scored, key=lambda s: s[:2])
        _, _, (row, config_file, _), mismatches, reported = best
        run.config_file = config_file
        if run.unknown or run.absent:
            run.notes.append(
                "keys of another detectron2 / lt_d2 version, not compared: "
                + "; ".join(
                    f"{what}: {', '.join(keys)}"
                    for what, keys in (
                        ("the run's, unknown here or typed otherwise", run.unknown),
                        ("not in the run", run.absent),
                    )
                    if keys
                )
            )
        if mismatches:
            shown = "; ".join(mismatches[:_SHOWN]) + (
                f"; and {len(mismatches) - _SHOWN} more" if len(mismatches) > _SHOWN else ""
            )
            run.notes.append(
                f"no paper row; closest config {config_file} differs in {len(mismatches)} "
                f"keys: {shown}"
            )
            continue
        run.row, run.differences = row, reported
        start = matcher.start_of(run)
        run.start = start and (start.config_file or start.output_dir)
        ties = [s[2] for s in scored if s[:2] == best[:2] and s[2][0] is not row]
        if ties:
            run.notes.append(
                "matches equally: "
                + "; ".join(f"{r['paper']} Table {r['table']}, {r['row']}" for r, _, _ in ties)
            )


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _mean_spread(values: List[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(group: List[RunResult], task: str, metric: str) -> str:
    """'run (paper, run - paper)', or the run's value alone without a published one; for
    several runs of one recipe the run value is 'mean ± spread'."""
    values = [r.metrics[f"{task}/{metric}"] for r in group if f"{task}/{metric}" in r.metrics]
    paper = (group[0].row or {}).get(task, {}).get(metric)
    ours, spread = _mean_spread(values) if values else (math.nan, None)
    shown = _fmt(ours) if spread is None or math.isnan(spread) else f"{ours:.1f} ± {spread:.1f}"
    if paper is None:
        return shown
    if math.isnan(ours):
        return f"- ({paper:.1f})"
    return f"{shown} ({paper:.1f}, {ours - paper:+.1f})"


def _signature(run: RunResult) -> tuple:
    """Runs of one recipe share it: their row, recipe and starting weights' recipe."""
    recipe = sorted(
        (k, repr(v))
        for k, v in run.config.items()
        if not _in(k, RUN_ENVIRONMENT_KEYS) and k != "MODEL.WEIGHTS"
    )
    weights = run.start or repr(run.config.get("MODEL.WEIGHTS"))
    return (id(run.row) if run.row else run.output_dir, weights, tuple(recipe))


def _groups(runs: Sequence[RunResult]) -> List[List[RunResult]]:
    groups: Dict[tuple, List[RunResult]] = {}
    for run in runs:
        groups.setdefault(_signature(run), []).append(run)
    return list(groups.values())


def format_table(runs: Sequence[RunResult], markdown: bool = False) -> str:
    """One line per recipe: its runs, paper row, per metric "run (paper, difference)" and the
    recipe's differences from the row's config."""
    header = (
        ["run", "paper row"]
        + [f"{'box' if task == 'bbox' else 'mask'} {m}" for task, m in METRICS]
        + ["differs from the row's config"]
    )
    lines, notes = [], []
    for group in _groups(runs):
        row = group[0].row
        name = f"{row['paper']} Table {row['table']}, {row['row']}" if row else "(no paper row)"
        dirs = ", ".join(r.output_dir for r in group)
        if len(group) > 1:
            dirs += f" (n = {len(group)})"
        differences = sorted({d for r in group for d in r.differences})
        lines.append(
            [dirs, name] + [_cell(group, t, m) for t, m in METRICS] + ["; ".join(differences)]
        )
        notes += [f"{run.output_dir}: {note}" for run in group for note in run.notes]
    legend = (
        "Cells: run (paper, run - paper) where the paper publishes the metric; several runs "
        "of one recipe: mean ± sample standard deviation over n runs."
    )
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
