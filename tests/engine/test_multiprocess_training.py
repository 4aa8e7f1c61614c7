"""End to end through detectron2's launch: EQL v2 Mask R-CNN on the demo data trained by two
CPU processes (gloo), as one machine with two processes and as two machines with one each.

Needs a detectron2 whose launch starts CPU processes (main; `make test-main` runs this).

Both processes must end with identical classifier state, equal to that of one process that
saw the same images, the diagnostics must be written once, and evaluation must cover every
validation image. To make "the same images" exact, the runs remove every source of
per-process randomness that would make two processes differ from one: the learning rate is 0
(the weights stay at their shared initialisation, so the only state that evolves is EQL v2's
accumulated gradients, which are all-reduced every iteration), BatchNorm is frozen (batch
statistics would depend on how images are split into batches), images are not flipped, and
every proposal is used as an ROI (no random subsampling). Each iteration then sees the same
two images whether one process takes both or two processes take one each (detectron2's
TrainingSampler hands process r every world_size-th index of one seeded stream).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.config import REPO
from helpers.gloo import free_port, needs_cpu_launch

SCRIPT = os.path.join(REPO, "tests", "helpers", "dump_state_train_net.py")
CONFIG = os.path.join(REPO, "configs", "demo", "eqlv2", "eqlv2_mask_rcnn_R_18_FPN_demo.yaml")
ITERATIONS, PERIOD = 4, 2
OPTS = [
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", str(ITERATIONS),
    "SOLVER.BASE_LR", "0.0",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "MODEL.RESNETS.NORM", "FrozenBN",
    "INPUT.RANDOM_FLIP", "none",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "512",  # > proposals + ground truth: all kept
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # every image scored, even by the initial
    "TEST.DETECTIONS_PER_IMAGE", "10",  # weights (LR 0), at a few detections each
    "DATALOADER.NUM_WORKERS", "0",
    "DIAGNOSTICS.PERIOD", str(PERIOD),
    "SEED", "3",
]  # fmt: skip

pytestmark = [
    pytest.mark.integration,
    needs_cpu_launch,
]


def _train(output_dir, *launch_args):
    """Start the wrapped train_net.py once per ``launch_args`` (one per machine), wait."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, SCRIPT, "--config-file", CONFIG, *args, *OPTS]
            + ["OUTPUT_DIR", output_dir],
            cwd=REPO,  # the demo data under datasets/, shared with the other tests
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in launch_args
    ]
    for p in processes:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-5000:]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one_process"))
    _train(out, ["--num-gpus", "1"])
    return out


def _launches(kind: str):
    url = f"tcp://127.0.0.1:{free_port()}"
    if kind == "one machine, two processes":
        return [["--num-gpus", "2", "--dist-url", url]]
    machine = ["--num-gpus", "1", "--num-machines", "2", "--dist-url", url]
    return [[*machine, "--machine-rank", "0"], [*machine, "--machine-rank", "1"]]


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("kind", ["one machine, two processes", "two machines"])
def test_two_processes_train_like_one(kind, single_process, tmp_path):
    out = str(tmp_path)
    _train(out, *_launches(kind))

    ranks = [torch.load(os.path.join(out, f"state_rank{r}.pth")) for r in range(2)]
    reference = torch.load(os.path.join(single_process, "state_rank0.pth"))
    accumulated = [k for k in reference if k.endswith(("pos_grad", "neg_grad"))]
    keys = [k for k in accumulated if "gradient_stats" not in k]
    assert keys, sorted(reference)  # EQL v2's accumulated gradients (eq. 9)
    assert not os.path.exists(os.path.join(single_process, "state_rank1.pth"))
    for key in keys:
        assert reference[key].abs().sum() > 0  # the state did evolve
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)
        # Each process sums its ROIs' float32 gradients before the all-reduce, one process
        # sums both images' at once: equal up to float32 rounding of that order.
        torch.testing.assert_close(ranks[0][key], reference[key], rtol=1e-5, atol=1e-8)
    # GradientStats records the gradient DDP applies (each process's own loss, averaged over
    # the processes), which equals one process's only when both images have as many ROIs:
    # the processes agree exactly, and the diagnostic is there.
    for key in set(accumulated) - set(keys):
        assert ranks[0][key].abs().sum() > 0
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)

    # Written once, by the main process: the balance scalars in one metrics.json record
    # (detectron2's writers keep the latest value, here the last period's), one dump per
    # period, one set of event files, one checkpoint.
    logged = [m["iteration"] for m in _metrics(out) if "lt/grad_ratio_r" in m]
    assert logged == [ITERATIONS - 1]
    dumps = sorted(os.listdir(os.path.join(out, "balance")))
    assert dumps == [f"iter_{i:07d}.npz" for i in range(PERIOD, ITERATIONS + 1, PERIOD)]
    assert len([f for f in os.listdir(out) if f.startswith("events.out.tfevents")]) == 1
    assert os.path.exists(os.path.join(out, "model_final.pth"))

    # Evaluation gathered both processes' predictions: every validation image is scored.
    with open(os.path.join(out, "inference", "lvis_demo_val", "lvis_instances_results.json")) as f:
        evaluated = {r["image_id"] for r in json.load(f)}
    with open(os.path.join(REPO, "datasets", "lvis_demo", "lvis_demo_val.json")) as f:
        expected = {image["id"] for image in json.load(f)["images"]}
    assert evaluated == expected
    final = _metrics(out)[-1]
    assert "bbox/AP" in final and "segm/AP" in final
