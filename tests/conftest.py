"""Shared fixtures: configs of the tiny demo model, shrunk to "instant" size for tests; tiny
registered LVIS-format datasets; and the check that keeps integration runs out of the unit tier.
Helpers live in tests/helpers/."""

import os
import subprocess
import traceback
from typing import Callable

import pytest
import torch.multiprocessing as mp
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer, TrainerBase

from lt_d2.classifiers import build as classifier_build
from lt_d2.classifiers import compile as loss_compile
from lt_d2.data import register_lvis_format

from helpers.config import DEMO_CONFIG, INSTANT_OPTS, load_config
from helpers.lvis import write_tiny_lvis_json


@pytest.fixture
def instant_cfg(tmp_path) -> Callable[..., CfgNode]:
    """Factory: ``instant_cfg(*opts, config_file=DEMO_CONFIG)`` -> frozen instant config whose
    OUTPUT_DIR is a fresh temporary directory."""

    def make(*opts, config_file: str = DEMO_CONFIG) -> CfgNode:
        cfg = load_config(config_file, *INSTANT_OPTS, "OUTPUT_DIR", str(tmp_path), *opts)
        cfg.freeze()
        return cfg

    return make


@pytest.fixture(autouse=True)
def eager_losses(monkeypatch):
    """The unit tier runs the loss functions eagerly (compiling costs seconds per function);
    classifier builders leave that switch alone. Compiled == eager is checked once per
    classifier, by the tests that switch compilation on themselves
    (helpers.compiled_losses)."""
    monkeypatch.setattr(loss_compile, "_ENABLED", False)
    monkeypatch.setattr(classifier_build, "set_compile_enabled", lambda enabled: None)


@pytest.fixture
def tiny_dataset(tmp_path):
    """Factory: ``tiny_dataset(name, names, annotations, images_present=(), **kw)`` writes
    ``name.json`` (:func:`helpers.lvis.write_tiny_lvis_json`), creates empty files for the
    image ids in ``images_present`` and registers the dataset, removed from detectron2's
    catalogs after the test; returns the json's path."""
    registered = []

    def make(name, names, annotations, images_present=(), **kw):
        file = write_tiny_lvis_json(tmp_path / f"{name}.json", names, annotations, **kw)
        os.makedirs(tmp_path / "train", exist_ok=True)
        for i in images_present:
            (tmp_path / "train" / f"{i:06d}.jpg").write_bytes(b"")
        register_lvis_format(name, file, str(tmp_path))
        registered.append(name)
        return file

    yield make
    for name in registered:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _runs_an_interpreter(args) -> bool:
    """Whether a Popen command runs Python (train_net.py, a script) or a shell (install.sh)."""
    argv = args.split() if isinstance(args, str) else list(args)
    program = os.path.basename(str(argv[0])) if argv else ""
    return program.startswith("python") or program in ("bash", "sh")


def _started_by_torch_compile() -> bool:
    """Whether the running Popen call comes from torch's compiler: with a cold cache, inductor
    probes the CPU's vector instructions (and may start compile workers) in a Python
    subprocess the first time a process compiles. That is part of a compiled loss's first call,
    not an integration run."""
    marker = f"{os.sep}torch{os.sep}_inductor{os.sep}"
    return any(marker in frame.filename for frame in traceback.extract_stack())


@pytest.fixture(autouse=True)
def integration_runs_are_marked(request, monkeypatch):
    """An integration run is a test that trains or evaluates through the trainer (in-process
    or train_net.py), starts worker processes, or runs Python or a shell in a subprocess
    (train_net.py, install.sh). Such a test must be marked ``integration`` (``pytestmark``
    for a whole module), so that ``make test-fast`` (``-m "not integration"``) leaves it out;
    an unmarked one fails here at the call, before it spends the time."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(what):
        def call(*args, **kwargs):
            pytest.fail(
                f"{request.node.nodeid} {what}: mark it @pytest.mark.integration "
                "(pytestmark = pytest.mark.integration for a whole module)",
                pytrace=False,
            )

        return call

    class GuardedPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            if _runs_an_interpreter(args) and not _started_by_torch_compile():
                refuse(f"runs {args!r} in a subprocess")()
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(TrainerBase, "train", refuse("trains through the trainer"))
    monkeypatch.setattr(DefaultTrainer, "test", refuse("evaluates through the trainer"))
    monkeypatch.setattr(mp, "start_processes", refuse("starts worker processes"))
    monkeypatch.setattr(mp, "spawn", refuse("starts worker processes"))
    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)
