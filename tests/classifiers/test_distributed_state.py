"""Two CPU processes (gloo), each seeing half of every batch, end with identical classifier
state (EQLv2's accumulated gradients, Seesaw's class counts), equal to one process seeing
the whole batches."""

import os

import pytest
import torch

from lt_d2.classifiers import CLASSIFIER_REGISTRY

from helpers.gloo import run_on_gloo_workers

pytestmark = pytest.mark.integration  # two gloo processes

C, R, STEPS, WORLD = 5, 8, 3, 2
STATEFUL = ("EQLv2", "Seesaw")


def batches(num_logits):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        logits = torch.randn(R, num_logits, generator=g) * 2.0
        gt = torch.randint(0, C + 1, (R,), generator=g)
        out.append((logits, gt))
    return out


def train(name, rows):
    model = CLASSIFIER_REGISTRY.get(name)(num_classes=C).train()
    for logits, gt in batches(model.num_logits):
        model.losses(logits[rows], gt[rows])  # updates the state
    return model.state_dict()


def _worker(rank, out_dir):
    half = slice(rank * (R // WORLD), (rank + 1) * (R // WORLD))
    states = {name: train(name, half) for name in STATEFUL}
    torch.save(states, os.path.join(out_dir, f"rank{rank}.pth"))


def test_two_gloo_workers_match_one_process(tmp_path):
    run_on_gloo_workers(_worker, WORLD, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{k}.pth") for k in range(WORLD)]
    for name in STATEFUL:
        single = train(name, slice(None))
        assert single and all(v.sum() > 0 for v in single.values())
        for key, value in single.items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), (name, key)
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-6, atol=1e-12)
