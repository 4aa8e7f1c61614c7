"""Jobs of several CPU processes (gloo) through train_net.py and detectron2's launch, as on a
cluster: a process that fails ends the whole job; four processes as two machines of two share
one category-statistics cache, written once, and train with identical statistics and state.

Needs a detectron2 whose launch starts CPU processes (main; `make test-main` runs this).
"""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.config import DEMO_CONFIG, REPO
from helpers.gloo import free_port, needs_cpu_launch

TEST_HELPERS = os.path.join(REPO, "tests", "helpers")
EQLV2_DEMO = os.path.join(REPO, "configs", "demo", "eqlv2", "eqlv2_mask_rcnn_R_18_FPN_demo.yaml")
TINY = [
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TEST", "()",
    "SEED", "3",
]  # fmt: skip

pytestmark = [
    pytest.mark.integration,
    needs_cpu_launch,
]


def _start(script, config, *args):
    return subprocess.Popen(
        [sys.executable, os.path.join(TEST_HELPERS, script), "--config-file", config, *args],
        cwd=REPO,  # the demo data under datasets/, shared with the other tests
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_failing_process_ends_the_job_with_its_error(tmp_path):
    from helpers.failing_rank_train_net import ERROR

    job = _start(
        "failing_rank_train_net.py", DEMO_CONFIG,
        "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
        *TINY, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "20",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    # A job whose other process waited for the failed one would sit in its next collective
    # until the process group's timeout (30 minutes), far past this limit.
    out, _ = job.communicate(timeout=600)
    assert job.returncode != 0, out[-3000:]
    assert ERROR in out and "Traceback" in out, out[-3000:]
    assert not os.path.exists(os.path.join(tmp_path, "model_final.pth"))


def _demo_train_counts():
    """Instances and images per category and the image count of the demo's training json,
    counted from its annotations here."""
    with open(os.path.join(REPO, "datasets", "lvis_demo", "lvis_demo_train.json")) as f:
        data = json.load(f)
    num = len(data["categories"])
    instances, images = [0] * num, [set() for _ in range(num)]
    for ann in data["annotations"]:
        instances[ann["category_id"] - 1] += 1
        images[ann["category_id"] - 1].add(ann["image_id"])
    return instances, [len(s) for s in images], len(data["images"])


def _log_lines(output_dir, text):
    found = 0
    for path in glob.glob(os.path.join(output_dir, "log.txt*")):
        with open(path) as f:
            found += sum(text in line for line in f)
    return found


def test_two_machines_of_two_processes_share_one_cache(tmp_path):
    out, cache = str(tmp_path / "out"), str(tmp_path / "cache")
    url = f"tcp://127.0.0.1:{free_port()}"
    machines = [
        _start(
            "dump_state_train_net.py",
            EQLV2_DEMO,
            "--num-gpus",
            "2",
            "--num-machines",
            "2",
            "--machine-rank",
            str(m),
            "--dist-url",
            url,
            *TINY,
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.MAX_ITER",
            "3",
            "DATASETS.CATEGORY_STATS_CACHE_DIR",
            cache,
            "OUTPUT_DIR",
            out,
        )  # fmt: skip
        for m in range(2)
    ]
    for job in machines:
        log, _ = job.communicate(timeout=900)
        assert job.returncode == 0, log[-5000:]

    # one process computed and wrote the statistics, atomically (nothing else in the folder)
    assert os.listdir(cache) == ["lvis_demo_train.category_stats.json"]
    assert _log_lines(out, "wrote the cache") == 1
    # the training images were checked once per machine
    assert _log_lines(out, "Images of 'lvis_demo_train'") == 2

    stats = []
    for r in range(4):
        with open(os.path.join(out, f"stats_rank{r}.json")) as f:
            stats.append(json.load(f))
    assert all(s == stats[0] for s in stats)
    instances, images, num_images = _demo_train_counts()
    assert stats[0]["instance_counts"] == instances
    assert stats[0]["image_counts"] == images
    assert stats[0]["num_images"] == num_images

    # EQL v2's accumulated gradients are all-reduced every iteration: identical everywhere
    states = [torch.load(os.path.join(out, f"state_rank{r}.pth")) for r in range(4)]
    keys = [k for k in states[0] if k.startswith("classifier.")]
    assert keys and any(states[0][k].abs().sum() > 0 for k in keys)
    for state in states[1:]:
        for key in keys:
            torch.testing.assert_close(state[key], states[0][key], rtol=0, atol=0)
