"""Predicted vs published: each method's APr / APc / APf change over its reference run.

Reads the ``results.json`` of one or more runs of :mod:`benchmarks.lvis_scale_classifiers`
(one per seed, same settings), and pairs each method's change over its reference with the
paper's change over the same reference (mask AP, LVIS v1 val, Mask R-CNN R50-FPN 1x, from
``lt_d2/evaluation/paper_results.json``). The change is computed seed by seed (method and
reference trained with the same seed, hence the same data stream and validation set) and
reported as mean and sample standard deviation over the seeds.

    python -m benchmarks.simulation_report output/sim/seed0 output/sim/seed1 ... \\
        --out docs/figures/simulation_prediction.png

Prints the markdown table and the ranking of the methods by APr change.
"""

import argparse
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lt_d2.evaluation.balance import plt
from lt_d2.evaluation.paper_table import load_paper_results

METRICS = ("APr", "APc", "APf")

# ---------------------------------------------------------------- calibration targets
# The baselines the generative model is calibrated on, and their rows in [EQLv2] Table 1.
BASELINES = {"SoftmaxCE": "(a) Softmax", "SigmoidBCE": "(b) Sigmoid"}
# The calibration's tolerance: every one of the six numbers within 3 AP points of the paper.
TOLERANCE = 3.0


def paper_targets() -> Dict[str, Dict[str, float]]:
    """{baseline: {APr, APc, APf}}: [EQLv2] Table 1 (a) and (b), mask AP."""
    rows = load_paper_results()["rows"]
    targets = {}
    for name, label in BASELINES.items():
        (row,) = (r for r in rows if r["paper"] == "EQLv2" and r["row"] == label)
        targets[name] = {m: float(row["segm"][m]) for m in METRICS}
    return targets


def deviation(rows: Sequence[Dict], targets: Dict[str, Dict[str, float]]) -> float:
    """The objective: max |sim - paper| over the metrics of the baselines in ``rows``."""
    gaps = [abs(row[m] - targets[row["run"]][m]) for row in rows for m in METRICS]
    if not gaps:
        raise ValueError("no baseline row to compare with the paper")
    return max(gaps)


@dataclass(frozen=True)
class Comparison:
    """A simulated run, its simulated reference, and the paper rows they stand for
    (``paper_row`` / ``paper_reference`` as (paper, row label) in paper_results.json; None
    when no shared paper reports the method in this setting)."""

    run: str
    reference: str
    paper_row: Optional[Tuple[str, str]]
    paper_reference: Optional[Tuple[str, str]]
    source: str


_SOFTMAX, _SIGMOID = ("EQLv2", "(a) Softmax"), ("EQLv2", "(b) Sigmoid")
COMPARISONS = (
    Comparison("EQL", "SigmoidBCE", ("EQLv2", "(c) EQL"), _SIGMOID, "[EQLv2] Table 1 (c) - (b)"),
    Comparison(
        "SoftmaxCE + RFS", "SoftmaxCE", ("EQLv2", "(d) RFS"), _SOFTMAX, "[EQLv2] Table 1 (d) - (a)"
    ),
    Comparison(
        "LWS (SoftmaxCE, CBS)",
        "SoftmaxCE",
        ("EQLv2", "(e) LWS"),
        _SOFTMAX,
        "[EQLv2] Table 1 (e) - (a)",
    ),
    Comparison(
        "cRT (SoftmaxCE, CBS)",
        "SoftmaxCE",
        ("EQLv2", "(f) cRT"),
        _SOFTMAX,
        "[EQLv2] Table 1 (f) - (a)",
    ),
    Comparison("BAGS", "SoftmaxCE", ("EQLv2", "(g) BAGS"), _SOFTMAX, "[EQLv2] Table 1 (g) - (a)"),
    Comparison(
        "EQLv2", "SigmoidBCE", ("EQLv2", "(h) EQL v2"), _SIGMOID, "[EQLv2] Table 1 (h) - (b)"
    ),
    Comparison(
        "EQLv2Softmax2C",
        "SigmoidBCE",
        ("EQLv2", "2C-softmax, obj + neg + pos"),
        _SIGMOID,
        "[EQLv2] Table 9 2C-softmax (obj+neg+pos) - Table 1 (b)",
    ),
    Comparison(
        "DropLoss",
        "EQL",
        ("DropLoss", "DropLoss, without RFS"),
        ("DropLoss", "EQL, without RFS"),
        "[DropLoss] Table 2 (LVIS v1, no RFS): DropLoss - EQL",
    ),
    Comparison(
        "Seesaw",
        "SoftmaxCE",
        None,
        None,
        "no LVIS v1 Mask R-CNN R50 1x number in the shared papers",
    ),
    Comparison(
        "FederatedSigmoidBCE",
        "SigmoidBCE",
        None,
        None,
        "no LVIS v1 Mask R-CNN R50 1x number in the shared papers",
    ),
    Comparison("tau-norm (SoftmaxCE, tau=1)", "SoftmaxCE", None, None, "not in [EQLv2] Table 1"),
)


def paper_change(comparison: Comparison) -> Optional[Dict[str, float]]:
    """The paper's APr / APc / APf change of ``comparison`` (mask AP), or None."""
    if comparison.paper_row is None or comparison.paper_reference is None:
        return None
    rows = {(r["paper"], r["row"]): r for r in load_paper_results()["rows"]}
    row, ref = rows[comparison.paper_row]["segm"], rows[comparison.paper_reference]["segm"]
    return {m: row[m] - ref[m] for m in METRICS}


def load_seeds(seeds: Sequence[str]) -> List[Dict[str, Dict]]:
    """Per seed, {run name: its row} from results.json; a seed is one output directory or
    several joined by commas (runs of the same seed split over processes)."""
    out = []
    for seed in seeds:
        rows: Dict[str, Dict] = {}
        for d in seed.split(","):
            path = os.path.join(d, "results.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: not a finished run of lvis_scale_classifiers")
            with open(path) as f:
                rows.update({row["run"]: row for row in json.load(f)["rows"]})
        out.append(rows)
    return out


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def predictions(seeds: List[Dict[str, Dict]]) -> List[Dict]:
    """One record per comparison whose run and reference are in every seed: the simulated
    change (mean, std over seeds, and the seeds' count) and the paper's change."""
    out = []
    for comp in COMPARISONS:
        if not all(comp.run in s and comp.reference in s for s in seeds):
            continue
        record = {"run": comp.run, "reference": comp.reference, "seeds": len(seeds)}
        record["source"] = comp.source
        record["paper"] = paper_change(comp)
        for m in METRICS:
            record[m] = _mean_std([s[comp.run][m] - s[comp.reference][m] for s in seeds])
        out.append(record)
    return out


def _fmt(mean_std: Tuple[float, float]) -> str:
    mean, std = mean_std
    return f"{mean:+.1f}" if np.isnan(std) else f"{mean:+.1f} ± {std:.1f}"


def markdown(records: List[Dict]) -> str:
    lines = [
        "| method (vs reference) | seeds | sim ΔAPr | paper ΔAPr | sim ΔAPc | paper ΔAPc "
        "| sim ΔAPf | paper ΔAPf | paper rows |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in records:
        paper = r["paper"]
        cells = [f"{r['run']} (vs {r['reference']})", str(r["seeds"])]
        for m in METRICS:
            cells += [_fmt(r[m]), "-" if paper is None else f"{paper[m]:+.1f}"]
        lines.append("| " + " | ".join(cells + [r["source"]]) + " |")
    return "\n".join(lines)


def rankings(records: List[Dict]) -> Tuple[List[str], List[str]]:
    """The methods with a paper number, by APr change (largest first): simulated, published."""
    known = [r for r in records if r["paper"] is not None]
    sim = sorted(known, key=lambda r: -r["APr"][0])
    paper = sorted(known, key=lambda r: -r["paper"]["APr"])
    return [r["run"] for r in sim], [r["run"] for r in paper]


def figure(records: List[Dict], path: str) -> None:
    """Simulated against published change, one panel per metric (methods with a paper
    number; error bars: std over seeds)."""
    known = [r for r in records if r["paper"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, m in zip(axes, METRICS):
        x = [r["paper"][m] for r in known]
        y = [r[m][0] for r in known]
        err = [0.0 if np.isnan(r[m][1]) else r[m][1] for r in known]
        ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2)
        for xi, yi, r in zip(x, y, known):
            ax.annotate(r["run"].split(" (")[0], (xi, yi), fontsize=6)
        lo, hi = min(x + y + [0.0]) - 1, max(x + y + [0.0]) + 1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.6)
        ax.set_xlabel(f"paper \N{GREEK CAPITAL LETTER DELTA}{m}")
        ax.set_ylabel(f"simulated \N{GREEK CAPITAL LETTER DELTA}{m}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "dirs", nargs="+", help="output directories, one per seed (a,b: one seed's parts)"
    )
    parser.add_argument("--out", help="write the figure here (png)")
    args = parser.parse_args(argv)
    records = predictions(load_seeds(args.dirs))
    print(markdown(records))
    sim, paper = rankings(records)
    print("\nranking by APr change, simulated:", " > ".join(sim))
    print("ranking by APr change, published:", " > ".join(paper))
    if args.out:
        figure(records, args.out)
    return records


if __name__ == "__main__":
    main()
