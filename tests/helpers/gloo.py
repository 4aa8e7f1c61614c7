"""Run a function in several CPU processes joined by a gloo process group (tests only)."""

import socket
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a dist-url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable, world_size: int, port: int, args: tuple) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_on_gloo_workers(fn: Callable, world_size: int, *args) -> None:
    """Call ``fn(rank, *args)`` in ``world_size`` processes with torch.distributed initialised.

    The processes are forked, so they inherit the imported modules (a spawned worker would
    re-import torch and detectron2, tens of seconds on a loaded machine); ``fn`` must be a
    module-level function and report its results through files.
    """
    mp.start_processes(
        _worker,
        args=(fn, world_size, free_port(), args),
        nprocs=world_size,
        join=True,
        start_method="fork",
    )
