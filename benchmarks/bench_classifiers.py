"""Forward + backward time, extra peak memory and first-call compile time of every registered
two-stage classifier (the dense ones: bench_dense_losses.py).

Setting: R = 8192 ROIs x C = 1203 classes (LVIS v1), 25% foreground ROIs
(detectron2's ROI_HEADS.POSITIVE_FRACTION) whose classes follow a synthetic long-tailed
instance-count distribution (the same counts form the CategoryStats that BAGS, EQL, DropLoss
... read). One step is ``sum(classifier.losses(logits, gt).values()).backward()`` with
``logits`` a leaf tensor of the classifier's own width L, so only the classifier's own cost is
measured, its loss functions as the training runs them (compiled unless ``--eager``).

Baseline: eager ``torch.nn.functional.binary_cross_entropy_with_logits`` with one-hot float
targets (made once, outside the step) on (R, L) logits of the same shape, forward + backward.
Targets, ratios measured in the same run: every classifier at most 0.6x the baseline's time
and at most 1.2x its own logits' bytes in extra peak memory.

Time: ``--warmup`` untimed rounds, then ``--rounds`` timed rounds; a round runs one step of
every case in turn (interleaved, so a shared machine's load hits all cases alike), in a
shuffled order, each CPU step from a trimmed heap (a step's time depends on the step before
it). Printed: each case's median step time and the median over rounds of its time divided by
its baseline's time in the same round (``torch.cuda.synchronize`` around each step on CUDA).

Peak memory: the most bytes alive at any moment of one step, above what was alive when the
step began (so the logits and labels are excluded; the logits' gradient is included), divided
by the logits' bytes. On CUDA that is ``torch.cuda.max_memory_allocated`` minus the allocation
at the start. On the CPU it is read from torch.profiler's allocator records
(``profile_memory=True``): every allocation and free of the step with its size, in time order;
their running sum is the live-byte curve and its maximum the peak. (tracemalloc does not see
torch's allocator.)

Compile time: each classifier's first step (``torch.compile`` of its loss function, forward
and backward graphs) minus its median step, with an empty compiler cache (a new temporary
``TORCHINDUCTOR_CACHE_DIR``, or ``--cache-dir``).

    .venv/bin/python benchmarks/bench_classifiers.py [--device cuda] [--rounds 7] [--threads 1]
        [--eager] [--cache-dir DIR] [--names DropLoss ...]
"""

import argparse
import ctypes
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from lt_d2.classifiers import CLASSIFIER_REGISTRY, build_classifier
from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats

TIME_TARGET, MEMORY_TARGET = 0.6, 1.2


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


def _random_logits(num_rows: int, num_logits: int, device, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_rows, num_logits, generator=g) * 2).to(device)
    return logits.requires_grad_(True)


def _two_stage_step(name: str, cfg, stats: CategoryStats, gt: torch.Tensor, device):
    """(num_logits, step) of two-stage classifier ``name`` on fixed logits."""
    cfg = cfg.clone()
    cfg.MODEL.CLASSIFIER.NAME = name
    model = build_classifier(cfg, stats.num_classes, stats).to(device).train()
    logits = _random_logits(gt.shape[0], model.num_logits, device)
    gt = gt.to(device)

    def step():
        logits.grad = None
        loss = sum(model.losses(logits, gt).values())
        loss.backward()
        logits.grad = None

    return model.num_logits, step


def _bce_step(gt: torch.Tensor, num_logits: int, device) -> Callable[[], None]:
    """The baseline: eager sigmoid BCE with one-hot targets on (R, num_logits) logits."""
    logits = _random_logits(gt.shape[0], num_logits, device)
    # y_rj = [gt_r = j]; with L = C a background ROI (gt_r = C) is an all-zero row
    width = max(num_logits, int(gt.max()) + 1)
    targets = F.one_hot(gt, width)[:, :num_logits].float().to(device)

    def step():
        logits.grad = None
        F.binary_cross_entropy_with_logits(logits, targets).backward()
        logits.grad = None

    return step


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """What runs around every timed step: a CUDA sync, or on Linux a trimmed heap (whether
    glibc's allocator still holds pages the previous step freed changes a step's time)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if sys.platform.startswith("linux"):
        trim = ctypes.CDLL("libc.so.6").malloc_trim
        return lambda: trim(0)
    return lambda: None


def timed(step: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - t0


def run_interleaved(
    steps: Dict[str, Callable[[], None]], rounds: int, warmup: int, sync: Callable[[], None]
) -> Dict[str, List[float]]:
    """Seconds per step of every case, ``rounds`` rounds of one step per case in turn, in an
    order shuffled every round (seeded)."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    order = list(steps)
    for r in range(warmup + rounds):
        random.Random(r).shuffle(order)
        for name in order:
            seconds = timed(steps[name], sync)
            if r >= warmup:
                times[name].append(seconds)
    return times


def _median_ratio(times: List[float], baseline: List[float]) -> float:
    return statistics.median(a / b for a, b in zip(times, baseline))


def two_stage(args, device: torch.device, sync: Callable[[], None]) -> None:
    names = sorted(name for name, _ in CLASSIFIER_REGISTRY)
    if args.names:
        unknown = set(args.names) - set(names)
        if unknown:
            raise SystemExit(f"unknown classifiers {sorted(unknown)}; registered: {names}")
        names = [n for n in names if n in args.names]
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.COMPILE_LOSSES = not args.eager
    stats = long_tailed_stats(args.classes)
    gt = make_labels(stats, args.rois)
    steps: Dict[str, Callable[[], None]] = {}
    num_logits: Dict[str, int] = {}
    first_step: Dict[str, float] = {}
    failures: Dict[str, str] = {}
    for name in names:
        try:
            num_logits[name], steps[name] = _two_stage_step(name, cfg, stats, gt, device)
            first_step[name] = timed(steps[name], sync)  # compiles; fails here, not mid-round
        except Exception as e:  # report the classifier's failure, measure the others
            steps.pop(name, None)
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    baselines = {f"BCE eager, L = {L}": L for L in sorted(set(num_logits.values()))}
    for case, L in baselines.items():
        steps[case] = _bce_step(gt, L, device)
    times = run_interleaved(steps, args.rounds, args.warmup, sync)
    peak = (lambda step: peak_bytes_cuda(step, device)) if device.type == "cuda" else peak_bytes_cpu
    mode = "eager" if args.eager else "compiled"
    print(
        f"R = {args.rois} ROIs x C = {args.classes} classes on {device} "
        f"({torch.get_num_threads()} threads), {mode} losses, forward + backward, "
        f"{args.rounds} interleaved rounds (median); targets: time <= {TIME_TARGET}x eager BCE "
        f"on logits of the same shape, extra peak memory <= {MEMORY_TARGET}x the logits"
    )
    header = (
        f"{'classifier':<22}{'L':>6}{'ms':>9}{'BCE ms':>9}{'x BCE':>8}"
        f"{'peak MB':>10}{'x logits':>10}{'compile s':>11}  target"
    )
    print(header)
    print("-" * len(header))
    for case, L in baselines.items():
        t = times[case]
        print(f"{case:<22}{L:>6}{statistics.median(t) * 1e3:>9.1f}")
    for name in num_logits:
        if name in failures:
            continue
        t, base = times[name], times[f"BCE eager, L = {num_logits[name]}"]
        ratio = _median_ratio(t, base)
        logits_bytes = args.rois * num_logits[name] * 4
        peak_bytes = peak(steps[name])
        memory = peak_bytes / logits_bytes
        compile_s = first_step[name] - statistics.median(t)
        ok = ratio <= TIME_TARGET and memory <= MEMORY_TARGET
        print(
            f"{name:<22}{num_logits[name]:>6}{statistics.median(t) * 1e3:>9.1f}"
            f"{statistics.median(base) * 1e3:>9.1f}{ratio:>8.2f}{peak_bytes / 2**20:>10.1f}"
            f"{memory:>10.2f}{compile_s:>11.1f}  {'ok' if ok else 'MISS'}"
        )
    for name, error in failures.items():
        print(f"{name:<22} FAILED  {error}")


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rois", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (one step per case)")
    parser.add_argument("--names", nargs="*", help="only these two-stage classifiers")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    parser.add_argument("--eager", action="store_true", help="run the loss functions eagerly")
    parser.add_argument(
        "--cache-dir", help="compiler cache (default: a new, empty temporary directory)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir or tempfile.mkdtemp(prefix="inductor-")
    device = torch.device(args.device)
    # log1p-based kernels (softplus, logaddexp) run several times faster once the process has
    # run a vectorised pow with a tensor exponent (see bench_dense_losses.py): put every case
    # in that state before the first is measured.
    torch.pow(torch.rand(1 << 16), torch.rand(1 << 16))
    sync = _synchronizer(device)
    two_stage(args, device, sync)


if __name__ == "__main__":
    main()
