"""Per-category balance diagnostics: the dump format and the papers' figures.

The training hook (:class:`lt_d2.engine.hooks.GradientBalanceHook`) writes one ``.npz`` per
logging period with, per stage (one GradientStats each; Cascade R-CNN has three), the
accumulated positive / negative logit gradients and their ratio ([EQLv2] eq. 9, Fig. 1/2),
the classifier weight norm per category ([EQLv2] Fig. 3, [BAGS] Fig. 1) and, for stateful
classifiers, their current per-category weights. The functions here save / load that format
and draw the curves, sorted by training instance count as in the papers; the hook uses them
for TensorBoard images and ``python -m lt_d2.evaluation.plot_balance`` for PNG files.

Shape shorthand: C = categories, S = stages.
"""

import glob
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (headless; plot_balance uses this one)

__all__ = [
    "BalanceDump",
    "save_balance_dump",
    "load_balance_dump",
    "list_balance_dumps",
    "plot_sorted_curves",
    "balance_figure",
    "figure_to_image",
    "group_means",
    "BALANCE_DIR",
]

# Sub-directory of OUTPUT_DIR holding the dumps: balance/iter_0001000.npz, ...
BALANCE_DIR = "balance"
_STAGE_KEY = re.compile(r"^stage(\d+)__(.+)$")


@dataclass
class BalanceDump:
    """The per-category statistics of one run at one iteration.

    iteration: training iterations done.
    instance_counts: (C,) training instances per category (the plots' sort key).
    frequency: (C,) 'r' / 'c' / 'f' labels.
    stages: (S,) stage names (the GradientStats' module paths).
    arrays: per stage, name -> (C,) array: ``pos``, ``neg``, ``ratio``, optionally
        ``weight_norm`` and ``weight_<name>`` (a classifier's own per-category weights).
    """

    iteration: int
    instance_counts: np.ndarray
    frequency: np.ndarray
    stages: List[str]
    arrays: List[Dict[str, np.ndarray]]


def save_balance_dump(path: str, dump: BalanceDump) -> None:
    """Write ``dump`` as an ``.npz`` (plain arrays, no pickle)."""
    if len(dump.stages) != len(dump.arrays):
        raise ValueError(f"{len(dump.stages)} stage names for {len(dump.arrays)} stages")
    flat = {
        f"stage{k}__{name}": np.asarray(values)
        for k, stage in enumerate(dump.arrays)
        for name, values in stage.items()
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # np.savez would append ".npz" to a name without it
        np.savez(
            f,
            iteration=np.int64(dump.iteration),
            instance_counts=np.asarray(dump.instance_counts, dtype=np.int64),
            frequency=np.asarray(dump.frequency, dtype="<U1"),
            stages=np.asarray(dump.stages, dtype=str),
            **flat,
        )


def load_balance_dump(path: str) -> BalanceDump:
    """Read a file written by :func:`save_balance_dump`; a damaged or foreign file raises
    ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stages = [str(s) for s in data["stages"]]
            arrays: List[Dict[str, np.ndarray]] = [{} for _ in stages]
            for key in data.files:
                match = _STAGE_KEY.match(key)
                if match:
                    arrays[int(match.group(1))][match.group(2)] = data[key]
            return BalanceDump(
                iteration=int(data["iteration"]),
                instance_counts=data["instance_counts"],
                frequency=data["frequency"],
                stages=stages,
                arrays=arrays,
            )
    except (KeyError, IndexError) as e:
        raise ValueError(
            f"{path} is not a balance dump of lt_d2's GradientBalanceHook ({e})"
        ) from e
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        raise ValueError(
            f"{path} cannot be read as a balance dump ({type(e).__name__}: {e}): the file is "
            f"truncated or damaged (a run stopped while writing it?); delete it and run again"
        ) from e


def list_balance_dumps(run_dir: str) -> List[str]:
    """The dumps of a run, oldest first: ``run_dir`` is an OUTPUT_DIR (with a ``balance/``
    sub-directory) or that sub-directory itself."""
    folder = os.path.join(run_dir, BALANCE_DIR)
    if not os.path.isdir(folder):
        folder = run_dir
    paths = sorted(glob.glob(os.path.join(folder, "iter_*.npz")))
    if not paths:
        raise FileNotFoundError(
            f"no balance dumps (iter_*.npz) under {run_dir} or {folder}: train with "
            f"MODEL.GRADIENT_STATS.ENABLED True and DIAGNOSTICS.PERIOD > 0"
        )
    return paths


def plot_sorted_curves(
    ax,
    series: Dict[str, np.ndarray],
    instance_counts: np.ndarray,
    ylabel: str,
    log_y: bool = False,
) -> None:
    """Draw (C,) curves against categories sorted by descending training instance count.

    Args:
        ax: a matplotlib Axes.
        series: label -> (C,) values in category order.
        instance_counts: (C,) the sort key.
    """
    order = np.argsort(-np.asarray(instance_counts), kind="stable")
    x = np.arange(len(order))
    for label, values in series.items():
        y = np.asarray(values, dtype=np.float64)[order]
        ax.plot(x, y, label=label, linewidth=1.2)
    ax.set_xlabel("categories sorted by training instances (frequent -> rare)")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)


_PANELS: Tuple[Tuple[str, str], ...] = (
    ("ratio", "pos/neg gradient ratio"),
    ("weight_norm", "weight norm"),
)


def balance_figure(stage: Dict[str, np.ndarray], instance_counts: np.ndarray, title: str):
    """One stage's curves stacked: accumulated pos/neg gradient ratio, classifier weight norm
    and the classifier's own weights (``weight_<name>``) when present. Returns a Figure."""
    panels = [(key, label) for key, label in _PANELS if key in stage]
    panels += [
        (key, f"classifier {key[len('weight_') :]}")
        for key in sorted(stage)
        if key.startswith("weight_") and key != "weight_norm"
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        plot_sorted_curves(ax, {label: stage[key]}, instance_counts, label)
        if ax is not axes[-1, 0]:
            ax.set_xlabel("")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_image(fig) -> np.ndarray:
    """Render a Figure to a (3, H, W) uint8 RGB array (EventStorage.put_image's layout) and
    close it."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))


def group_means(values: np.ndarray, frequency: Sequence[str]) -> Dict[str, float]:
    """Mean of (C,) ``values`` over the rare / common / frequent categories; groups without
    categories are left out."""
    frequency = np.asarray(frequency)
    return {
        g: float(np.mean(values[frequency == g])) for g in ("r", "c", "f") if (frequency == g).any()
    }
