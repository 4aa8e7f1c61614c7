#!/usr/bin/env python
"""Training-step overhead of each Libra R-CNN component, as ratios to the same model without it.

    .venv/bin/python benchmarks/bench_libra.py [--config-file configs/demo/...yaml]
        [--rounds 8] [--threads 1]

1. The demo Mask R-CNN: every variant is the same demo model with one component switched on
   (or all of them), built from the same seed and trained on the same fixed batch of demo
   images. One training step (forward, backward, SGD update) of each variant is timed in
   turn, in a shuffled order each round, so that the load of a shared machine affects all
   variants alike; the median per variant is printed with its ratio to the baseline.
2. The balanced feature pyramid at full width: forward + backward of detectron2's R50-FPN
   backbone (256 channels, one 512x640 image) with and without BFP. At the demo's size
   (64 channels, 128x128 images, an 8x8 P4) BFP is too small to measure; here the
   non-local block attends over the 32x40 = 1280 positions of P4.
3. The samplers alone: one image's 2000 proposals subsampled to 512 by detectron2's random
   sampler and by IoU-balanced sampling.
"""

import argparse
import copy
import random
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.sampling import subsample_labels
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

import lt_d2.modeling  # noqa: F401  (registers datasets, heads and backbones)
from lt_d2.config import add_lt_config, merge_lt_config
from lt_d2.modeling.roi_heads.sampling import iou_balanced_subsample

DEFAULT_CONFIG = "configs/demo/softmax_mask_rcnn_R_18_FPN_demo.yaml"

# (name, config overrides) of each measured variant; "baseline" must come first.
_BFP = ["MODEL.BACKBONE.NAME", "build_resnet_bfp_backbone"]
VARIANTS = [
    ("baseline", []),
    ("iou_balanced_sampling", ["MODEL.ROI_HEADS.SAMPLER", "IoUBalanced"]),
    ("bfp_integration_only", _BFP + ["MODEL.BFP.REFINE_TYPE", "none"]),
    ("bfp_conv", _BFP + ["MODEL.BFP.REFINE_TYPE", "conv"]),
    ("bfp_non_local", _BFP + ["MODEL.BFP.REFINE_TYPE", "non_local"]),
    ("balanced_l1", ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1"]),
    ("lgr_l1", ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "lgr_l1"]),
    (
        "libra_all",
        ["MODEL.ROI_HEADS.SAMPLER", "IoUBalanced"]
        + _BFP
        + ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1"],
    ),
]


def _cfg(config_file, overrides):
    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(cfg, config_file, overrides + ["MODEL.DEVICE", "cpu"])
    return cfg


def _batch(cfg):
    """The first IMS_PER_BATCH training images, mapped (augmented) once."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)[: cfg.SOLVER.IMS_PER_BATCH]
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(copy.deepcopy(d)) for d in dicts]


class _Variant:
    def __init__(self, cfg):
        torch.manual_seed(0)
        self.model = build_model(cfg)
        self.model.train()
        self.optimizer = build_optimizer(cfg, self.model)
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self, batch) -> float:
        """Seconds of one training step."""
        start = time.perf_counter()
        with EventStorage():
            losses = self.model(batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {losses}")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def _interleaved_medians(steps, rounds, warmup):
    """Median seconds of each ``steps[name]()``, timed in a shuffled order every round."""
    times = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(0)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            seconds = steps[name]()
            if r >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def _print_table(title, medians, extra=None):
    base = next(iter(medians.values()))
    print(f"\n{title}")
    print(
        f"{'variant':<24}{'median ms':>12}{'ratio':>8}" + (f"{'params ratio':>14}" if extra else "")
    )
    for name, median in medians.items():
        line = f"{name:<24}{1000 * median:>12.1f}{median / base:>8.2f}"
        print(line + (f"{extra[name]:>14.3f}" if extra else ""))


def _bench_demo_model(config_file, rounds, warmup):
    variants = {name: _Variant(_cfg(config_file, opts)) for name, opts in VARIANTS}
    batch = _batch(_cfg(config_file, []))
    medians = _interleaved_medians(
        {name: (lambda v=v: v.step(batch)) for name, v in variants.items()}, rounds, warmup
    )
    base_params = variants["baseline"].params
    _print_table(
        f"1. demo model ({config_file}), {len(batch)} images per training step",
        medians,
        {name: v.params / base_params for name, v in variants.items()},
    )


def _backbone_step(backbone, image):
    start = time.perf_counter()
    features = backbone(image)
    sum(f.float().pow(2).mean() for f in features.values()).backward()
    backbone.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _bench_full_width_bfp(rounds, warmup):
    backbones = {}
    for name, opts in [
        ("fpn", ["MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"]),
        ("bfp_integration_only", _BFP + ["MODEL.BFP.REFINE_TYPE", "none"]),
        ("bfp_conv", _BFP + ["MODEL.BFP.REFINE_TYPE", "conv"]),
        ("bfp_non_local", _BFP + ["MODEL.BFP.REFINE_TYPE", "non_local"]),
    ]:
        cfg = _cfg(DEFAULT_CONFIG, ["MODEL.RESNETS.DEPTH", "50", "MODEL.FPN.OUT_CHANNELS", "256"])
        cfg.merge_from_list(opts + ["MODEL.RESNETS.RES2_OUT_CHANNELS", "256"])
        torch.manual_seed(0)
        backbones[name] = build_backbone(cfg, ShapeSpec(channels=3)).train()
    image = torch.randn(1, 3, 512, 640)
    medians = _interleaved_medians(
        {name: (lambda b=b: _backbone_step(b, image)) for name, b in backbones.items()},
        rounds,
        warmup,
    )
    _print_table("2. R50-FPN backbone, 256 channels, one 512x640 image, forward+backward", medians)


def _bench_samplers(rounds, warmup):
    torch.manual_seed(0)
    num_proposals, bg = 2000, 80
    labels = torch.full((num_proposals,), bg)
    max_ious = torch.rand(num_proposals) * 0.5
    positive = torch.rand(num_proposals) < 0.05
    labels[positive] = torch.randint(0, bg, (int(positive.sum()),))
    max_ious[positive] = 0.5 + 0.5 * torch.rand(int(positive.sum()))
    matched = torch.randint(0, 10, (num_proposals,))

    def timed(fn):
        def step():
            start = time.perf_counter()
            for _ in range(20):
                fn()
            return (time.perf_counter() - start) / 20

        return step

    medians = _interleaved_medians(
        {
            "random (detectron2)": timed(lambda: subsample_labels(labels, 512, 0.25, bg)),
            "iou_balanced": timed(
                lambda: iou_balanced_subsample(labels, max_ious, matched, 512, 0.25, bg)
            ),
            "iou_balanced+per_gt": timed(
                lambda: iou_balanced_subsample(
                    labels, max_ious, matched, 512, 0.25, bg, positive_balance="per_gt"
                )
            ),
            "iou_balanced+per_class": timed(
                lambda: iou_balanced_subsample(
                    labels, max_ious, matched, 512, 0.25, bg, positive_balance="per_class"
                )
            ),
        },
        rounds,
        warmup,
    )
    _print_table("3. one image: 2000 proposals -> 512 samples", medians)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; medians of {args.rounds} timed steps per variant")
    _bench_demo_model(args.config_file, args.rounds, args.warmup)
    _bench_full_width_bfp(max(args.rounds // 2, 2), 1)
    _bench_samplers(args.rounds, args.warmup)


if __name__ == "__main__":
    main()
