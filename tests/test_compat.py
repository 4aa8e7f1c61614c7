"""lt_d2.compat: the differences between detectron2 v0.6 + numpy 1.x and detectron2 main +
numpy 2, and the install route for a user's own detectron2."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lt_d2.compat import (
    check_launch,
    cpu_ddp_model_creation,
    launch_supports_cpu,
    numpy_aliases_for_lvis,
)
from lt_d2.evaluation import has_compiled_ops

from helpers.config import REPO
from helpers.gloo import run_on_gloo_workers


def test_numpy_alias_exists_only_inside_the_block():
    before = dict(np.__dict__)
    with numpy_aliases_for_lvis():
        assert np.float is float
        assert np.cumsum([1, 2]).astype(dtype=np.float).tolist() == [1.0, 3.0]  # lvis's use
    assert np.__dict__.keys() == before.keys()
    assert all(np.__dict__[k] is v for k, v in before.items())


def test_numpy_alias_is_removed_after_an_error():
    before = set(np.__dict__)
    with pytest.raises(ZeroDivisionError), numpy_aliases_for_lvis():
        1 / 0  # noqa: B018
    assert set(np.__dict__) == before


def test_environment_is_the_one_make_test_main_built():
    # make test-main sets these: the suite must run on the user's detectron2 (an editable
    # build under .venv-d2main/src) and numpy 2, not on a PyPI fallback.
    expected_dir = os.environ.get("LT_D2_EXPECT_DETECTRON2")
    expected_numpy = os.environ.get("LT_D2_EXPECT_NUMPY_MAJOR")
    if not expected_dir and not expected_numpy:
        pytest.skip("not run by make test-main")
    import detectron2

    if expected_dir:
        assert os.path.realpath(detectron2.__file__).startswith(os.path.realpath(expected_dir))
        assert has_compiled_ops()  # its C++ operators were built, not the PyPI stand-in
        assert launch_supports_cpu()  # detectron2 main's launch trains CPU processes (gloo)
    if expected_numpy:
        assert int(np.__version__.split(".")[0]) == int(expected_numpy)


def test_pypi_route_launch_needs_cuda():
    if has_compiled_ops():
        pytest.skip("detectron2 built from source: not the PyPI route's v0.6")
    assert not launch_supports_cpu()


def test_multi_process_without_gpu_is_refused_where_launch_cannot():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: launch uses NCCL")
    check_launch(1, 1)  # one process: always fine
    if launch_supports_cpu():
        check_launch(2, 1)
        check_launch(1, 2)
        return
    for gpus, machines in ((2, 1), (1, 2)):
        with pytest.raises(RuntimeError) as info:
            check_launch(gpus, machines)
        message = str(info.value)
        assert f"--num-gpus {gpus} --num-machines {machines}" in message
        assert "--num-gpus 1" in message and "detectron2 main" in message


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: launch uses NCCL")
def test_train_net_refuses_two_processes_before_starting_them(tmp_path):
    if launch_supports_cpu():
        pytest.skip("launch trains CPU processes here: see test_multiprocess_training.py")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0
    assert "starts processes only on GPUs" in result.stderr
    assert "--num-gpus 1" in result.stderr


def _wrap_cpu_model(rank: int, out_dir: str) -> None:
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    with cpu_ddp_model_creation():
        ddp = defaults.create_ddp_model(nn.Linear(3, 2), broadcast_buffers=False)
    restored = defaults.create_ddp_model is original
    try:  # what DistributedDataParallel does with the device ids detectron2 passes
        nn.parallel.DistributedDataParallel(nn.Linear(3, 2), device_ids=[rank])
        with_ids = "accepted"
    except ValueError as e:
        with_ids = f"refused: {e}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(f"{type(ddp).__name__} {ddp.device_ids} {restored}\n{with_ids}")


@pytest.mark.integration
def test_cpu_model_is_wrapped_without_device_ids(tmp_path):
    run_on_gloo_workers(_wrap_cpu_model, 2, str(tmp_path))
    for rank in range(2):
        wrapped, with_ids = (tmp_path / f"rank{rank}.txt").read_text().split("\n", 1)
        assert wrapped == "DistributedDataParallel None True"
        assert with_ids.startswith("refused") and "device_ids" in with_ids


# ---- install/install.sh, the route of a user's own detectron2 ----------------------------


def _fake_python(tmp_path, detectron2_source: str) -> str:
    """An interpreter whose ``import detectron2`` runs ``detectron2_source``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "detectron2.py").write_text(detectron2_source)
    exe = tmp_path / "python-with-d2"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def _install(venv, python) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", os.path.join(REPO, "install", "install.sh"), str(venv)],
        env={**os.environ, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_install_refuses_a_python_whose_detectron2_does_not_import(tmp_path):
    python = _fake_python(tmp_path, "raise ImportError('libdetectron2_ops.so: undefined symbol')")
    result = _install(tmp_path / "venv", python)
    assert result.returncode == 1
    assert f"PYTHON={python} cannot import detectron2" in result.stderr
    assert "undefined symbol" in result.stderr  # the import error itself
    assert "leave PYTHON unset for the PyPI route" in result.stderr
    assert not (tmp_path / "venv").exists()  # no fallback to the PyPI build


@pytest.mark.integration
def test_install_refuses_a_venv_made_for_another_route(tmp_path):
    python = _fake_python(tmp_path, "__version__ = '0.6'")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (venv / "lt_d2_route").write_text("PyPI\n")
    result = _install(venv, python)
    assert result.returncode == 1
    assert "was set up for the route 'PyPI'" in result.stderr
    assert f"rm -rf {venv}" in result.stderr
