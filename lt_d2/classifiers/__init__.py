"""Gradient-balancing classifiers: one module per method, one registry per detector kind.

``two_stage`` and ``dense`` are imported here for registration only.
"""

from . import dense, two_stage  # noqa: F401  (registration)
from .base import (
    CLASSIFIER_REGISTRY,
    DENSE_CLASSIFIER_REGISTRY,
    Classifier,
    DenseClassifier,
    prior_bias,
)
from .build import build_classifier, build_dense_classifier
from .checks import check_gt_classes

__all__ = [
    "CLASSIFIER_REGISTRY",
    "DENSE_CLASSIFIER_REGISTRY",
    "Classifier",
    "DenseClassifier",
    "build_classifier",
    "build_dense_classifier",
    "check_gt_classes",
    "prior_bias",
]
