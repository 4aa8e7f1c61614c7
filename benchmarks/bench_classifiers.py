"""Forward + backward time and peak memory of every registered two-stage classifier, and the
cost of GradientStats on a dense classifier.

Setting of the issue's target: R = 8192 ROIs x C = 1203 classes (LVIS v1), 25% foreground
ROIs (detectron2's ROI_HEADS.POSITIVE_FRACTION) whose classes follow a synthetic long-tailed
instance-count distribution (the same counts form the CategoryStats that BAGS, EQL, DropLoss
... read). One step is ``sum(classifier.losses(logits, gt).values()).backward()`` with
``logits`` a leaf tensor, so only the classifier's own cost is measured.

Targets (issue 12, item 7), ratios measured in the same run: every two-stage classifier at
most 1.2x SigmoidBCE's time and 1.5x its peak memory; FocalLoss with GradientStats (through
the ClassifierHead contract, as a dense head runs it) at most 1.1x FocalLoss alone at
``--anchors`` 50,000 x 1203 (``--dense``).

Time: ``--warmup`` untimed rounds, then ``--rounds`` timed rounds; a round runs one step of
every case in turn (interleaved, so a shared machine's load hits all cases alike), in a
shuffled order, each CPU step from a trimmed heap (a step's time depends on the step before
it). Printed:
each case's median step time and the median over rounds of its time divided by the
baseline's time in the same round (``torch.cuda.synchronize`` around each step on CUDA).

Peak memory: the most bytes alive at any moment of one step, above what was alive when the
step began (so the logits and labels are excluded; the logits' gradient is included).
On CUDA that is ``torch.cuda.max_memory_allocated`` minus the allocation at the start. On
the CPU it is read from torch.profiler's allocator records (``profile_memory=True``): every
allocation and free of the step with its size, in time order; their running sum is the
live-byte curve and its maximum the peak. (tracemalloc does not see torch's allocator.)

    .venv/bin/python benchmarks/bench_classifiers.py [--device cuda] [--rounds 7] [--threads 1]
        [--dense [--anchors 50000]] [--names DropLoss ...]
"""

import argparse
import ctypes
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import get_cfg
from torch import nn

from lt_d2.classifiers import CLASSIFIER_REGISTRY, build_classifier
from lt_d2.classifiers.dense.focal import FocalLoss
from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats
from lt_d2.modeling.classifier_head import ClassifierHead

BASELINES = ("SigmoidBCE", "SoftmaxCE")


def long_tailed_stats(num_classes: int) -> CategoryStats:
    """Zipf-like instance counts from ~1 to 50,000 (every BAGS group non-empty)."""
    rank = np.arange(1, num_classes + 1, dtype=np.float64)
    instances = np.maximum(1, np.round(50000 * rank**-1.5)).astype(np.int64)
    images = np.maximum(1, instances // 2)
    return CategoryStats(
        instance_counts=instances.tolist(), image_counts=images.tolist(), num_images=100000
    )


def make_labels(stats: CategoryStats, num_rois: int, seed: int = 0) -> torch.Tensor:
    """(R,) labels: 25% foreground drawn in proportion to instance counts, the rest background."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(stats.instance_count_array, dtype=torch.float64)
    gt = torch.full((num_rois,), stats.num_classes, dtype=torch.long)
    num_fg = num_rois // 4
    gt[:num_fg] = torch.multinomial(counts, num_fg, replacement=True, generator=g)
    return gt[torch.randperm(num_rois, generator=g)]


def peak_bytes_cpu(step: Callable[[], None]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    live, peak = 0, 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def peak_bytes_cuda(step: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def _two_stage_step(name: str, cfg, stats: CategoryStats, gt: torch.Tensor, device):
    """(num_logits, step) of two-stage classifier ``name`` on fixed logits."""
    cfg = cfg.clone()
    cfg.MODEL.CLASSIFIER.NAME = name
    model = build_classifier(cfg, stats.num_classes, stats).to(device).train()
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(gt.shape[0], model.num_logits, generator=g) * 2).to(device)
    logits.requires_grad_(True)
    gt = gt.to(device)

    def step():
        logits.grad = None
        loss = sum(model.losses(logits, gt).values())
        loss.backward()
        logits.grad = None

    return model.num_logits, step


class _DenseHead(ClassifierHead, nn.Module):
    """The smallest ClassifierHead: a dense classifier and, optionally, its GradientStats."""

    def __init__(self, classifier, gradient_stats: bool):
        nn.Module.__init__(self)
        self.attach_classifier(classifier, gradient_stats)


def _dense_step(gradient_stats: bool, num_anchors: int, num_classes: int, device):
    """FocalLoss's step through ``ClassifierHead.classification_losses``, with or without
    GradientStats; labels: 1% foreground (long-tailed classes), 1% ignored, the rest
    background, as in a RetinaNet batch."""
    head = _DenseHead(FocalLoss(num_classes=num_classes), gradient_stats).to(device).train()
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(num_anchors, num_classes, generator=g) * 2 - 4).to(device)
    logits.requires_grad_(True)
    stats = long_tailed_stats(num_classes)
    gt = torch.full((num_anchors,), num_classes, dtype=torch.long)
    num_fg = max(num_anchors // 100, 1)
    counts = torch.as_tensor(stats.instance_count_array, dtype=torch.float64)
    gt[:num_fg] = torch.multinomial(counts, num_fg, replacement=True, generator=g)
    gt[num_fg : 2 * num_fg] = -1
    gt = gt[torch.randperm(num_anchors, generator=g)].to(device)

    def step():
        logits.grad = None
        loss = sum(head.classification_losses(logits, gt, float(num_fg)).values())
        loss.backward()
        logits.grad = None

    return num_classes, step


def run_interleaved(
    steps: Dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device
) -> Dict[str, List[float]]:
    """Seconds per step of every case, ``rounds`` rounds of one step per case in turn, in an
    order shuffled every round (seeded). A CPU step's time depends on what ran just before it
    (whether glibc's allocator still holds pages the previous step freed, or must fault in new
    ones): on Linux every step starts from a trimmed heap (``malloc_trim``)."""
    if device.type == "cuda":
        sync = torch.cuda.synchronize
    elif sys.platform.startswith("linux"):
        trim = ctypes.CDLL("libc.so.6").malloc_trim
        sync = lambda *a: trim(0)  # noqa: E731
    else:
        sync = lambda *a: None  # noqa: E731
    times: Dict[str, List[float]] = {name: [] for name in steps}
    order = list(steps)
    for r in range(warmup + rounds):
        random.Random(r).shuffle(order)
        for name in order:
            step = steps[name]
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def report(
    title: str,
    baselines: Sequence[str],
    num_logits: Dict[str, int],
    times: Dict[str, List[float]],
    peaks: Dict[str, int],
    time_target: float,
    memory_target: float,
) -> None:
    """One row per case: median ms, median per-round time ratio and peak-memory ratio to each
    baseline, and whether the targets (ratios to the first baseline) hold."""
    print(title)
    header = f"{'case':<26}{'L':>6}{'ms':>9}" + "".join(f"{'x ' + b[:10]:>13}" for b in baselines)
    header += f"{'peak MB':>10}" + "".join(f"{'x ' + b[:10]:>13}" for b in baselines)
    print(header + "  target")
    print("-" * (len(header) + 8))
    for name, t in times.items():
        ratios = [statistics.median(a / b for a, b in zip(t, times[base])) for base in baselines]
        memory = [peaks[name] / peaks[base] for base in baselines]
        ok = ratios[0] <= time_target and memory[0] <= memory_target
        print(
            f"{name:<26}{num_logits[name]:>6}{statistics.median(t) * 1e3:>9.1f}"
            + "".join(f"{r:>13.2f}" for r in ratios)
            + f"{peaks[name] / 2**20:>10.1f}"
            + "".join(f"{m:>13.2f}" for m in memory)
            + f"  {'ok' if ok else 'MISS'}"
        )


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rois", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (one step per case)")
    parser.add_argument("--names", nargs="*", help="only these (baselines always included)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument(
        "--dense",
        action="store_true",
        help="measure FocalLoss with and without GradientStats instead of the two-stage set",
    )
    parser.add_argument("--anchors", type=int, default=50000, help="N of --dense")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # log1p-based kernels (softplus, logaddexp) run several times faster once the process has
    # run a vectorised pow with a tensor exponent (see bench_dense_losses.py): put every case
    # in that state before the first is measured.
    torch.pow(torch.rand(1 << 16), torch.rand(1 << 16))
    steps: Dict[str, Callable[[], None]] = {}
    num_logits: Dict[str, int] = {}
    failures: Dict[str, str] = {}
    if args.dense:
        baselines: Sequence[str] = ("FocalLoss",)
        for name, with_stats in (("FocalLoss", False), ("FocalLoss+GradientStats", True)):
            num_logits[name], steps[name] = _dense_step(
                with_stats, args.anchors, args.classes, device
            )
        title = f"N = {args.anchors} anchors x C = {args.classes} classes"
        time_target, memory_target = 1.1, float("inf")
    else:
        baselines = BASELINES
        names = sorted(name for name, _ in CLASSIFIER_REGISTRY)
        if args.names:
            unknown = set(args.names) - set(names)
            if unknown:
                raise SystemExit(f"unknown classifiers {sorted(unknown)}; registered: {names}")
            names = [n for n in names if n in args.names or n in BASELINES]
        missing = [b for b in BASELINES if b not in names]
        if missing:
            raise SystemExit(f"baseline classifiers {missing} are not registered; have {names}")
        cfg = get_cfg()
        add_lt_config(cfg)
        stats = long_tailed_stats(args.classes)
        gt = make_labels(stats, args.rois)
        for name in names:
            try:
                num_logits[name], steps[name] = _two_stage_step(name, cfg, stats, gt, device)
                steps[name]()  # fails here rather than mid-round
            except Exception as e:  # report the classifier's failure, measure the others
                if name in BASELINES:
                    raise
                steps.pop(name, None)
                failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        title = f"R = {args.rois} ROIs x C = {args.classes} classes"
        time_target, memory_target = 1.2, 1.5
    times = run_interleaved(steps, args.rounds, args.warmup, device)
    peak = (lambda step: peak_bytes_cuda(step, device)) if device.type == "cuda" else peak_bytes_cpu
    peaks = {name: peak(step) for name, step in steps.items()}
    report(
        f"{title} on {device} ({torch.get_num_threads()} threads), forward + backward of the "
        f"loss, {args.rounds} interleaved rounds (median); targets: time <= {time_target}x"
        + (f", memory <= {memory_target}x" if memory_target < float("inf") else "")
        + f" {baselines[0]}",
        baselines,
        num_logits,
        times,
        peaks,
        time_target,
        memory_target,
    )
    for name, error in failures.items():
        print(f"{name:<26} FAILED  {error}")


if __name__ == "__main__":
    main()
