"""Two CPU processes (gloo), each seeing half of every batch, end with identical classifier
state (EQLv2's accumulated gradients, Seesaw's class counts), equal to one process seeing
the whole batches."""

import pytest
import torch

from lt_d2.classifiers import CLASSIFIER_REGISTRY

from helpers.gloo import assert_workers_match_one_process

pytestmark = pytest.mark.integration  # two gloo processes

C, R, STEPS, WORLD = 5, 8, 3, 2
STATEFUL = ("EQLv2", "Seesaw")


def train(rows):
    states = {}
    for name in STATEFUL:
        model = CLASSIFIER_REGISTRY.get(name)(num_classes=C).train()
        g = torch.Generator().manual_seed(0)
        for _ in range(STEPS):
            logits = torch.randn(R, model.num_logits, generator=g) * 2.0
            gt = torch.randint(0, C + 1, (R,), generator=g)
            model.losses(logits[rows], gt[rows])  # updates the state
        states[name] = model.state_dict()
    return states


def test_two_gloo_workers_match_one_process(tmp_path):
    assert_workers_match_one_process(train, R, WORLD, str(tmp_path))
