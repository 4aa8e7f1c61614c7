#!/usr/bin/env python
"""Cost of GradientStats (the per-category logit-gradient hook) against a training step.

    .venv/bin/python benchmarks/bench_gradient_stats.py [--config-file configs/demo/...yaml]
        [--rounds 8] [--threads 1] [--device cuda]

1. The demo model with MODEL.GRADIENT_STATS.ENABLED True and False, built from the same seed
   and trained on the same fixed batch, one step of each in turn, round after round (so a
   shared machine's load hits both alike); medians and their ratio are printed.
2. The hook's own work (``positive_negative_sums`` on a logit gradient), timed alone for the
   demo's ROI logits and for LVIS-sized ones (1024 ROIs x 1204 logits; 20k anchors x 1203),
   printed as a fraction of the demo step measured in part 1.

Target: the hook's work at most 2% of a demo iteration.
"""

import argparse
import statistics
import time

import torch
from bench_libra import DEFAULT_CONFIG, _batch, _cfg, _Variant

from lt_d2.classifiers.gradient_stats import positive_negative_sums


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_sums(rows: int, logits: int, classes: int, repeats: int, device: str) -> float:
    """Median seconds of one accumulation for an (rows, logits) gradient (the first call,
    which compiles the reduction, is one of ``repeats`` and falls outside the median)."""
    grad = torch.randn(rows, logits, device=device)
    gt = torch.randint(-1, classes + 1, (rows,), device=device)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        positive_negative_sums(grad, gt, None, classes)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cfg_on(device: str, config_file: str, overrides):
    cfg = _cfg(config_file, overrides)
    cfg.MODEL.DEVICE = device
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = {
        name: _Variant(
            _cfg_on(args.device, args.config_file, ["MODEL.GRADIENT_STATS.ENABLED", enabled])
        )
        for name, enabled in (("without", "False"), ("with", "True"))
    }
    batch = _batch(_cfg_on(args.device, args.config_file, []))
    times = {name: [] for name in variants}
    for r in range(args.warmup + args.rounds):
        for name, variant in variants.items():
            _synchronize(args.device)
            start = time.perf_counter()
            variant.step(batch)
            _synchronize(args.device)
            seconds = time.perf_counter() - start
            if r >= args.warmup:
                times[name].append(seconds)
    base = statistics.median(times["without"])
    with_stats = statistics.median(times["with"])
    print(f"config: {args.config_file}, {len(batch)} images/step, {args.rounds} timed steps")
    print(
        f"demo step without GradientStats: {base:.3f} s, with: {with_stats:.3f} s, "
        f"ratio {with_stats / base:.3f}"
    )

    cfg = _cfg(args.config_file, [])
    demo_rows = cfg.SOLVER.IMS_PER_BATCH * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    demo_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    print(f"{'hook work alone':<40}{'median ms':>10}{'/ demo step':>13}")
    for label, rows, logits, classes in (
        (f"demo ROIs {demo_rows} x {demo_classes + 1}", demo_rows, demo_classes + 1, demo_classes),
        ("LVIS ROIs 1024 x 1204", 1024, 1204, 1203),
        ("LVIS dense 20000 x 1203", 20000, 1203, 1203),
    ):
        seconds = _time_sums(rows, logits, classes, repeats=20, device=args.device)
        print(f"{label:<40}{seconds * 1e3:>10.3f}{seconds / base:>13.4f}")


if __name__ == "__main__":
    main()
