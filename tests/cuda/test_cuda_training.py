"""The GPU tier's training runs: train_net.py trains one two-stage and one dense demo config
for 20 iterations on CUDA with mixed precision (SOLVER.AMP.ENABLED True) and compiled losses,
and reports no divergence. Skipped without CUDA; ``make test-gpu`` runs it."""

import os
import subprocess
import sys

import pytest
import torch

from helpers.config import REPO

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.integration,  # train_net.py in a subprocess
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuda tier needs a GPU"),
]

CONFIGS = {
    "two_stage": os.path.join("configs", "demo", "eqlv2", "eqlv2_mask_rcnn_R_18_FPN_demo.yaml"),
    "dense": os.path.join("configs", "demo", "efl", "efl_retinanet_R_18_FPN_demo.yaml"),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_train_net_amp_on_cuda(kind, tmp_path):
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        os.path.join(REPO, CONFIGS[kind]),
        "MODEL.DEVICE", "cuda",
        "SOLVER.AMP.ENABLED", "True",
        "SOLVER.MAX_ITER", "20",
        "SOLVER.CHECKPOINT_PERIOD", "100000",
        "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert os.path.exists(tmp_path / "model_final.pth"), log[-4000:]
    assert "diverges" not in log, log[-4000:]
    assert "torch.compile failed" not in log, log[-4000:]
