#!/usr/bin/env python
"""Peak memory and time of a dense detector's decoding of one 800 x 1333 image at 1203
classes and SCORE_THRESH_TEST 0.0 (the EFL configs), detectron2's against lt_d2's.

    .venv/bin/python benchmarks/bench_dense_decoding.py [--classes 1203] [--height 800]
        [--width 1333]

The inputs are RetinaNet's on P3-P7 (strides 8-128, 9 anchors per location): random scores
in (0, 1), so a threshold of 0.0 keeps every one, as a sigmoid does; each level's best 2000
are distinct (with ties, the two decodings may keep different anchors of equal score). Each
decoding runs in a fresh interpreter (so that peak memory is its own):
``RetinaNet.inference_single_image`` of an LTRetinaNet with detectron2's per-level decoding
(``DenseDetector._decode_per_level_predictions``: threshold, then top-k) and with lt_d2's
(top-k, then threshold). Printed: wall time and peak resident memory above the inputs (Linux: the
process's VmHWM, reset through /proc/self/clear_refs just before the decoding),
lt_d2's as a ratio of detectron2's, and whether the detections are identical.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = r"""
import json, math, sys, time
import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes
sys.path.insert(0, {tests!r})
from helpers.tiny_dense import tiny_dense_cfg

classes, height, width, which = {classes}, {height}, {width}, {which!r}
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model(tiny_dense_cfg("LTRetinaNet")).eval()
model.test_score_thresh = 0.0
if which == "detectron2":
    model._decode_per_level_predictions = DenseDetector._decode_per_level_predictions.__get__(model)
anchors, scores, deltas = [], [], []
for stride in (8, 16, 32, 64, 128):
    n = math.ceil(height / stride) * math.ceil(width / stride) * 9
    xy = torch.rand(n, 2) * torch.tensor([width, height])
    anchors.append(Boxes(torch.cat([xy, xy + stride * 4], 1)))
    level = torch.rand(n, classes).mul_(0.9)
    # the best 2000 scores of each level distinct (float32 rand repeats values among ~1e8):
    # ties would let the two decodings pick different, equally scored anchors
    planted = torch.randperm(n * classes)[:2000]
    level.view(-1)[planted] = 0.9 + 0.05 * torch.randperm(2000).float() / 2000
    scores.append(level)
    deltas.append(torch.randn(n, 4) * 0.1)
def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
base = status_kib("VmRSS")
start = time.perf_counter()
with torch.no_grad():
    result = model.inference_single_image(anchors, scores, deltas, (height, width))
seconds = time.perf_counter() - start
peak = status_kib("VmHWM")
print(json.dumps({{
    "seconds": seconds,
    "peak_mib": (peak - base) / 1024,
    "inputs_mib": sum(s.numel() * 4 for s in scores) / 2**20,
    "scores": result.scores.tolist(),
    "classes": result.pred_classes.tolist(),
}}))
"""


def run(which: str, args) -> dict:
    code = _RUN.format(
        tests=os.path.join(REPO, "tests"),
        classes=args.classes,
        height=args.height,
        width=args.width,
        which=which,
    )
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()
    theirs, ours = run("detectron2", args), run("lt_d2", args)
    print(
        f"{args.height} x {args.width} image, {args.classes} classes, P3-P7, 9 anchors: "
        f"{theirs['inputs_mib']:.0f} MiB of scores"
    )
    for name, r in (("detectron2 (threshold, then top-k)", theirs), ("lt_d2 (top-k first)", ours)):
        print(f"{name:<36} {r['seconds']:7.2f} s  peak +{r['peak_mib']:8.1f} MiB")
    print(
        f"lt_d2 / detectron2: {ours['seconds'] / theirs['seconds']:.3f}x time, "
        f"{ours['peak_mib'] / max(theirs['peak_mib'], 1e-9):.4f}x memory; identical "
        f"detections: {ours['scores'] == theirs['scores'] and ours['classes'] == theirs['classes']}"
    )


if __name__ == "__main__":
    main()
