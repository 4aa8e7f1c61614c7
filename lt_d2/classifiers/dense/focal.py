"""Sigmoid focal loss for dense detectors, fused with its analytic gradient.

This module holds the kernel every dense classifier of lt_d2 shares and the RetinaNet
baseline built on it:

- :func:`focal_term`: the focal loss of one binary task and its derivative (pure function);
- :func:`fused_sigmoid_focal_loss`: the loss of C binary tasks over N anchors with
  per-category focusing factors and weights, computed chunk by chunk together with its
  gradient with respect to the logits (a custom autograd function), which also yields the
  per-category positive / negative gradient magnitudes that EFL and EQL v2 accumulate;
- :class:`FocalLoss`: focal loss (alpha = 0.25, gamma = 2, RetinaNet; EFL eq. 1).

Why fused: written with autograd, focal loss keeps about ten (N, C) tensors alive for the
backward pass (one-hot targets, p, p_t, the CE term, the modulating factor, alpha_t, ...). The
fused form computes the loss and the gradient in one pass over row chunks, keeps only the
gradient (one (N, C) tensor, in the logits' dtype) for backward and scales it in place by the
incoming gradient there. Per-anchor one-hot targets are never built: every element is first
treated as a negative and the single positive element of a foreground row is overwritten.

Shape shorthand: N = anchors of the whole batch, C = foreground classes.
"""

import logging
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from torch import nn

from ..base import DENSE_CLASSIFIER_REGISTRY, DenseClassifier, check_gt_classes, prior_bias

__all__ = [
    "FocalLoss",
    "check_dense_inputs",
    "focal_term",
    "fused_sigmoid_focal_loss",
]

logger = logging.getLogger(__name__)

# Logit elements processed per chunk (16 MiB of float32 for each of the four or five
# workspace buffers). Small next to LVIS-size logits (50k anchors x 1203 classes: 229 MiB),
# large enough that per-op overhead (Python, thread-pool barriers on a busy CPU, kernel
# launches on a GPU) stays negligible: measured on the CPU, single-threaded time is flat from
# 2^15 to 2^20 elements, and with two threads on a loaded machine 2^22 was 2.8x faster than
# 2^17 (benchmarks/bench_dense_losses.py).
_CHUNK_ELEMENTS = 1 << 22


def focal_term(
    z: torch.Tensor,
    gamma: Union[float, torch.Tensor],
    out: Optional[torch.Tensor] = None,
    workspace: Optional[Sequence[torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Focal loss of binary tasks written in the logit of the wrong answer, and its derivative.

    For a task with logit x and label y, let z = -x_t = (1 - 2y) x (EFL Fig. 3 writes
    x_t = (2y - 1) x). Then 1 - p_t = sigmoid(z) and -log p_t = softplus(z), so EFL eq. 1/2
    without alpha_t reads

        l(z) = (1 - p_t)^gamma (-log p_t) = sigmoid(z)^gamma softplus(z).

    With d sigmoid(z)/dz = sigmoid(z) sigmoid(-z) and d softplus(z)/dz = sigmoid(z):

        dl/dz = gamma sigmoid(z)^(gamma - 1) sigmoid(z) sigmoid(-z) softplus(z)
                + sigmoid(z)^gamma sigmoid(z)
              = sigmoid(z)^gamma [sigmoid(z) + gamma sigmoid(-z) softplus(z)]   (>= 0)

    and dl/dx = (1 - 2y) dl/dz: negative for a positive (pushes x up), positive for a
    negative. softplus(z) = log(exp(z) + exp(0)), sigmoid(z) and sigmoid(-z) are each
    evaluated directly (no 1 - p cancellation), so the result is finite for any finite z
    (|z| = 100 included) and accurate to float32 rounding of each factor.

    Args:
        z: (...) float tensor, the logits with the sign of the wrong answer.
        gamma: focusing factor, a float or a tensor broadcastable to ``z`` (EFL eq. 3).
        out: optional tensor of z's shape that receives dl/dz (any floating dtype).
        workspace: optional four tensors of z's shape and dtype for the temporaries (so that
            a chunked caller allocates them once); the loss is returned in ``workspace[2]``.

    Returns:
        l(z), dl/dz; both of z's shape (dl/dz is ``out`` when given).
    """
    w = workspace if workspace is not None else (None,) * 4
    softplus = torch.logaddexp(z, z.new_zeros(()), out=w[0])
    p = torch.sigmoid(z, out=w[1])
    modulating = torch.pow(p, gamma, out=w[2])
    # sigmoid(z) + gamma sigmoid(-z) softplus(z)
    bracket = torch.neg(z, out=w[3]).sigmoid_().mul_(softplus).mul_(gamma).add_(p)
    grad = torch.mul(modulating, bracket, out=out)
    loss = modulating.mul_(softplus)
    return loss, grad


def _set_at(values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, new: torch.Tensor):
    """values[i, index[i]] = new[i] where mask[i], in place. values (n, C); index, mask, new
    (n, 1)."""
    values.scatter_(1, index, torch.where(mask, new, values.gather(1, index)))


class _FusedSigmoidFocalLoss(torch.autograd.Function):
    """Loss, per-category gradient magnitudes and saved gradient in one chunked pass.

    The chunk temporaries live in one workspace allocated per call and reused by every chunk
    (allocating them per chunk made the allocator return and re-fault the pages each chunk).

    Forward returns (loss, pos_grad, neg_grad); only ``loss`` is differentiable. The (N, C)
    gradient of ``loss`` w.r.t. the logits is the only tensor kept for backward, which
    multiplies it in place by the incoming gradient and hands it over (so a second backward
    through the same graph is refused rather than silently wrong).
    """

    @staticmethod
    def forward(ctx, logits, gt_classes, gamma, pos_weight, neg_weight):
        num_anchors, num_classes = logits.shape
        keep_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if keep_grad else None
        dtype = pos_weight.dtype  # float32, or float64 for float64 logits
        write_direct = keep_grad and logits.dtype == dtype
        per_class_gamma = isinstance(gamma, torch.Tensor)

        is_pos_all = (gt_classes >= 0) & (gt_classes < num_classes)
        ignored_all = gt_classes < 0
        index_all = gt_classes.long().clamp(0, num_classes - 1)

        loss = logits.new_zeros((), dtype=dtype)
        pos_grad = logits.new_zeros(num_classes, dtype=dtype)
        neg_grad = logits.new_zeros(num_classes, dtype=dtype)
        rows = max(1, min(_CHUNK_ELEMENTS // num_classes, num_anchors))
        # four temporaries of focal_term, and the gradient when it is not written in place
        workspace = logits.new_empty((4 if write_direct else 5, rows * num_classes), dtype=dtype)
        for start in range(0, num_anchors, rows):
            stop = min(start + rows, num_anchors)
            x = logits[start:stop].to(dtype)
            index = index_all[start:stop, None]
            is_pos = is_pos_all[start:stop, None]
            ignored = ignored_all[start:stop, None]
            buffers = [b[: (stop - start) * num_classes].view(stop - start, -1) for b in workspace]

            # every element as a negative of its task: z = x
            loss_el, g = focal_term(
                x,
                gamma,
                out=grad[start:stop] if write_direct else buffers[4],
                workspace=buffers[:4],
            )
            g.mul_(neg_weight)
            g.masked_fill_(ignored, 0.0)
            # the positive element of a foreground row: z = -x
            x_gt = x.gather(1, index)
            gamma_gt = gamma[index] if per_class_gamma else gamma
            loss_gt, g_gt = focal_term(-x_gt, gamma_gt)
            loss_gt = loss_gt * pos_weight[index]
            g_gt = g_gt * pos_weight[index]  # magnitude; dL/dx = -g_gt

            zero = x_gt.new_zeros(())
            _set_at(g, index, is_pos, zero)
            neg_grad += g.sum(dim=0)
            _set_at(g, index, is_pos, -g_gt)
            pos_grad.index_add_(0, index[:, 0], torch.where(is_pos, g_gt, zero)[:, 0])
            if keep_grad and not write_direct:
                grad[start:stop].copy_(g)

            _set_at(loss_el, index, is_pos, zero)
            row_loss = loss_el @ neg_weight + torch.where(is_pos, loss_gt, zero)[:, 0]
            loss += row_loss.masked_fill_(ignored[:, 0], 0.0).sum()

        ctx.grad = grad
        ctx.mark_non_differentiable(pos_grad, neg_grad)
        return loss, pos_grad, neg_grad

    @staticmethod
    def backward(ctx, grad_loss, _grad_pos, _grad_neg):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError(
                "backward ran twice through a fused dense classification loss; its saved "
                "gradient is handed over on the first backward. Recompute the loss instead "
                "of using retain_graph=True."
            )
        return grad.mul_(grad_loss), None, None, None, None


def fused_sigmoid_focal_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    gamma: Union[float, torch.Tensor],
    pos_weight: torch.Tensor,
    neg_weight: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sigmoid focal loss of C tasks over N anchors (EFL eqs. 1, 2, 4).

    L = sum_i sum_j w_ij l_j(z_ij) with z_ij = (1 - 2 y_ij) x_ij, l_j of :func:`focal_term`
    with focusing factor gamma_j, and w_ij = pos_weight_j if y_ij = 1 else neg_weight_j
    (alpha_t, EFL's weighting factor, EQL v2's q_j / r_j and 1 / normalizer all live in the
    weights). Rows with gt_classes = -1 contribute nothing; gt_classes = C rows are negatives
    of every task.

    The gradient dL/dx_ij = (1 - 2 y_ij) w_ij dl_j/dz_ij is computed with the loss, chunked
    over N; it is also summed per category into the magnitudes that reach each category's
    logits from its positives and its negatives (EQL v2 eqs. 3-4 / 7-8, weights included),
    with no backward hook and no host synchronisation.

    Args:
        logits: (N, C) float logits.
        gt_classes: (N,) int64 in [-1, C] (-1 ignored, C background).
        gamma: float or (C,) focusing factors gamma_j.
        pos_weight: (C,) weights of positive elements.
        neg_weight: (C,) weights of negative elements.

    Returns:
        loss (scalar, differentiable w.r.t. ``logits``), pos_grad (C,), neg_grad (C,) (not
        differentiable), computed in float32 (float64 for float64 logits); the gradient is
        stored in the logits' dtype. N = 0 gives zeros and a gradient path.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.to(device=logits.device, dtype=dtype)
    pos_weight = pos_weight.to(device=logits.device, dtype=dtype)
    neg_weight = neg_weight.to(device=logits.device, dtype=dtype)
    return _FusedSigmoidFocalLoss.apply(logits, gt_classes, gamma, pos_weight, neg_weight)


def check_dense_inputs(
    method: str,
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    num_classes: int,
    normalizer: Union[float, torch.Tensor],
) -> None:
    """Fail early, naming the fix, on inputs a dense classifier cannot use.

    Args:
        logits: (N, C). gt_classes: (N,) int64 in [-1, C]. normalizer: > 0.
    """
    check_gt_classes(logits, gt_classes, num_classes, allow_ignore=True)
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"{method} expects (N, {num_classes}) logits (one sigmoid logit per category), got "
            f"{tuple(logits.shape)}: build the head's classification output with "
            f"classifier.num_logits channels per anchor"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{method} needs floating-point logits, got {logits.dtype}")
    if gt_classes.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(
            f"{method} needs integer gt_classes (class indices), got {gt_classes.dtype}"
        )
    if not isinstance(normalizer, torch.Tensor) and not normalizer > 0:
        raise ValueError(
            f"{method}: normalizer must be > 0 (the number of foreground anchors, at least 1), "
            f"got {normalizer}"
        )


@DENSE_CLASSIFIER_REGISTRY.register()
class FocalLoss(DenseClassifier):
    """Sigmoid focal loss, the RetinaNet baseline (EFL eq. 1).

    loss_cls = (1 / normalizer) sum_i sum_j -alpha_t (1 - p_t)^gamma log p_t.

    Args:
        num_classes: C.
        alpha: weight of positives, 1 - alpha of negatives (default 0.25).
        gamma: focusing parameter (default 2).
        prior: the classification bias starts at logit(prior) (RetinaNet: 0.01).
    """

    @configurable
    def __init__(
        self, *, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, prior: float = 0.01
    ):
        super().__init__(num_classes=num_classes)
        prior_bias(prior)  # validates
        self.alpha = alpha
        self.gamma = gamma
        self.prior = prior

    @classmethod
    def from_config(cls, cfg, num_classes):
        node = cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS
        return {
            "num_classes": num_classes,
            "alpha": node.ALPHA,
            "gamma": node.GAMMA,
            "prior": node.PRIOR,
        }

    def losses(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, normalizer: float
    ) -> Dict[str, torch.Tensor]:
        """Args: logits (N, C); gt_classes (N,) in [-1, C]; normalizer > 0."""
        check_dense_inputs(type(self).__name__, logits, gt_classes, self.num_classes, normalizer)
        ones = logits.new_ones(self.num_classes, dtype=torch.float64)
        loss, _, _ = fused_sigmoid_focal_loss(
            logits,
            gt_classes,
            float(self.gamma),
            ones * (self.alpha / normalizer),
            ones * ((1.0 - self.alpha) / normalizer),
        )
        return {"loss_cls": loss}

    def init_bias(self, bias: torch.Tensor) -> None:
        nn.init.constant_(bias, prior_bias(self.prior))
