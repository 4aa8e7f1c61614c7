"""Data: category statistics, dataset registration (demo + LVIS), samplers.

Importing it registers nothing; ``import lt_d2`` registers the demo datasets.
"""

from .category_stats import (
    BAGS_GROUP_BOUNDS,
    LVIS_FREQUENCY_BOUNDS,
    CategoryStats,
    category_stats_from_cfg,
)
from .datasets import read_lvis_json, register_demo_datasets, register_lvis_format

__all__ = [
    "BAGS_GROUP_BOUNDS",
    "LVIS_FREQUENCY_BOUNDS",
    "CategoryStats",
    "category_stats_from_cfg",
    "read_lvis_json",
    "register_demo_datasets",
    "register_lvis_format",
]
