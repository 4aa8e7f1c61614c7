"""The repository's demo config and the config loader used by train_net.py, for tests."""

import os

from detectron2.config import CfgNode, get_cfg

import lt_d2  # noqa: F401  (registers classifiers, heads and the demo datasets)
from lt_d2.config import add_lt_config, merge_lt_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "softmax_mask_rcnn_R_18_FPN_demo.yaml")

# Shrinks any demo config to a few seconds per iteration batch on the CPU: 2 images per
# batch, fewer proposals and ROIs, no data-loading worker processes, losses run eagerly
# (compiling them costs more than 20 iterations of the tiny model).
INSTANT_OPTS = [
    "SOLVER.IMS_PER_BATCH", 2,
    "SOLVER.MAX_ITER", 20,
    "SOLVER.WARMUP_ITERS", 5,
    "SOLVER.CHECKPOINT_PERIOD", 100000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    "DATALOADER.NUM_WORKERS", 0,
    "MODEL.COMPILE_LOSSES", False,
]  # fmt: skip

# For the per-method sweeps, which check that each method trains and evaluates, not its AP:
# 30 detections per image instead of LVIS's 300 make the demo evaluation (mask head, pasting,
# lvis-api) about 3x faster, the bulk of a sweep run's time (the evaluator warns about it).
SWEEP_OPTS = ["TEST.DETECTIONS_PER_IMAGE", 30]


def load_config(config_file: str, *opts) -> CfgNode:
    """A config as train_net.py builds it (get_cfg + add_lt_config + merge_lt_config of the
    file and opts), unfrozen."""
    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(cfg, config_file, [str(o) for o in opts])
    return cfg
