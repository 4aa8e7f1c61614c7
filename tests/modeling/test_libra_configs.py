"""The Libra configs parse, switch on what their names say, and the demo ones train a step."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import lt_d2.modeling  # noqa: F401  (registers heads and backbones)
from lt_d2.config import add_lt_config, merge_lt_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
LIBRA_CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "libra", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "demo", "libra", "*.yaml"))
)


def _load(path):
    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(cfg, path)
    return cfg


def test_there_are_libra_configs():
    assert len(LIBRA_CONFIGS) >= 20


@pytest.mark.parametrize("path", LIBRA_CONFIGS, ids=os.path.basename)
def test_config_switches_on_what_its_name_says(path):
    cfg = _load(path)
    method = os.path.basename(path).split("_")[0]
    parts = set(method.split("-")) if method.startswith("libra") else set()
    full = method == "libra"
    rcnn = cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    if rcnn:
        assert (cfg.MODEL.ROI_HEADS.SAMPLER == "IoUBalanced") == bool(
            {"ibs", "posbal"} & parts or full
        )
        box_loss = cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE
        assert (box_loss == "lgr_l1") == bool("lgrl1" in parts or (full and rcnn))
        assert (box_loss == "balanced_l1") == ("bl1" in parts)
        classifier = {"bcr": "BucketedSigmoidBCE", "lgrce": "LGRSoftmaxCE"}
        expected = [classifier[p] for p in parts if p in classifier] or (
            ["LGRSoftmaxCE"] if full else []
        )
        if os.path.basename(path).startswith("bcr_"):
            expected = ["BucketedSigmoidBCE"]
        assert [cfg.MODEL.CLASSIFIER.NAME] == (expected or ["SoftmaxCE"])
    else:
        assert cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE == ("balanced_l1" if full else "smooth_l1")
    assert ("bfp" in cfg.MODEL.BACKBONE.NAME) == bool("bfp" in parts or full)


@pytest.mark.parametrize(
    "name", ["libra_mask_rcnn_R_18_FPN_demo.yaml", "libra_retinanet_R_18_FPN_demo.yaml"]
)
def test_demo_libra_model_trains_one_step(name):
    cfg = _load(os.path.join(ROOT, "demo", "libra", name))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    instances = Instances((64, 64))
    instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 60.0, 62.0]]))
    instances.gt_classes = torch.tensor([0, 7])
    if cfg.MODEL.MASK_ON:
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        masks[0, 6:30, 4:40] = True
        masks[1, 20:62, 30:60] = True
        instances.gt_masks = BitMasks(masks)
    batch = [{"image": torch.rand(3, 64, 64) * 255, "instances": instances}]
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    refine = model.backbone.refine
    assert all(p.grad is not None for p in refine.parameters())


@pytest.mark.parametrize("path", LIBRA_CONFIGS, ids=os.path.basename)
def test_positive_balance_follows_sec_3_1(path):
    """Sec. 3.1: positives balanced per ground truth; under class imbalance (LVIS and the
    long-tailed demo) per class first, then per ground truth inside each class."""
    cfg = _load(path)
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN" or cfg.MODEL.ROI_HEADS.SAMPLER == "Random":
        return
    coco = "coco" in cfg.DATASETS.TRAIN[0]
    assert cfg.MODEL.ROI_HEADS.IOU_BALANCED.POSITIVE_BALANCE == ("per_gt" if coco else "per_class")
