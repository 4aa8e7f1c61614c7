"""Every registered classifier built the same way for the tests that sweep the registries."""

from detectron2.config import CfgNode, get_cfg

from lt_d2.classifiers import (
    CLASSIFIER_REGISTRY,
    DENSE_CLASSIFIER_REGISTRY,
    Classifier,
    build_classifier,
    build_dense_classifier,
)
from lt_d2.config import add_lt_config
from lt_d2.data.category_stats import CategoryStats

C = 6
# rare / common / frequent categories by images, and every BAGS instance group [0,10),
# [10,100), [100,1000), [1000,) hold at least one category
STATS = CategoryStats(
    instance_counts=[2, 5, 30, 60, 400, 2000],
    image_counts=[2, 4, 20, 50, 300, 900],
    num_images=1000,
)
TWO_STAGE = sorted(name for name, _ in CLASSIFIER_REGISTRY)
DENSE = sorted(name for name, _ in DENSE_CLASSIFIER_REGISTRY)


def classifier_cfg(name: str) -> CfgNode:
    """A default config naming classifier ``name`` (two-stage or dense)."""
    cfg = get_cfg()
    add_lt_config(cfg)
    if name in DENSE:
        cfg.MODEL.DENSE_CLASSIFIER.NAME = name
    else:
        cfg.MODEL.CLASSIFIER.NAME = name
    # EQL's tail: the rare + common categories 0-3 (the default 1.76e-3 selects none of STATS's,
    # which EQL, BackgroundEQL and DropLoss refuse)
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = 0.1
    return cfg


def build_registered(name: str) -> Classifier:
    """Classifier ``name`` for C = 6 categories with :data:`STATS`, in training mode."""
    build = build_dense_classifier if name in DENSE else build_classifier
    return build(classifier_cfg(name), C, STATS).train()
