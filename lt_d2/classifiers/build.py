"""Builders that turn a config's classifier name into a Classifier instance."""

from typing import Optional

from detectron2.config import CfgNode

from lt_d2.data import CategoryStats, category_stats_from_cfg

from .base import CLASSIFIER_REGISTRY, DENSE_CLASSIFIER_REGISTRY, Classifier, DenseClassifier
from .compile import set_compile_enabled

__all__ = ["build_classifier", "build_dense_classifier"]


def _registered(registry) -> str:
    return ", ".join(sorted(name for name, _ in registry))


def _build(cfg: CfgNode, cls, num_classes: int, category_stats: Optional[CategoryStats]):
    """``cls`` built from ``cfg``. Category statistics reach only a class that declares
    ``uses_category_stats``; they are computed from ``cfg.DATASETS.TRAIN`` when not given, and
    refused when their category count is not the model's. ``cfg.MODEL.COMPILE_LOSSES`` turns
    compilation of the loss functions on or off (process-wide)."""
    set_compile_enabled(cfg.MODEL.COMPILE_LOSSES)
    if category_stats is None and cls.uses_category_stats:
        try:
            category_stats = category_stats_from_cfg(cfg)
        except Exception as e:  # the dataset's own error, with what needed it
            raise ValueError(
                f"{cls.__name__} is defined by the training set's category statistics, which "
                f"could not be computed from DATASETS.TRAIN = {list(cfg.DATASETS.TRAIN)}: {e}"
            ) from e
    if category_stats is not None and category_stats.num_classes != num_classes:
        raise ValueError(
            f"category statistics describe {category_stats.num_classes} categories but the "
            f"model has {num_classes}: set the model's NUM_CLASSES to the dataset's category "
            f"count (DATASETS.TRAIN) or point DATASETS.TRAIN at the intended dataset"
        )
    if not cls.uses_category_stats:
        return cls(cfg, num_classes=num_classes)
    return cls(cfg, num_classes=num_classes, category_stats=category_stats)


# Per config node: its registry, what its classifiers are called, the heads that use them.
_KINDS = {
    "CLASSIFIER": (CLASSIFIER_REGISTRY, "two-stage", "R-CNN ROI heads"),
    "DENSE_CLASSIFIER": (DENSE_CLASSIFIER_REGISTRY, "dense (one-stage)", "RetinaNet/ATSS"),
}


def _registered_class(cfg: CfgNode, node: str):
    """The class ``cfg.MODEL.<node>.NAME`` names in the node's registry; a name registered in
    the other one is refused with the key to set instead."""
    registry, kind, _ = _KINDS[node]
    name = cfg.MODEL[node].NAME
    if name in registry:
        return registry.get(name)
    other = "DENSE_CLASSIFIER" if node == "CLASSIFIER" else "CLASSIFIER"
    other_registry, other_kind, other_heads = _KINDS[other]
    hint = (
        f" '{name}' is a {other_kind} classifier: set it in MODEL.{other}.NAME for "
        f"{other_heads}."
        if name in other_registry
        else ""
    )
    raise KeyError(
        f"MODEL.{node}.NAME = '{name}' is not a registered {kind} classifier; choose one of: "
        f"{_registered(registry)}.{hint}"
    )


def build_classifier(
    cfg: CfgNode, num_classes: int, category_stats: Optional[CategoryStats] = None
) -> Classifier:
    """The two-stage classifier named by ``cfg.MODEL.CLASSIFIER.NAME``.

    ``category_stats``: the training set's statistics, for a classifier that uses them;
    None computes them from ``cfg.DATASETS.TRAIN``, only when the classifier uses them.
    """
    return _build(cfg, _registered_class(cfg, "CLASSIFIER"), num_classes, category_stats)


def build_dense_classifier(
    cfg: CfgNode, num_classes: int, category_stats: Optional[CategoryStats] = None
) -> DenseClassifier:
    """The one-stage classifier named by ``cfg.MODEL.DENSE_CLASSIFIER.NAME`` (statistics as
    in :func:`build_classifier`)."""
    return _build(cfg, _registered_class(cfg, "DENSE_CLASSIFIER"), num_classes, category_stats)
