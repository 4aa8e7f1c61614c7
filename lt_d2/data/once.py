"""Work that depends only on the data, done by one process of a distributed job and shared.

A job of N processes (``launch`` over M machines) would otherwise read the same annotation
file, load the same test sets and ``stat()`` the same images N times, on a shared file system
all at once. :func:`run_once` lets one process do it and hands the result (or its error) to
the others through ``torch.distributed`` (detectron2's ``comm.all_gather``, on its CPU gloo
group): the others wait in the collective and never read a half-written file.

Which process works: global rank 0 for what every process must agree on (category
statistics: every process trains with rank 0's); the local rank 0 of every machine for checks
of what each machine reads from its own disk (image files, test sets), so that a machine with
its own copy of the data checks that copy. An error in the working process is raised in every
process of the job, so a job on several machines ends instead of waiting for the collective's
timeout.

Every process of the job must call :func:`run_once` at the same point (it is a collective).
Outside a distributed job it simply calls the function.
"""

import logging
from typing import Callable, TypeVar

from detectron2.utils import comm

__all__ = ["run_once"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _processes_per_machine() -> int:
    """Processes per machine; processes not started by detectron2's ``launch`` (no
    per-machine group) count as one machine."""
    try:
        return comm.get_local_size()
    except (AssertionError, RuntimeError):  # detectron2 main asserts the local group exists
        return comm.get_world_size()


def run_once(fn: Callable[..., T], *args, per_machine: bool = False, what: str = "") -> T:
    """``fn(*args)`` computed by one process and returned in every process.

    Args:
        fn: the work; its result must be picklable.
        per_machine: False: global rank 0 computes and every process gets its result.
            True: the first process of every machine computes and the processes of that
            machine get its result.
        what: what ``fn`` does, for the error raised in the processes that waited.

    Raises:
        whatever ``fn`` raised, in the process that called it; RuntimeError naming that
        process and its error in every other process.
    """
    world = comm.get_world_size()
    if world == 1:
        return fn(*args)
    rank = comm.get_rank()
    per = _processes_per_machine() if per_machine else world
    worker = rank - rank % per  # the first process of this process's group
    outcome, error = None, None
    if rank == worker:
        try:
            outcome = ("result", fn(*args))
        except Exception as e:  # shared below, then raised here with its own traceback
            error = e
            outcome = ("error", f"{type(e).__name__}: {e}")
    gathered = comm.all_gather(outcome)
    if error is not None:
        raise error
    failed = [(r, o[1]) for r, o in enumerate(gathered) if o is not None and o[0] == "error"]
    if failed:
        r, message = failed[0]
        raise RuntimeError(f"{what or fn.__name__} failed on rank {r}: {message}")
    return gathered[worker][1]
