"""Forward+backward time and peak extra memory of the dense classification losses.

Compares, in the same run, for N anchors x C classes (default 50,000 x 1,203, LVIS-size
RetinaNet/ATSS batches):

- ``fvcore_focal``: fvcore's ``sigmoid_focal_loss`` used as detectron2's RetinaNet uses it
  (valid rows selected, one-hot targets, sum / normalizer): the baseline of the ratios;
- ``focal`` / ``efl`` / ``eqlv2_focal``: lt_d2's FocalLoss, EqualizedFocalLoss (state spread
  over ratios in [0, 1.2], a mid-training state) and EQLv2Focal, compiled
  (``torch.compile(dynamic=True)``, the default) unless ``--eager``;
- ``<case>+stats``: the same with GradientStats on (the head's hooks on the logits and on
  ``loss_cls``), whose ratio to ``<case>`` is the cost of the diagnostics.

Method.
- Time: one subprocess runs every case: a first call (compiles; its time is reported), one
  warm-up, then ``--rounds`` rounds in which every case runs once in turn, in reverse order
  every other round (a shared machine's load hits all alike). Reported: the median time per
  case, and the medians over rounds of the ratios within a round (to fvcore's time, and with
  GradientStats to the time of the same case without it).
- Memory: one fresh subprocess per case. On the CPU glibc's mmap threshold is pinned
  (``MALLOC_MMAP_THRESHOLD_``) so every allocation above 64 KiB is its own mapping, returned to
  the OS on free: the resident set tracks the live tensors. After a first call (compilation)
  the process resets its peak resident set (``/proc/self/clear_refs`` = 5), reads VmRSS, runs
  one forward+backward and reads the peak VmHWM. On CUDA: ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats``. Extra peak = the peak beyond logits and labels, the
  logits' gradient included, as a multiple of the logits' size.

Threads: ``--threads 1`` by default (a shared 2-core machine's thread barriers otherwise
dominate); ``--threads 0`` is torch's default.

Targets: FocalLoss, EFL, EQLv2Focal <= 0.35x fvcore's time and <= 1.1x the logits in extra
peak memory; with GradientStats on, <= 1.1x the time without.

Usage: ``python benchmarks/bench_dense_losses.py [--device cuda] [--anchors 50000]
[--classes 1203] [--rounds 5]``
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ["focal", "efl", "eqlv2_focal"]
# each case with GradientStats right after the same case without, so that a round times them
# back to back
CASES = ["fvcore_focal"] + [c for m in METHODS for c in (m, f"{m}+stats")]
BASELINE = "fvcore_focal"


def _kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _inputs(num_anchors, num_classes, device):
    """Seeded logits and labels: ~1% foreground anchors, ~5% ignored, the rest background."""
    import torch

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(num_anchors, num_classes, generator=gen) * 2.0 - 4.0
    u = torch.rand(num_anchors, generator=gen)
    gt = torch.full((num_anchors,), num_classes, dtype=torch.long)
    fg = u < 0.01
    gt[fg] = torch.randint(0, num_classes, (int(fg.sum()),), generator=gen)
    gt[(u >= 0.01) & (u < 0.06)] = -1
    return logits.to(device).requires_grad_(), gt.to(device)


def _case_step(case, num_classes, normalizer, device):
    """A closure running one forward+backward of ``case`` on (logits, gt)."""
    import torch
    from torch.nn import functional as F

    if case == "fvcore_focal":
        from fvcore.nn import sigmoid_focal_loss

        def step(logits, gt):
            valid = gt >= 0
            target = F.one_hot(gt[valid], num_classes + 1)[:, :-1].to(logits.dtype)
            loss = sigmoid_focal_loss(logits[valid], target, 0.25, 2.0, "sum") / normalizer
            loss.backward()

        return step

    from lt_d2.classifiers.dense.efl import EqualizedFocalLoss
    from lt_d2.classifiers.dense.eqlv2_focal import EQLv2Focal
    from lt_d2.classifiers.dense.focal import FocalLoss
    from lt_d2.classifiers.gradient_stats import GradientStats

    method, _, stats = case.partition("+")
    cls = {"focal": FocalLoss, "efl": EqualizedFocalLoss, "eqlv2_focal": EQLv2Focal}[method]
    module = cls(num_classes=num_classes).to(device).train()
    if method != "focal":
        gen = torch.Generator().manual_seed(1)
        neg = torch.rand(num_classes, generator=gen, dtype=torch.float64) + 1.0
        module.pos_grad.copy_(torch.rand(num_classes, generator=gen, dtype=torch.float64) * neg)
        module.neg_grad.copy_(neg)
    gradient_stats = GradientStats(module).to(device).train() if stats else None

    def step(logits, gt):
        if gradient_stats is None:
            module.losses(logits, gt, normalizer)["loss_cls"].backward()
            return
        loss = module.losses(gradient_stats.observe(logits, gt), gt, normalizer)["loss_cls"]
        gradient_stats.watch_loss(loss).backward()

    return step


def _synchronize(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(step, logits, gt, device):
    _synchronize(device)
    start = time.perf_counter()
    step(logits, gt)
    _synchronize(device)
    logits.grad = None
    return time.perf_counter() - start


def _setup(args):
    import torch

    from lt_d2.classifiers.compile import set_compile_enabled

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Measured on the development machine (AMD EPYC, glibc): log1p-based ATen kernels (softplus,
    # BCE-with-logits, logaddexp) run 4-6x faster in a process that has once run the
    # vectorised pow with a tensor exponent, a process-wide state that then persists; one such
    # call here gives the eager baseline its faster state.
    torch.pow(torch.rand(1 << 16), torch.rand(1 << 16))
    set_compile_enabled(not args.eager)
    logits, gt = _inputs(args.anchors, args.classes, args.device)
    normalizer = max(float(((gt >= 0) & (gt < args.classes)).sum()), 1.0)
    return logits, gt, normalizer


def run_memory(args):
    import torch

    logits, gt, normalizer = _setup(args)
    step = _case_step(args.case, args.classes, normalizer, args.device)
    step(logits, gt)  # first call: compilation
    logits.grad = None
    size = logits.numel() * logits.element_size()
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(logits, gt)
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - before) / size
    else:
        _reset_peak_rss()
        before = _kib("VmRSS")
        step(logits, gt)
        extra = (_kib("VmHWM") - before) * 1024 / size
    print(json.dumps({"extra_peak": extra}))


def run_time(args):
    import torch

    logits, gt, normalizer = _setup(args)
    steps = {c: _case_step(c, args.classes, normalizer, args.device) for c in args.cases}
    first = {c: _timed(s, logits, gt, args.device) for c, s in steps.items()}
    for s in steps.values():
        _timed(s, logits, gt, args.device)  # warm-up
    times = {c: [] for c in steps}
    for r in range(args.rounds):
        for c in list(steps)[:: 1 if r % 2 == 0 else -1]:
            times[c].append(_timed(steps[c], logits, gt, args.device))

    def ratio(case, base):
        if base not in times:
            return None
        return statistics.median(a / b for a, b in zip(times[case], times[base]))

    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "first_s": first,
                "median_s": {c: statistics.median(t) for c, t in times.items()},
                "spread_s": {c: [min(t), max(t)] for c, t in times.items()},
                "per_fvcore": {c: ratio(c, BASELINE) for c in times},
                "per_no_stats": {c: ratio(c, c.partition("+")[0]) for c in times if "+" in c},
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--anchors", type=int, default=50000)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--eager", action="store_true", help="lt_d2's losses not compiled")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # subprocess mode
    parser.add_argument("--mode", choices=["memory", "time"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "memory":
        run_memory(args)
        return
    if args.mode == "time":
        run_time(args)
        return

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    common = [f"--{k}={getattr(args, k)}" for k in ("device", "anchors", "classes", "threads")]
    common += ["--eager"] if args.eager else []

    def run(extra, extra_env=None):
        cmd = [sys.executable, __file__] + common + extra
        out = subprocess.run(
            cmd, env=dict(env, **(extra_env or {})), check=True, capture_output=True, text=True
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    timing = run(["--mode", "time", f"--rounds={args.rounds}", "--cases", *args.cases])
    print(f"  timed: {timing}", file=sys.stderr, flush=True)
    memory = {}
    pinned = {"MALLOC_MMAP_THRESHOLD_": "65536"} if args.device == "cpu" else {}
    for case in args.cases:
        memory[case] = run(["--mode", "memory", "--case", case], pinned)["extra_peak"]
        print(f"  memory {case}: {memory[case]:.2f}x", file=sys.stderr, flush=True)

    median = timing["median_s"]
    size_mb = args.anchors * args.classes * 4 / 2**20
    print(
        f"N = {args.anchors} anchors x C = {args.classes} classes (logits {size_mb:.0f} MiB), "
        f"device {args.device}, threads = {timing['threads']}, median of {args.rounds} rounds, "
        f"{'eager' if args.eager else 'compiled'}"
    )
    header = ("case", "median s", "/ fvcore", "/ no stats", "extra peak", "first call s")
    print(f"{header[0]:<20}" + "".join(f"{h:>14}" for h in header[1:]))
    for case in args.cases:
        per_fvcore = timing["per_fvcore"][case]
        ratio = f"{per_fvcore:.2f}x" if per_fvcore is not None else "-"
        per_plain = timing["per_no_stats"].get(case)
        stats = f"{per_plain:.2f}x" if per_plain is not None else "-"
        print(
            f"{case:<20}{median[case]:>14.3f}{ratio:>14}{stats:>14}{memory[case]:>13.2f}x"
            f"{timing['first_s'][case]:>14.2f}"
        )
    print(
        "/ fvcore, / no stats: medians over rounds of the ratio within a round; extra peak: "
        "peak memory during one fwd+bwd beyond the inputs, / logits' size; first call: "
        "includes compilation"
    )


if __name__ == "__main__":
    main()
