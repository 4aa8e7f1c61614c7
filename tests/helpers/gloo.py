"""Run a function in several CPU processes joined by a gloo process group (tests only), and
compare the state such workers end with to one process's."""

import os
import socket
from typing import Callable, Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lt_d2.compat import launch_supports_cpu

# Tests that train several CPU processes through train_net.py's launch.
needs_cpu_launch = pytest.mark.skipif(
    torch.cuda.is_available() or not launch_supports_cpu(),
    reason="needs a detectron2 whose launch trains CPU processes with gloo (main; make "
    "test-main); detectron2 v0.6's launch needs CUDA",
)


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


def run_on_gloo_workers(fn: Callable, world_size: int, *args, backward: bool = False) -> None:
    """Call ``fn(rank, *args)`` in ``world_size`` processes with torch.distributed initialised.

    The processes are forked, so they inherit the imported modules (a spawned worker would
    re-import torch and detectron2, tens of seconds on a loaded machine), unless ``backward``:
    a forked child cannot run autograd's backward once the parent's autograd engine has
    started its threads (which an earlier test in the same pytest worker may have done), so
    workers that call ``backward()`` are spawned. ``fn`` must be a module-level function and
    report its results through files.
    """
    mp.start_processes(
        _worker,
        args=(fn, world_size, free_port(), args),
        nprocs=world_size,
        join=True,
        start_method="spawn" if backward else "fork",
    )


def _save_share_state(rank: int, train: Callable, world_size: int, rows: int, out_dir: str):
    share = slice(rank * (rows // world_size), (rank + 1) * (rows // world_size))
    torch.save(train(share), os.path.join(out_dir, f"rank{rank}.pth"))


def assert_workers_match_one_process(
    train: Callable, rows: int, world_size: int, out_dir: str
) -> Dict[str, Dict[str, torch.Tensor]]:
    """Run ``train(rows_slice) -> {name: state_dict}`` on ``world_size`` gloo workers, each on
    its equal share of the ``rows`` rows of every batch, and assert that every worker ends with
    the same state, equal to one process's on all rows; returns that one process's states."""
    run_on_gloo_workers(_save_share_state, world_size, train, world_size, rows, out_dir)
    ranks = [torch.load(os.path.join(out_dir, f"rank{k}.pth")) for k in range(world_size)]
    single = train(slice(None))
    for name, state in single.items():
        assert state and all(v.sum() > 0 for v in state.values()), name
        for key, value in state.items():
            for other in ranks[1:]:
                assert torch.equal(ranks[0][name][key], other[name][key]), (name, key)
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-6, atol=1e-12)
    return single
