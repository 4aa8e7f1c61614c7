"""Fused loss kernels shared by the classifiers: loss and closed-form logit gradient in one pass.

Three kernels:

- :func:`one_hot_weighted_sigmoid_bce` (and its paired form
  :func:`one_hot_weighted_softmax2_bce`): reweighted sigmoid cross entropy of K tasks over R
  ROIs whose targets are given by their few positive entries (SigmoidBCE, EQL, BackgroundEQL,
  DropLoss, BucketedSigmoidBCE, FederatedSigmoidBCE, EQLv2, EQLv2Softmax2C);
- :func:`softmax_cross_entropy`: weighted softmax cross entropy (SoftmaxCE, LGRSoftmaxCE; its
  row-chunk step :func:`softmax_cross_entropy_rows` also serves Seesaw);
- :func:`fused_sigmoid_focal_loss`: weighted sigmoid focal loss of C tasks over N anchors
  with per-category focusing factors (FocalLoss, EqualizedFocalLoss, EQLv2Focal).

One autograd convention for all (the cheapest in memory and time): the forward pass computes
the loss and its gradient with respect to the logits together, in closed form and chunk by
chunk over rows (a small workspace reused by every chunk), and keeps that gradient, one tensor
of the logits' shape, as the only thing saved for backward (on ``ctx``, not through
``save_for_backward``). The backward pass multiplies it in place by the incoming gradient and
hands it over: no second (rows, columns) buffer is allocated, and a second backward through
the same graph is refused with an error rather than silently wrong. Neither kernel is twice
differentiable.

The binary-task kernels also return, without another pass over the gradient, its per-column
magnitudes summed
over the positive and over the negative entries (EQL v2 eqs. 3-4 / 7-8, weights included),
which EQL v2, EFL and EQLv2Focal accumulate as their state. The focal kernel can hand those
sums, scaled by the incoming gradient, to a ``sink`` in its backward pass (GradientStats of a
FocalLoss head, :mod:`lt_d2.classifiers.gradient_stats`).

Shape shorthand: R = ROIs, N = anchors, K = binary tasks, C = foreground classes.
"""

from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import torch

from .checks import check_paired_logits

__all__ = [
    "ChunkWeights",
    "GradientSink",
    "NegativeWeights",
    "RowWeights",
    "focal_term",
    "fused_sigmoid_focal_loss",
    "hand_over_gradient",
    "one_hot_weighted_sigmoid_bce",
    "one_hot_weighted_softmax2_bce",
    "pair_differences",
    "positive_entries",
    "row_chunks",
    "sigmoid_targets",
    "softmax_cross_entropy",
    "softmax_cross_entropy_rows",
]

# Logit elements processed per chunk of the focal kernel (16 MiB of float32 for each workspace
# buffer). Small next to LVIS-size dense logits (50k anchors x 1203 classes: 229 MiB), large
# enough that per-op overhead (Python, thread-pool barriers on a busy CPU, kernel launches on a
# GPU) stays negligible: measured on the CPU, single-threaded time is flat from 2^15 to 2^20
# elements, and with two threads on a loaded machine 2^22 was 2.8x faster than 2^17
# (benchmarks/bench_dense_losses.py).
_CHUNK_ELEMENTS = 1 << 22
# The same for the BCE kernel, whose logits are smaller (8192 ROIs x 1203 classes: 38 MiB):
# 4 MiB per workspace buffer keeps its temporaries a tenth of its gradient.
_BCE_CHUNK_ELEMENTS = 1 << 20

#: Receives, in backward, the (C,) positive and negative gradient magnitudes of one loss call.
GradientSink = Callable[[torch.Tensor, torch.Tensor], None]

#: Weights of a row chunk, ``(rows, z, p, out) -> (n, K)``: given the chunk's ``rows`` (a slice
#: of [0, R)), its (n, K) logits z and sigmoid probabilities p (neither to be modified) and an
#: (n, K) workspace ``out`` it may write the result into. The kernel calls it once per chunk,
#: in row order.
ChunkWeights = Callable[[slice, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Weights r of the negative terms of :func:`one_hot_weighted_sigmoid_bce`: None (all ones), a
#: (K,) or (R, K) tensor, or :data:`ChunkWeights` evaluated per row chunk, so that per-term
#: weights need no (R, K) buffer of their own.
NegativeWeights = Union[None, torch.Tensor, ChunkWeights]


def _chunk_rows(num_rows: int, num_columns: int, elements: int) -> int:
    return max(1, min(elements // max(num_columns, 1), num_rows))


def row_chunks(num_rows: int, num_columns: int) -> Iterator[slice]:
    """Row slices of an (R, K) problem, in order, each at most the two-stage kernels' chunk
    size (for a loss of this convention written outside this module, e.g. Seesaw's)."""
    rows = _chunk_rows(num_rows, num_columns, _BCE_CHUNK_ELEMENTS)
    for start in range(0, num_rows, rows):
        yield slice(start, min(start + rows, num_rows))


def hand_over_gradient(ctx) -> torch.Tensor:
    """The gradient saved by the forward pass as ``ctx.grad``, taken off ``ctx`` (refused the
    second time): what every kernel's backward returns, scaled by the incoming gradient."""
    grad, ctx.grad = ctx.grad, None
    if grad is None:
        raise RuntimeError(
            "backward ran twice through a fused classification loss; its saved gradient is "
            "handed over on the first backward. Recompute the loss instead of using "
            "retain_graph=True."
        )
    return grad


# ------------------------------------------------------------------ sparse binary targets


def sigmoid_targets(gt_classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary targets y of C sigmoid tasks (EQL v2 Table 1(b), DropLoss eq. 2), stored sparsely:
    a ROI has at most one positive entry.

    Args:
        gt_classes: (R,) int64 in [0, C], C = background.

    Returns:
        (R, C) bool sparse COO tensor (coalesced, indices sorted by ROI) with y[r, j] = 1 iff
        gt_classes[r] == j; a background ROI is an all-zero row.
    """
    rows = (gt_classes < num_classes).nonzero(as_tuple=True)[0]
    return torch.sparse_coo_tensor(
        torch.stack([rows, gt_classes[rows]]),
        torch.ones_like(rows, dtype=torch.bool),
        (gt_classes.shape[0], num_classes),
        is_coalesced=True,
        check_invariants=True,
    )


def positive_entries(targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Coordinates of the entries y = 1 of binary targets.

    Args:
        targets: (R, C) binary targets y, sparse COO (coalesced, :func:`sigmoid_targets`) or
            dense (bool or float).

    Returns:
        (P,) int64 rows (ROIs) and (P,) int64 columns (classes), sorted by row.
    """
    if targets.is_sparse:
        rows, columns = targets.indices()
        return rows, columns
    return targets.nonzero(as_tuple=True)


# ------------------------------------------------------------------ weighted BCE, sparse targets


def pair_differences(logits: torch.Tensor) -> torch.Tensor:
    """(R, 2K) logits [z | z'] -> (R, K) d = z - z', the sigmoid logits of K 2-way softmaxes:
    exp(z) / (exp(z) + exp(z')) = sigmoid(z - z') (EQL v2 sec. 4.8)."""
    check_paired_logits(logits)
    K = logits.shape[1] // 2
    return logits[:, :K] - logits[:, K:]


class _OneHotWeightedBCE(torch.autograd.Function):
    """Forward and closed-form backward of :func:`one_hot_weighted_sigmoid_bce` and, with
    ``paired``, of :func:`one_hot_weighted_softmax2_bce` on the pair differences.

    Every entry is first treated as a negative (loss r softplus(z), gradient r p), chunk by
    chunk; then each positive entry's terms are swapped in (loss q softplus(-z), gradient
    q (p - 1)). The (R, K) gradient, (R, 2K) when paired, is the only full-size tensor.
    """

    @staticmethod
    def forward(ctx, logits, pos_rows, pos_cols, pos_weight, neg_weight, paired):
        num_rows = logits.shape[0]
        K = logits.shape[1] // 2 if paired else logits.shape[1]
        grad_all = torch.empty_like(logits)
        grad = grad_all[:, :K] if paired else grad_all  # dL/dz, or dL/dd when paired
        if paired:
            z_pos = logits[pos_rows, pos_cols] - logits[pos_rows, pos_cols + K]
        else:
            z_pos = logits[pos_rows, pos_cols]
        computed = callable(neg_weight)
        per_term = computed or (neg_weight is not None and neg_weight.dim() == 2)
        if neg_weight is None:
            r_pos = z_pos.new_ones(z_pos.shape)
        else:
            r_pos = z_pos.new_zeros(z_pos.shape) if per_term else neg_weight[pos_cols]
        p_pos = z_pos.new_zeros(z_pos.shape)
        dense = logits.new_zeros((), dtype=torch.float64)
        rows = _chunk_rows(num_rows, K, _BCE_CHUNK_ELEMENTS)
        # softplus, the computed weights, and when paired d and p (contiguous: sigmoid into a
        # strided output rounds differently from the vectorised path); allocated once
        names = ["softplus"] + ["weights"] * computed + ["d", "p"] * paired
        workspace = dict(zip(names, logits.new_empty((len(names), rows * K))))
        for start in range(0, num_rows, rows):
            stop = min(start + rows, num_rows)
            n = stop - start
            buffers = {name: b[: n * K].view(n, K) for name, b in workspace.items()}
            if paired:
                z = torch.sub(logits[start:stop, :K], logits[start:stop, K:], out=buffers["d"])
            else:
                z = logits[start:stop]
            p = torch.sigmoid(z, out=buffers["p"] if paired else grad[start:stop])
            if computed:
                w = neg_weight(slice(start, stop), z, p, buffers["weights"])
            else:
                w = neg_weight[start:stop] if per_term else neg_weight
            # every entry as a negative: -r log(1 - p) = r softplus(z)
            softplus = torch.logaddexp(z, z.new_zeros(()), out=buffers["softplus"])
            if w is not None:
                softplus.mul_(w)
            dense += softplus.sum(dim=0).sum(dtype=torch.float64)
            # p and r at the positive entries of this chunk (O(P), no host sync)
            inside = (pos_rows >= start) & (pos_rows < stop)
            local = (pos_rows - start).clamp_(0, n - 1)
            zero = p_pos.new_zeros(())
            p_pos += torch.where(inside, p[local, pos_cols], zero)
            if per_term:
                r_pos += torch.where(inside, w[local, pos_cols], zero)
            if w is not None:  # the gradient r p of every entry as a negative
                torch.mul(p, w, out=grad[start:stop])
            elif paired:
                grad[start:stop].copy_(p)
            if paired:  # dL/d"others" = -dL/dd, written while the chunk is in cache
                torch.neg(grad[start:stop], out=grad_all[start:stop, K:])
        q_pos = pos_weight[pos_cols]
        # each positive's term swapped in: q softplus(-z) instead of r softplus(z)
        zero = z_pos.new_zeros(())
        swap = q_pos * torch.logaddexp(-z_pos, zero) - r_pos * torch.logaddexp(z_pos, zero)
        loss = dense + swap.sum(dtype=torch.float64)
        # gradient magnitudes of eqs. 7-8, summed over rows (no 1/R)
        pos_sum = logits.new_zeros(K, dtype=torch.float64)
        pos_sum.index_add_(0, pos_cols, (q_pos * (1.0 - p_pos)).double())
        grad.index_put_((pos_rows, pos_cols), zero)
        neg_sum = grad.sum(dim=0).double()
        # R dL/dz = w (p - y): r p at the negatives, q (p - 1) at the positives
        grad_pos = q_pos * (p_pos - 1.0)
        grad.index_put_((pos_rows, pos_cols), grad_pos, True)
        if paired:
            grad_all.index_put_((pos_rows, pos_cols + K), -grad_pos)
        ctx.num_rows = max(num_rows, 1)
        ctx.grad = grad_all
        ctx.mark_non_differentiable(pos_sum, neg_sum)
        return (loss / ctx.num_rows).to(logits.dtype), pos_sum, neg_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_pos, _grad_neg):
        grad = hand_over_gradient(ctx)
        return grad.mul_(grad_loss / ctx.num_rows), None, None, None, None, None


def one_hot_weighted_sigmoid_bce(
    logits: torch.Tensor,
    pos_rows: torch.Tensor,
    pos_cols: torch.Tensor,
    pos_weight: torch.Tensor,
    neg_weight: NegativeWeights,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reweighted sigmoid BCE with sparse binary targets, summed over tasks, averaged over ROIs.

    L = 1/R sum_ij w_ij BCE(z_ij, y_ij), w_ij = q_j if y_ij = 1 else r_ij: EQL v2 eqs. 3-8
    (r_ij = r_j), DropLoss eqs. 2, 4 and 5-6 and Libra eq. 20 (q = 1, r the method's weights
    of the negative terms), plain sigmoid BCE for q = r = 1 (EQL v2 Table 1(b)). The targets
    are given by their positive entries only (a ROI has at most a few), which avoids dense
    (R, K) target tensors; the gradient dL/dz_ij = w_ij (p_ij - y_ij) / R is computed in the
    forward pass (module docstring), the same quantity whose magnitudes EQL v2 accumulates
    (eq. 9).

    Args:
        logits: (R, K) float logits z.
        pos_rows, pos_cols: (P,) int64 coordinates of the entries with y = 1 (each once).
        pos_weight: (K,) q_j (eq. 7), detached, in the dtype of ``logits``.
        neg_weight: r (eq. 8): None for all ones, (K,) r_j or (R, K) r_ij, detached (any
            real dtype), or a function giving them per row chunk (:data:`NegativeWeights`).
            Its entries at positive terms are not used.

    Returns:
        loss (scalar; 0 when R = 0), and (K,) float64 sums over ROIs of the reweighted
        positive and negative gradient magnitudes q_j (1 - p_ij) and r_ij p_ij (eqs. 3-4 and
        7-8 without their 1/|I|).
    """
    return _OneHotWeightedBCE.apply(logits, pos_rows, pos_cols, pos_weight, neg_weight, False)


def one_hot_weighted_softmax2_bce(
    logits: torch.Tensor,
    pos_rows: torch.Tensor,
    pos_cols: torch.Tensor,
    pos_weight: torch.Tensor,
    neg_weight: NegativeWeights,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`one_hot_weighted_sigmoid_bce` of K binary tasks each scored by a 2-way softmax
    over a "yes" logit z_j and an "others" logit z'_j (EQL v2 sec. 4.8, Table 9).

    p_ij = exp(z_ij) / (exp(z_ij) + exp(z'_ij)) = sigmoid(d_ij) with d = z - z'
    (:func:`pair_differences`), so the reweighted cross entropy of each 2-way softmax is the
    reweighted sigmoid BCE of d, and dL/dz_ij = dL/dd_ij = w_ij (p_ij - y_ij) / R,
    dL/dz'_ij = -dL/dd_ij. The differences are formed chunk by chunk and both halves of the
    (R, 2K) gradient are written directly (no (R, K) or (R, 2K) intermediates).

    Args:
        logits: (R, 2K): columns [0, K) the "yes" logits z, columns [K, 2K) the "others"
            logits z' of the same tasks in the same order.
        pos_rows, pos_cols, pos_weight, neg_weight: as in :func:`one_hot_weighted_sigmoid_bce`,
            columns in [0, K).

    Returns:
        loss and the (K,) float64 gradient-magnitude sums, as
        :func:`one_hot_weighted_sigmoid_bce` returns them for d.
    """
    check_paired_logits(logits)
    return _OneHotWeightedBCE.apply(logits, pos_rows, pos_cols, pos_weight, neg_weight, True)


# ------------------------------------------------------------------ softmax cross entropy

#: Per-row weights of :func:`softmax_cross_entropy`: an (R,) tensor, or a function of a row
#: chunk's (n,) log-probabilities of the targets (detached) returning the (n,) weights.
RowWeights = Union[None, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def softmax_cross_entropy_rows(
    x: torch.Tensor,
    target: torch.Tensor,
    divisor: float,
    row_weight: RowWeights = None,
    out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One row chunk of a softmax cross entropy: -sum_i w_i log softmax(x_i)[t_i] and its
    gradient w_i (softmax(x_i) - onehot(t_i)) / divisor (the chunk step of
    :func:`softmax_cross_entropy`, also Seesaw's).

    Args:
        x: (n, L) logits (not modified). target: (n, 1) int64 in [0, L).
        divisor: the loss's denominator (> 0).
        row_weight: None (all ones), (n,) w_i, or a function of the (n,) log p_t (detached)
            returning them.
        out: (n, L) tensor that receives the gradient; None returns a new one.

    Returns:
        the float64 loss sum (not divided), the (n, L) gradient.
    """
    log_p = torch.log_softmax(x, dim=1)  # bitwise autograd's cross entropy's
    log_p_t = log_p.gather(1, target)[:, 0]
    w = row_weight(log_p_t) if callable(row_weight) else row_weight
    loss = -(log_p_t if w is None else w * log_p_t).sum(dtype=torch.float64)
    p = log_p.exp_()
    p.scatter_add_(1, target, p.new_full(target.shape, -1.0))
    scale = 1.0 / divisor if w is None else (w / divisor)[:, None]
    return loss, (p.mul_(scale) if out is None else torch.mul(p, scale, out=out))


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Forward and closed-form backward of :func:`softmax_cross_entropy`, chunked over rows."""

    @staticmethod
    def forward(ctx, logits, targets, divisor, row_weight):
        grad = torch.empty_like(logits)
        loss = logits.new_zeros((), dtype=torch.float64)
        for rows in row_chunks(*logits.shape):
            w = row_weight if row_weight is None or callable(row_weight) else row_weight[rows]
            chunk_loss, _ = softmax_cross_entropy_rows(
                logits[rows], targets[rows, None], divisor, w, out=grad[rows]
            )
            loss += chunk_loss
        ctx.grad = grad
        return (loss / divisor).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        return hand_over_gradient(ctx).mul_(grad_loss), None, None, None


def softmax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    divisor: float,
    row_weight: RowWeights = None,
) -> torch.Tensor:
    """Weighted softmax cross entropy, L = -1/divisor sum_i w_i log softmax(z_i)[t_i].

    The softmax classifiers' loss: plain (detectron2's, w = 1, divisor R) and Libra eq. 19
    (w_i = rho_i of the target's probability, :data:`RowWeights`); Seesaw runs its chunk step
    (:func:`softmax_cross_entropy_rows`) on its own rows and offsets. The gradient
    dL/dz_i = w_i (softmax(z_i) - onehot(t_i)) / divisor, with w constant, is computed in the
    forward pass (module docstring): one (R, L) tensor, where autograd's cross entropy keeps
    the log-probabilities and allocates two more for backward.

    Args:
        logits: (R, L) float logits z.
        targets: (R,) int64 in [0, L).
        divisor: the loss's denominator (> 0).
        row_weight: None (all ones), (R,) w_i, or a function of the (n,) log p_t of a row
            chunk (detached) returning its (n,) weights.

    Returns:
        the loss, a scalar in the logits' dtype (0 when R = 0).
    """
    return _SoftmaxCrossEntropy.apply(logits, targets, float(divisor), row_weight)


# ------------------------------------------------------------------ sigmoid focal loss


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

    Forward returns (loss, pos_grad, neg_grad); only ``loss`` is differentiable. With a
    ``sink``, backward hands it (pos_grad, neg_grad) times |incoming gradient|: the magnitudes
    of the gradient that actually reaches the logits.
    """

    @staticmethod
    def forward(ctx, logits, gt_classes, gamma, pos_weight, neg_weight, sink):
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
        rows = _chunk_rows(num_anchors, num_classes, _CHUNK_ELEMENTS)
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
        ctx.sink = sink
        if sink is not None:
            ctx.sums = (pos_grad.clone(), neg_grad.clone())
        ctx.mark_non_differentiable(pos_grad, neg_grad)
        return loss, pos_grad, neg_grad

    @staticmethod
    def backward(ctx, grad_loss, _grad_pos, _grad_neg):
        grad = hand_over_gradient(ctx)
        if ctx.sink is not None:
            scale = grad_loss.abs()
            ctx.sink(*(s * scale for s in ctx.sums))
        return grad.mul_(grad_loss), None, None, None, None, None


def fused_sigmoid_focal_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    gamma: Union[float, torch.Tensor],
    pos_weight: torch.Tensor,
    neg_weight: torch.Tensor,
    sink: Optional[GradientSink] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sigmoid focal loss of C tasks over N anchors (EFL eqs. 1, 2, 4).

    L = sum_i sum_j w_ij l_j(z_ij) with z_ij = (1 - 2 y_ij) x_ij, l_j of :func:`focal_term`
    with focusing factor gamma_j, and w_ij = pos_weight_j if y_ij = 1 else neg_weight_j
    (alpha_t, EFL's weighting factor, EQL v2's q_j / r_j and 1 / normalizer all live in the
    weights). Rows with gt_classes = -1 contribute nothing; gt_classes = C rows are negatives
    of every task.

    The gradient dL/dx_ij = (1 - 2 y_ij) w_ij dl_j/dz_ij is computed with the loss, chunked
    over N (module docstring); it is also summed per category into the magnitudes that reach
    each category's logits from its positives and its negatives (EQL v2 eqs. 3-4 / 7-8,
    weights included), with no backward hook and no host synchronisation.

    Args:
        logits: (N, C) float logits.
        gt_classes: (N,) int64 in [-1, C] (-1 ignored, C background).
        gamma: float or (C,) focusing factors gamma_j.
        pos_weight: (C,) weights of positive elements.
        neg_weight: (C,) weights of negative elements.
        sink: called in backward with the (C,) positive and negative sums times the absolute
            incoming gradient (the magnitudes reaching the logits), e.g. GradientStats's.

    Returns:
        loss (scalar, differentiable w.r.t. ``logits``), pos_grad (C,), neg_grad (C,) (not
        differentiable, for an incoming gradient of 1), computed in float32 (float64 for
        float64 logits); the gradient is stored in the logits' dtype. N = 0 gives zeros and
        a gradient path.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.to(device=logits.device, dtype=dtype)
    pos_weight = pos_weight.to(device=logits.device, dtype=dtype)
    neg_weight = neg_weight.to(device=logits.device, dtype=dtype)
    return _FusedSigmoidFocalLoss.apply(logits, gt_classes, gamma, pos_weight, neg_weight, sink)
