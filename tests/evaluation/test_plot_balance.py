"""The balance dump round trip and the plotting command line on hand-made dumps."""

import os
import zipfile

import numpy as np
import pytest

from lt_d2.evaluation.balance import (
    BalanceDump,
    list_balance_dumps,
    load_balance_dump,
    save_balance_dump,
)
from lt_d2.evaluation.plot_balance import main

C = 5


def _dump(run_dir, iteration, stages=1, weights=False):
    rng = np.random.default_rng(iteration)
    arrays = []
    for _ in range(stages):
        a = {k: rng.random(C) for k in ("pos", "neg", "ratio", "weight_norm")}
        if weights:
            a["weight_q"] = 1 + rng.random(C)
            a["weight_r"] = rng.random(C)
        arrays.append(a)
    dump = BalanceDump(
        iteration=iteration,
        instance_counts=np.array([3, 300, 30, 3000, 1]),
        frequency=np.array(["r", "f", "c", "f", "r"]),
        stages=[f"roi_heads.box_predictor.{k}" for k in range(stages)],
        arrays=arrays,
    )
    save_balance_dump(os.path.join(run_dir, "balance", f"iter_{iteration:07d}.npz"), dump)
    return dump


def test_dump_round_trip(tmp_path):
    dump = _dump(str(tmp_path), 20, stages=2, weights=True)
    back = load_balance_dump(list_balance_dumps(str(tmp_path))[0])
    assert back.iteration == 20 and back.stages == dump.stages
    np.testing.assert_array_equal(back.frequency, dump.frequency)
    for a, b in zip(dump.arrays, back.arrays):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_cli_writes_side_by_side_figures(tmp_path):
    base, method = str(tmp_path / "softmax"), str(tmp_path / "eqlv2")
    for it in (20, 40, 60):
        _dump(base, it)
        _dump(method, it, weights=True)
    out = tmp_path / "fig"
    written = main([base, method, "--out", str(out), "--labels", "softmax", "EQL v2"])
    names = sorted(os.path.basename(p) for p in written)
    assert names == [
        "classifier_weights.png",
        "grad_ratio.png",
        "grad_ratio_over_training.png",
        "weight_norm.png",
    ]
    for p in written:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="DIAGNOSTICS.PERIOD"):
        main([str(tmp_path), "--out", str(tmp_path / "fig")])
    _dump(str(tmp_path / "a"), 20, stages=1)
    _dump(str(tmp_path / "b"), 20, stages=3)
    with pytest.raises(ValueError, match="stage count"):
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "fig")])


def test_truncated_balance_dump_names_the_path(tmp_path):
    run = tmp_path / "run" / "balance"
    run.mkdir(parents=True)
    np.savez(run / "iter_0000020.npz", stages=np.asarray(["roi_heads"]), iteration=np.int64(20))
    data = (run / "iter_0000020.npz").read_bytes()
    (run / "iter_0000020.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"iter_0000020\.npz.*truncated"):
        main([str(tmp_path / "run"), "--out", str(tmp_path / "fig")])
    with pytest.raises(zipfile.BadZipFile):  # what np.load itself says: no path
        np.load(run / "iter_0000020.npz")
