"""Turn runs' balance dumps into the papers' figures, as PNG files.

    python -m lt_d2.evaluation.plot_balance RUN_DIR [RUN_DIR ...] --out DIR [--labels ...]

RUN_DIR is a training OUTPUT_DIR (its ``balance/iter_*.npz`` were written by
GradientBalanceHook). Written per stage (suffix ``_stage<k>`` for Cascade R-CNN's stages):

- ``grad_ratio.png``: the last accumulated pos/neg gradient ratio of every run, categories
  sorted by training instances ([EQLv2] Fig. 1);
- ``grad_ratio_over_training.png``: one panel per run, the ratio at several iterations
  ([EQLv2] Fig. 2);
- ``weight_norm.png``: classifier weight norm per category of every run ([EQLv2] Fig. 3,
  [BAGS] Fig. 1), when the runs recorded it;
- ``classifier_weights.png``: a stateful classifier's own per-category weights (e.g. EQL v2's
  q_j, r_j), one panel per run, when recorded.
"""

import argparse
import os
from typing import List, Optional, Sequence

import numpy as np

from .balance import BalanceDump, list_balance_dumps, load_balance_dump, plot_sorted_curves, plt

__all__ = ["plot_runs", "main"]


# Iterations shown per run in the over-training figure ([EQLv2] Fig. 2 shows a handful).
_MAX_SNAPSHOTS = 5


def _snapshots(dumps: List[BalanceDump]) -> List[BalanceDump]:
    picks = np.unique(np.linspace(0, len(dumps) - 1, min(_MAX_SNAPSHOTS, len(dumps))).round())
    return [dumps[int(i)] for i in picks]


def _save(fig, path: str, written: List[str]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)


def plot_runs(
    run_dirs: Sequence[str], out_dir: str, labels: Optional[Sequence[str]] = None
) -> List[str]:
    """Write the figures of ``run_dirs`` (side by side / overlaid) into ``out_dir``.

    Returns the paths written. Runs must share categories and stage count.
    """
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = [[load_balance_dump(p) for p in list_balance_dumps(d)] for d in run_dirs]
    counts = runs[0][-1].instance_counts
    num_stages = len(runs[0][-1].stages)
    for d, dumps in zip(run_dirs, runs):
        last = dumps[-1]
        if len(last.instance_counts) != len(counts) or len(last.stages) != num_stages:
            raise ValueError(
                f"{d}: {len(last.instance_counts)} categories / {len(last.stages)} stages, "
                f"{run_dirs[0]}: {len(counts)} / {num_stages}: runs must share the dataset "
                f"and the detector's stage count"
            )
    os.makedirs(out_dir, exist_ok=True)
    written: List[str] = []
    for k in range(num_stages):
        suffix = f"_stage{k}" if num_stages > 1 else ""
        for key, ylabel, name in (
            ("ratio", "accumulated pos/neg gradient ratio", "grad_ratio"),
            ("weight_norm", "classifier weight norm", "weight_norm"),
        ):
            series = {
                f"{label} (iter {dumps[-1].iteration})": dumps[-1].arrays[k][key]
                for label, dumps in zip(labels, runs)
                if key in dumps[-1].arrays[k]
            }
            if series:
                fig, ax = plt.subplots(figsize=(7, 3.5))
                plot_sorted_curves(ax, series, counts, ylabel)
                _save(fig, os.path.join(out_dir, f"{name}{suffix}.png"), written)

        fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
        for ax, label, dumps in zip(axes[0], labels, runs):
            series = {f"iter {d.iteration}": d.arrays[k]["ratio"] for d in _snapshots(dumps)}
            plot_sorted_curves(ax, series, counts, "accumulated pos/neg gradient ratio")
            ax.set_title(label, fontsize=9)
        _save(fig, os.path.join(out_dir, f"grad_ratio_over_training{suffix}.png"), written)

        weights = [
            {
                n[len("weight_") :]: v
                for n, v in sorted(dumps[-1].arrays[k].items())
                if n.startswith("weight_") and n != "weight_norm"
            }
            for dumps in runs
        ]
        if any(weights):
            fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
            for ax, label, w in zip(axes[0], labels, weights):
                plot_sorted_curves(ax, w, counts, "classifier's own weight")
                ax.set_title(label, fontsize=9)
            _save(fig, os.path.join(out_dir, f"classifier_weights{suffix}.png"), written)
    return written


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(
        description="Plot per-category gradient balance of one or more lt_d2 training runs."
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training OUTPUT_DIRs")
    parser.add_argument("--out", required=True, help="directory for the PNG files")
    parser.add_argument("--labels", nargs="+", help="a legend label per run (default: dir name)")
    args = parser.parse_args(argv)
    written = plot_runs(args.run_dirs, args.out, args.labels)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
