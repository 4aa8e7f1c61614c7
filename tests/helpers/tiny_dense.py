"""A tiny one-stage detector config and batch shared by the dense-head tests (CPU, seconds)."""

import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats

NUM_CLASSES = 3
# A long-tailed 3-category training set: 10 / 3 / 1 instances.
STATS = CategoryStats(instance_counts=[10, 3, 1], image_counts=[5, 2, 1], num_images=6)


def tiny_dense_cfg(meta_architecture: str):
    """ResNet-18 (res3-res5) + FPN P3-P7 with 32 channels, 2-conv towers, 3 classes."""
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.ATSS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ATSS.NUM_CONVS = 2
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.NUM_CONVS = 2
    return cfg


def tiny_batch(with_boxes=(True, False)):
    """Two 64x64 images; an image without boxes has an empty GT (background only)."""
    generator = torch.Generator().manual_seed(0)
    batch = []
    for has_boxes in with_boxes:
        instances = Instances((64, 64))
        if has_boxes:
            instances.gt_boxes = Boxes(
                torch.tensor([[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 60.0, 62.0]])
            )
            instances.gt_classes = torch.tensor([0, 2])
        else:
            instances.gt_boxes = Boxes(torch.zeros((0, 4)))
            instances.gt_classes = torch.zeros((0,), dtype=torch.int64)
        image = torch.randint(0, 256, (3, 64, 64), generator=generator).float()
        batch.append({"image": image, "instances": instances, "height": 64, "width": 64})
    return batch
