"""Classifier state kept equal across workers.

EQL v2 (eq. 9), EFL (sec. 3.2) and EQLv2Focal accumulate, per category, the magnitudes of the
positive and negative gradients reaching its logits over all iterations, images and workers,
as their loss functions return them in closed form from float32 (or wider) probabilities, so
a GradScaler's loss scale never reaches them. :class:`AccumulatedGradientsMixin` holds them
as (C,) float64 buffers (saved in checkpoints) and adds each batch's increments summed over
workers; :func:`all_reduce_sum` is the one place that talks to torch.distributed.

Non-finite gradients (a NaN logit, or +inf for the focal losses) are never folded into this
state: :func:`add_finite_` adds a category's increment only when it is finite and otherwise
counts the skipped update in the non-persistent buffer ``nonfinite_updates``, all on the
device (no host sync in the training step). :func:`pop_nonfinite_updates` reads and clears
those counters; lt_d2's trainer calls it every 20 iterations (detectron2's writer period) and
logs a warning naming the classifier and the categories. Why skip rather than raise: raising
needs a host sync per step, and a non-finite loss already stops training in detectron2's
metrics writer (FloatingPointError); what stays invisible there is a finite loss with a
non-finite gradient (EFL at +inf), which this guard keeps out of the state and reports.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = [
    "AccumulatedGradientsMixin",
    "add_finite_",
    "all_reduce_sum",
    "pop_nonfinite_updates",
    "register_nonfinite_counter",
]

NONFINITE_COUNTER = "nonfinite_updates"


def register_nonfinite_counter(module: torch.nn.Module, num_classes: int) -> None:
    """Give ``module`` the (C,) int64 buffer ``nonfinite_updates`` (not saved in checkpoints)
    that :func:`add_finite_` increments for every skipped per-category update."""
    module.register_buffer(
        NONFINITE_COUNTER, torch.zeros(num_classes, dtype=torch.int64), persistent=False
    )


@torch.no_grad()
def add_finite_(
    buffers: Sequence[torch.Tensor], increments: Sequence[torch.Tensor], skipped: torch.Tensor
) -> None:
    """``buffers[k] += increments[k]`` (all (C,)) for every category j whose increments are all
    finite; for the others the buffers are left unchanged and ``skipped[j]`` grows by one.
    Runs on the tensors' device without a host sync."""
    finite = torch.stack([torch.isfinite(x) for x in increments]).all(dim=0)
    for buffer, x in zip(buffers, increments):
        buffer += torch.where(finite, x, x.new_zeros(())).to(buffer.dtype)
    skipped += (~finite).to(skipped.dtype)


def pop_nonfinite_updates(model: torch.nn.Module) -> Dict[str, Tuple[str, torch.Tensor]]:
    """{module name: (class name, (C,) int64 skipped-update counts)} of every module of
    ``model`` that skipped a non-finite update since the last call; the counters are reset.
    One host sync per module with a counter."""
    found = {}
    for name, module in model.named_modules():
        counter = getattr(module, NONFINITE_COUNTER, None)
        if isinstance(counter, torch.Tensor) and bool(counter.any()):
            found[name] = (type(module).__name__, counter.cpu().clone())
            counter.zero_()
    return found


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all workers when more than one runs; identity otherwise.

    Every worker must call it the same number of times (also with an empty batch).
    """
    if comm.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class AccumulatedGradientsMixin:
    """For nn.Module classifiers: per-category accumulated positive / negative logit-gradient
    magnitudes as the buffers ``pos_grad`` and ``neg_grad``, (C,) float64, zero at the start.

    Call :meth:`_init_accumulated_gradients` in ``__init__`` and :meth:`_add_gradients` with
    each training batch's sums. A category whose summed increment is not finite keeps its
    state (see the module docstring).
    """

    def _init_accumulated_gradients(self, num_classes: int) -> None:
        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float64))
        register_nonfinite_counter(self, num_classes)

    @torch.no_grad()
    def _add_gradients(
        self, pos: torch.Tensor, neg: torch.Tensor, count: Optional[torch.Tensor] = None
    ) -> None:
        """Add one batch's (C,) sums, summed over workers (a collective call).

        With ``count`` (this worker's number of samples, a 0-d or (1,) tensor) the summed
        increments are divided by the count summed over workers: a mean over the whole batch
        of all workers (EQL v2's 1/|I|).
        """
        parts = [pos, neg] if count is None else [pos, neg, count.reshape(1)]
        packed = all_reduce_sum(torch.cat([p.to(torch.float64) for p in parts]))
        C = self.pos_grad.numel()
        # no samples anywhere: the sums are 0 as well
        scale = 1.0 if count is None else packed[2 * C :].clamp(min=1.0)
        add_finite_(
            (self.pos_grad, self.neg_grad),
            (packed[:C] / scale, packed[C : 2 * C] / scale),
            getattr(self, NONFINITE_COUNTER),
        )
