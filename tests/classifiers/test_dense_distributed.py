"""Two CPU processes (gloo), each seeing half of every batch's anchors, end with identical
dense-classifier state (EFL's and EQLv2Focal's accumulated gradients), equal to one process
seeing all anchors (same normalizer: detectron2 averages it over workers)."""

import pytest
import torch

from lt_d2.classifiers import DENSE_CLASSIFIER_REGISTRY

from helpers.gloo import assert_workers_match_one_process

pytestmark = pytest.mark.integration  # two gloo processes

C, N, STEPS, WORLD, NORMALIZER = 4, 12, 3, 2, 3.0
STATEFUL = ("EqualizedFocalLoss", "EQLv2Focal")


def train(rows):
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(N, C, generator=g) * 2.0, torch.randint(-1, C + 1, (N,), generator=g))
        for _ in range(STEPS)
    ]
    states = {}
    for name in STATEFUL:
        model = DENSE_CLASSIFIER_REGISTRY.get(name)(num_classes=C).train()
        for logits, gt in batches:
            model.losses(logits[rows], gt[rows], NORMALIZER)  # updates the state
        states[name] = model.state_dict()
    return states


def test_two_gloo_workers_match_one_process(tmp_path):
    single = assert_workers_match_one_process(train, N, WORLD, str(tmp_path))
    assert all(set(state) == {"pos_grad", "neg_grad"} for state in single.values())
