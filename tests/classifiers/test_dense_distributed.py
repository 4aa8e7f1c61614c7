"""Two CPU processes (gloo), each seeing half of every batch's anchors, end with identical
dense-classifier state (EFL's and EQLv2Focal's accumulated gradients), equal to one process
seeing all anchors (same normalizer: detectron2 averages it over workers)."""

import os

import pytest
import torch

from lt_d2.classifiers import DENSE_CLASSIFIER_REGISTRY

from helpers.gloo import run_on_gloo_workers

pytestmark = pytest.mark.integration  # two gloo processes

C, N, STEPS, WORLD, NORMALIZER = 4, 12, 3, 2, 3.0
STATEFUL = ("EqualizedFocalLoss", "EQLv2Focal")


def batches():
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(N, C, generator=g) * 2.0, torch.randint(-1, C + 1, (N,), generator=g))
        for _ in range(STEPS)
    ]


def train(name, rows):
    model = DENSE_CLASSIFIER_REGISTRY.get(name)(num_classes=C).train()
    for logits, gt in batches():
        model.losses(logits[rows], gt[rows], NORMALIZER)  # updates the state
    return model.state_dict()


def _worker(rank, out_dir):
    half = slice(rank * (N // WORLD), (rank + 1) * (N // WORLD))
    states = {name: train(name, half) for name in STATEFUL}
    torch.save(states, os.path.join(out_dir, f"rank{rank}.pth"))


def test_two_gloo_workers_match_one_process(tmp_path):
    run_on_gloo_workers(_worker, WORLD, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{k}.pth") for k in range(WORLD)]
    for name in STATEFUL:
        single = train(name, slice(None))
        assert set(single) == {"pos_grad", "neg_grad"}
        assert all(v.sum() > 0 for v in single.values())
        for key, value in single.items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), (name, key)
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-6, atol=1e-12)
