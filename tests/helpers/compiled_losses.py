"""Checks every classifier's tests share: its compiled loss equals the eager one, and its loss
is computed in float32 for half-precision logits under a GradScaler-sized incoming gradient.

``build`` is a zero-argument callable returning a fresh classifier in training mode, so that
the runs compared start from the same state; ``args`` follow ``(logits, gt_classes)`` in
``classifier.losses`` (a dense classifier's normaliser).
"""

import functools
from typing import Callable, Dict, Tuple

import torch

from lt_d2.classifiers.base import Classifier
from lt_d2.classifiers.compile import compile_enabled, set_compile_enabled

__all__ = ["assert_compiled_matches_eager", "assert_half_precision_gradient"]

# fp16: smallest subnormal 2^-24, largest finite 65504, unit roundoff 2^-11
HALF_TINY = 2.0**-24
HALF_MAX = 65504.0


def _step(
    classifier: Classifier, logits: torch.Tensor, gt_classes: torch.Tensor, args, incoming=1.0
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    x = logits.detach().clone().requires_grad_(True)
    losses = classifier.losses(x, gt_classes, *args)
    total = sum(losses.values())
    total.backward(torch.tensor(incoming, dtype=total.dtype))
    return {k: v.detach() for k, v in losses.items()}, x.grad


def assert_compiled_matches_eager(
    build: Callable[[], Classifier],
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    *args,
    steps: int = 2,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """``steps`` training steps on the same batch, compiled and eager: equal losses, logit
    gradients and state (every buffer of the classifier) after each step."""
    previous = compile_enabled()
    runs = []
    try:
        for compiled in (False, True):
            set_compile_enabled(compiled)
            torch.manual_seed(0)  # the same draws for a sampling classifier (DropLoss, BAGS)
            classifier, history = build(), []
            for _ in range(steps):
                losses, grad = _step(classifier, logits, gt_classes, args)
                state = {k: v.detach().clone() for k, v in classifier.named_buffers()}
                history.append((losses, grad, state))
            runs.append(history)
    finally:
        set_compile_enabled(previous)
    for step, (eager, compiled) in enumerate(zip(*runs)):
        for what, a, b in zip(("losses", "logit gradient", "state"), eager, compiled):
            torch.testing.assert_close(
                b, a, rtol=rtol, atol=atol, msg=functools.partial(_at, f"step {step}, {what}")
            )


def _at(where: str, message: str) -> str:
    return f"{where}: {message}"


def assert_half_precision_gradient(
    build: Callable[[], Classifier],
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    *args,
    scale: float = 65536.0,
) -> None:
    """fp16 ``logits`` and an incoming gradient of ``scale`` (GradScaler's initial loss
    scale): the loss is float32 and the fp16 logit gradient is the float32 gradient x
    ``scale`` (reference: the same rounded logits in float32) within fp16 rounding: no inf,
    no entry zeroed that fp16 can hold (|reference| >= 2^-24), relative error <= 2^-10 (one
    rounding, with slack for float32's own) above fp16's normal range."""
    half = logits.detach().half()
    torch.manual_seed(0)  # the same draws for a sampling classifier (DropLoss, BAGS)
    ref_losses, ref_grad = _step(build(), half.float(), gt_classes, args)
    expected = ref_grad.double() * scale
    assert expected.abs().max() < HALF_MAX, "choose logits whose scaled gradient fits fp16"
    torch.manual_seed(0)
    losses, grad = _step(build(), half, gt_classes, args, incoming=scale)
    for name, loss in losses.items():
        assert loss.dtype == torch.float32, f"{name} is {loss.dtype}, not computed in float32"
        torch.testing.assert_close(loss, ref_losses[name], rtol=1e-5, atol=1e-6)
    assert grad.dtype == torch.float16
    got = grad.double()
    assert torch.isfinite(got).all(), f"{int((~torch.isfinite(got)).sum())} non-finite entries"
    kept = expected.abs() >= HALF_TINY
    zeroed = int((kept & (got == 0)).sum())
    assert zeroed == 0, f"{zeroed} of {int(kept.sum())} entries that fp16 can hold are zero"
    error = (got - expected).abs()
    bound = 2.0**-10 * expected.abs() + HALF_TINY
    worst = int(torch.argmax(error - bound))
    assert (error <= bound).all(), (
        f"{int((error > bound).sum())} entries off by more than fp16 rounding, e.g. "
        f"{got.flatten()[worst].item()} vs {expected.flatten()[worst].item()}"
    )
