"""One-stage detectors whose classification is a pluggable DenseClassifier (registered in
detectron2's META_ARCH_REGISTRY as "ATSS" and "LTRetinaNet")."""

from .atss import ATSS, ATSSHead
from .atss_matching import atss_match, centerness_targets
from .dense_classification import DenseClassifierHead
from .retinanet import LTRetinaNet

__all__ = [
    "ATSS",
    "ATSSHead",
    "DenseClassifierHead",
    "LTRetinaNet",
    "atss_match",
    "centerness_targets",
]
