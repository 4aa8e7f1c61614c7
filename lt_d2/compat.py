"""Where the environments lt_d2 supports differ, and the one place that bridges them.

lt_d2 runs on two detectron2s: v0.6 (the PyPI route, numpy < 1.24) and detectron2 main built
from source (what GPU users have, usually with numpy 2). Both report ``__version__ == "0.6"``,
so differences are detected by the feature itself, never by a version number. Each function
below names the difference it covers; nothing else in lt_d2 checks versions.
"""

import contextlib
import functools
import inspect
from typing import Iterator

import numpy as np
import torch
from torch import nn

__all__ = [
    "check_launch",
    "cpu_ddp_model_creation",
    "launch_supports_cpu",
    "numpy_aliases_for_lvis",
    "retinanet_head_norm",
]

# Difference 1: lvis-api 0.5.3 (the only lvis release on PyPI) calls np.float in
# LVISEval.accumulate; numpy 1.24 removed that alias, so every LVIS evaluation fails there
# under numpy >= 1.24. The alias meant the Python builtin.
_REMOVED_NUMPY_ALIASES = {"float": float}


@contextlib.contextmanager
def numpy_aliases_for_lvis() -> Iterator[None]:
    """Within the block, ``np.float`` is ``float`` (as it was before numpy 1.24); on exit the
    attribute is removed again, so the user's numpy is unchanged outside lt_d2's own
    evaluation call (numpy 1.23 goes on answering its deprecated alias, numpy 2 raising).
    A fixed lvis-api never asks for it, and is unaffected."""
    added = [name for name in _REMOVED_NUMPY_ALIASES if name not in np.__dict__]
    for name in added:
        setattr(np, name, _REMOVED_NUMPY_ALIASES[name])
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


# Difference 2: detectron2 v0.6's launch asserts CUDA and uses NCCL for every multi-process
# job; detectron2 main picks GLOO when no GPU is present, so CPU processes can train together.
@functools.lru_cache(maxsize=1)
def launch_supports_cpu() -> bool:
    """Whether the installed detectron2's ``launch`` starts CPU processes (gloo)."""
    from detectron2.engine import launch as launch_module

    try:
        source = inspect.getsource(launch_module._distributed_worker)
    except (OSError, TypeError, AttributeError):  # no source shipped: ask the helper main added
        from detectron2.utils import comm

        return hasattr(comm, "create_local_process_group")
    return "GLOO" in source.upper()


def check_launch(num_processes_per_machine: int, num_machines: int = 1) -> None:
    """Refuse, before any process starts, a multi-process job this detectron2 cannot run.

    Raises:
        RuntimeError: more than one process in all, no GPU, and a detectron2 whose launch
            needs CUDA (v0.6).
    """
    if num_processes_per_machine * num_machines <= 1 or torch.cuda.is_available():
        return
    if not launch_supports_cpu():
        raise RuntimeError(
            f"--num-gpus {num_processes_per_machine} --num-machines {num_machines} asks for "
            f"{num_processes_per_machine * num_machines} processes on a machine without a GPU, "
            f"but this detectron2's launch (v0.6, e.g. the PyPI route) starts processes only "
            f"on GPUs (NCCL). Fix: run with --num-gpus 1, or install detectron2 main built "
            f"from source, whose launch trains CPU processes with gloo (README.md, "
            f"'Installation routes')"
        )


# Difference 3 (both versions): DefaultTrainer wraps the model with create_ddp_model, which
# passes device_ids=[local rank]; DistributedDataParallel refuses device ids for a module on
# the CPU. A CPU model must be wrapped with device_ids=None.
@contextlib.contextmanager
def cpu_ddp_model_creation() -> Iterator[None]:
    """Within the block, detectron2's trainers wrap a model whose parameters are on the CPU
    in DistributedDataParallel without device ids; GPU models are wrapped exactly as
    detectron2 does. Use around ``DefaultTrainer.__init__``."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model

    @functools.wraps(original)
    def create_ddp_model(model: nn.Module, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if on_cpu and "device_ids" not in kwargs:
            kwargs["device_ids"] = None
        return original(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = original


# Difference 4: RetinaNetHead reads the type of its tower normalisation from a probe layer,
# get_norm(norm, 1) in v0.6 and get_norm(norm, 32) on main; a one-channel GroupNorm with 32
# groups cannot be built, so v0.6's RetinaNetHead refuses norm="GN" before building anything.
def _group_norm_32(channels: int) -> nn.GroupNorm:
    """get_norm("GN", channels) (32 groups) for every tower layer; the one-channel probe gets a
    one-group GroupNorm, of the same type."""
    return nn.GroupNorm(32 if channels > 1 else 1, channels)


def retinanet_head_norm(norm: str):
    """The ``norm`` argument for detectron2's ``RetinaNetHead`` (and heads derived from it)
    that builds the towers ``get_norm(norm, channels)`` builds, on v0.6 and main alike."""
    return _group_norm_32 if norm == "GN" else norm
