"""run_once in a gloo job of three processes: one process works, every process gets its
result; its error is raised in every process (its own in it, naming it in the others)."""

import json
import os

import pytest

from lt_d2.data.once import run_once

from helpers.gloo import run_on_gloo_workers

pytestmark = pytest.mark.integration  # starts worker processes

WORLD = 3


def _work(folder, fail):
    """Leaves one file per call, so the test can count the processes that worked."""
    with open(os.path.join(folder, f"worked_{os.getpid()}"), "w"):
        pass
    if fail:
        raise ValueError("the annotation file is damaged")
    return {"counts": [3, 1, 4], "by": os.getpid()}


def _worker(rank, folder, fail):
    try:
        outcome = {"result": run_once(_work, folder, fail, what="counting")}
    except Exception as e:
        outcome = {"error": f"{type(e).__name__}: {e}"}
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)


def _outcomes(folder):
    out = []
    for r in range(WORLD):
        with open(os.path.join(folder, f"rank{r}.json")) as f:
            out.append(json.load(f))
    return out


def test_one_process_works_and_all_get_its_result(tmp_path):
    run_on_gloo_workers(_worker, WORLD, str(tmp_path), False)
    worked = [f for f in os.listdir(tmp_path) if f.startswith("worked_")]
    assert len(worked) == 1
    outcomes = _outcomes(tmp_path)
    assert all(o == outcomes[0] for o in outcomes)
    assert outcomes[0]["result"]["counts"] == [3, 1, 4]
    assert f"worked_{outcomes[0]['result']['by']}" == worked[0]


def test_its_error_is_raised_in_every_process(tmp_path):
    run_on_gloo_workers(_worker, WORLD, str(tmp_path), True)
    outcomes = _outcomes(tmp_path)
    assert outcomes[0] == {"error": "ValueError: the annotation file is damaged"}
    for other in outcomes[1:]:
        assert other == {
            "error": "RuntimeError: counting failed on rank 0: ValueError: the annotation "
            "file is damaged"
        }
