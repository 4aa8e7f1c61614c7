"""tests/conftest.py's guard: a test not marked ``integration`` cannot start an integration run
(so that `make test-fast` stays the unit tier), and a marked one can."""

import subprocess
import sys

import pytest
import torch.multiprocessing as mp
from detectron2.engine import DefaultTrainer, TrainerBase

REFUSED = "mark it @pytest.mark.integration"


def test_training_through_the_trainer_is_refused():
    with pytest.raises(pytest.fail.Exception, match=REFUSED):
        TrainerBase().train(0, 1)


def test_evaluating_through_the_trainer_is_refused():
    with pytest.raises(pytest.fail.Exception, match=REFUSED):
        DefaultTrainer.test(None, None)


@pytest.mark.parametrize("start", ["start_processes", "spawn"])
def test_starting_worker_processes_is_refused(start):
    with pytest.raises(pytest.fail.Exception, match=REFUSED):
        getattr(mp, start)(print, nprocs=2)


@pytest.mark.parametrize("command", [[sys.executable, "-c", "pass"], ["bash", "-c", "true"]])
def test_running_python_or_a_shell_is_refused(command):
    with pytest.raises(pytest.fail.Exception, match=REFUSED):
        subprocess.run(command)


def test_other_programs_still_run():
    assert subprocess.run(["true"]).returncode == 0  # e.g. a library asking fc-list or git


@pytest.mark.integration
def test_a_marked_test_may_run_python():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
