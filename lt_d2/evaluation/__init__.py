"""Evaluation: LVIS metrics with instance-count bins and Fixed AP; the balance figures."""

from .compiled_ops import has_compiled_ops
from .fixed_ap import evaluate_fixed_ap, top_detections_per_category
from .lvis_evaluation import LTLVISEvaluator, build_lvis_evaluator

__all__ = [
    "LTLVISEvaluator",
    "build_lvis_evaluator",
    "evaluate_fixed_ap",
    "has_compiled_ops",
    "top_detections_per_category",
]
