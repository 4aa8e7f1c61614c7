"""Print a dataset's per-category statistics: instances, images, r/c/f and BAGS group.

Usage::

    python -m lt_d2.data.stats_cli lvis_demo_train        # a dataset registered in detectron2
    python -m lt_d2.data.stats_cli --json path/to/lvis_v1_train.json
    lt-d2-stats lvis_v1_train                              # console script (setup.py)
"""

import argparse
import os
from typing import List, Optional, Sequence

import numpy as np

from .category_stats import BAGS_GROUP_BOUNDS, CategoryStats

__all__ = ["format_stats_table", "main"]


def _group_label(k: int) -> str:
    lo = BAGS_GROUP_BOUNDS[k]
    hi = BAGS_GROUP_BOUNDS[k + 1] if k + 1 < len(BAGS_GROUP_BOUNDS) else None
    return f"{k} [{lo},{hi})" if hi is not None else f"{k} [{lo},inf)"


def format_stats_table(stats: CategoryStats) -> str:
    """The statistics as a text table sorted by instance count, then totals per r/c/f."""
    names = list(stats.names) if stats.names is not None else [None] * stats.num_classes
    groups = stats.instance_groups()
    width = max([8] + [len(n) for n in names if n is not None])
    header = f"{'id':>5}  {'name':<{width}}  {'instances':>9}  {'images':>7}  r/c/f  BAGS group"
    lines: List[str] = [header, "-" * len(header)]
    for k in stats.order_by_instances():
        name = names[k] if names[k] is not None else f"class_{k}"
        lines.append(
            f"{k:>5}  {name:<{width}}  {stats.instance_count_array[k]:>9}  "
            f"{stats.image_count_array[k]:>7}  {stats.frequency_labels[k]:^5}  "
            f"{_group_label(int(groups[k]))}"
        )
    lines += ["", f"{'split':<6}{'categories':>11}{'instances':>11}{'images (sum)':>14}"]
    for label in ("r", "c", "f"):
        mask = stats.frequency_mask(label)
        lines.append(
            f"{label:<6}{int(mask.sum()):>11}{int(stats.instance_count_array[mask].sum()):>11}"
            f"{int(stats.image_count_array[mask].sum()):>14}"
        )
    lines.append(
        f"{'all':<6}{stats.num_classes:>11}{int(np.sum(stats.instance_count_array)):>11}"
        f"{int(np.sum(stats.image_count_array)):>14}"
    )
    lines.append(f"training images: {stats.num_images}")
    return "\n".join(lines)


def _stats_of_registered(name: str) -> CategoryStats:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise SystemExit(
            f"dataset '{name}' is not registered in detectron2; registered LVIS-format ones: "
            f"{sorted(n for n in DatasetCatalog.list() if 'lvis' in n)}"
        )
    json_file = MetadataCatalog.get(name).get("json_file", None)
    try:
        if json_file and not os.path.isfile(json_file):
            DatasetCatalog.get(name)  # lazily prepared datasets (the demo) write their file here
        return CategoryStats.from_dataset(name)
    except FileNotFoundError as e:
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
        raise SystemExit(
            f"dataset '{name}' cannot be read: {e}. Download it and lay it out under "
            f"DETECTRON2_DATASETS (now '{root}') as datasets/README.md describes, or give the "
            f"annotation file with --json"
        ) from e


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Per-category statistics of a detection dataset (LVIS r/c/f, BAGS groups)."
    )
    parser.add_argument("dataset", nargs="?", help="name of a dataset registered in detectron2")
    parser.add_argument("--json", help="read an LVIS-format annotation file instead")
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.json is None):
        parser.error("give either DATASET_NAME or --json FILE")
    if args.json is not None:
        try:
            stats = CategoryStats.from_lvis_json(args.json)
        except (OSError, ValueError) as e:  # ValueError: damaged JSON or counts missing
            raise SystemExit(
                f"cannot read the LVIS annotation file {args.json}: {e}; check the path "
                f"(datasets/README.md describes the layout)"
            ) from e
        title = args.json
    else:
        stats = _stats_of_registered(args.dataset)
        title = args.dataset
    print(f"Category statistics of {title}\n")
    print(format_stats_table(stats))


if __name__ == "__main__":
    main()
