"""Per-category positive / negative gradient statistics of any classifier.

EQL v2 (sec. 3.2, Fig. 1/2) watches, for every category j, the magnitude of the gradient of
the classification loss with respect to the category's logit z_j, split into the part coming
from samples whose label is j (positives) and the part coming from every other sample
(negatives), accumulated over training. For a sigmoid classifier these are eqs. 3-4 summed
over iterations (eq. 9's numerator and denominator); their ratio tells whether category j is
trained in balance.

The one route: :class:`GradientStats` measures the gradient that actually reaches the logits
in backward, whatever the classifier, with a tensor hook on the logits (no second backward, no
host sync), reduced per category by the pure function :func:`positive_negative_sums`
(compiled like the losses). A second hook on the classifier's ``loss_cls`` captures the
gradient arriving there, which is the loss scale (GradScaler) times the weight a head puts on
the loss; the sums are divided by it, so they are the magnitudes of the gradient of the
classifier's own loss, unscaled, with or without mixed precision. A stateful classifier's own
sums (EQL v2, EFL) are its method's state, computed in closed form inside its loss; the
diagnostics never read them.

The sums accumulate on the device in registered buffers (checkpointed with the model) and are
all-reduced across workers only when asked (:meth:`GradientStats.synced`, called at logging
time). A category whose gradient is not finite in a step is skipped and counted, never added
(:func:`lt_d2.classifiers.state.add_finite_`): under a GradScaler that is an overflow, a step
the scaler skips as well; without one the trainer warns that the model diverges.

Shape shorthand: R = ROIs (two-stage) or anchors (dense), C = foreground classes,
L = the classifier's ``num_logits``.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
from detectron2.utils import comm
from torch import nn

from .base import Classifier
from .checks import check_observed_inputs
from .compile import column_sums, compiled_loss
from .state import add_finite_, all_reduce_sum, register_nonfinite_counter

__all__ = [
    "GradientStats",
    "GradientBalance",
    "gradient_ratio",
    "positive_negative_sums",
]


class GradientBalance(NamedTuple):
    """Accumulated gradient statistics of C categories, summed over all workers.

    pos: (C,) accumulated positive gradient magnitude per category.
    neg: (C,) accumulated negative gradient magnitude per category.
    ratio: (C,) pos / neg (EQL v2's g_j, eq. 9); 0 where no negative gradient arrived yet.
    """

    pos: torch.Tensor
    neg: torch.Tensor
    ratio: torch.Tensor


def gradient_ratio(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """EQL v2 eq. 9: g_j = pos_j / neg_j, (C,) -> (C,), defined as 0 where neg_j = 0."""
    return torch.where(neg > 0, pos / neg.clamp(min=torch.finfo(neg.dtype).tiny), pos * 0)


@compiled_loss
def positive_negative_sums(
    grad: torch.Tensor, gt_classes: torch.Tensor, columns: Optional[torch.Tensor], num_classes: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split |dL/dz| of each category's logit column into its positive and negative part.

    For category j with logit column c_j (EQL v2 eqs. 3-4, in absolute value)::

        pos_j = sum_{i: gt_i = j} |grad[i, c_j]|
        neg_j = sum_{i: gt_i != j, gt_i != -1} |grad[i, c_j]|

    Rows labelled -1 are ignored by every classifier's loss, so their gradient is zero and
    they add to neither sum; the negative part is therefore the column's total minus the
    positive part, which avoids materialising an (R, C) mask.

    Args:
        grad: (R, L) gradient of the loss with respect to the logits.
        gt_classes: (R,) int64 in [-1, C] (-1 ignored, C background).
        columns: (C,) int64 logit column of each category, or None when category j is column
            j (the first C columns), which avoids copying the gradient.
        num_classes: C.

    Returns:
        (C,), (C,) float32 positive and negative sums.
    """
    scores = grad[:, :num_classes] if columns is None else grad.index_select(1, columns)
    total = column_sums(scores.abs().float())
    is_fg = (gt_classes >= 0) & (gt_classes < num_classes)
    label = torch.where(is_fg, gt_classes, gt_classes.new_zeros(()))
    own = scores.gather(1, label[:, None])[:, 0].abs().float() * is_fg
    pos = total.new_zeros(num_classes).index_add_(0, label, own)
    return pos, (total - pos).clamp(min=0)  # no rounding below 0 where all rows are positives


class GradientStats(nn.Module):
    """Accumulates the positive and negative logit gradients of one classifier, per category.

    Heads own one as a submodule, route the classification logits through :meth:`observe`
    right before the classifier's loss and the loss through :meth:`watch_loss` right after::

        logits = self.gradient_stats.observe(logits, gt_classes)
        losses = self.classifier.losses(logits, gt_classes, ...)
        losses["loss_cls"] = self.gradient_stats.watch_loss(losses["loss_cls"])

    Without :meth:`watch_loss` the sums are those of the whole gradient reaching the logits
    (loss scale and outer loss weights included). GradientStats holds no reference to the
    classifier; the head owns both.

    State (registered buffers, saved in checkpoints):
        pos_grad, neg_grad: (C,) sums over all workers as of the last :meth:`synced`.
        pos_grad_local, neg_grad_local: (C,) this worker's increments since then.

    All-reduce happens only in :meth:`synced`. A checkpoint (written by the main process)
    holds the synced totals plus the main process's increments; after loading, the other
    workers drop the increments they received, so a resumed run counts each gradient once.
    """

    def __init__(self, classifier: Classifier):
        super().__init__()
        name = type(classifier).__name__
        try:
            columns = [int(c) for c in classifier.logit_columns()]
        except NotImplementedError as e:
            raise ValueError(
                f"GradientStats cannot attribute the logits of classifier {name} to "
                f"categories ({e}); set MODEL.GRADIENT_STATS.ENABLED False for it, or implement "
                f"{name}.logit_columns()"
            ) from e
        num_classes, num_logits = classifier.num_classes, classifier.num_logits
        if len(columns) != num_classes or len(set(columns)) != num_classes:
            raise ValueError(
                f"{name}.logit_columns() must give {num_classes} distinct columns (one per "
                f"category), got {len(columns)} with {len(set(columns))} distinct"
            )
        if min(columns) < 0 or max(columns) >= num_logits:
            raise ValueError(
                f"{name}.logit_columns() must lie in [0, {num_logits}) (num_logits), got "
                f"values in [{min(columns)}, {max(columns)}]"
            )
        self.num_classes = num_classes
        self.num_logits = num_logits
        self.classifier_name = name
        self._first_columns = columns == list(range(num_classes))
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.int64), False)
        for buffer in ("pos_grad", "neg_grad", "pos_grad_local", "neg_grad_local"):
            self.register_buffer(buffer, torch.zeros(num_classes))
        # the gradient reaching the watched loss in the current backward (loss scale x weight)
        self.register_buffer("loss_gradient", torch.ones(()), persistent=False)
        register_nonfinite_counter(self, num_classes)
        self.register_load_state_dict_post_hook(_drop_other_workers_increments)

    def logit_columns(self) -> List[int]:
        """(C,) logit column of each category (to map final-layer rows to categories)."""
        return self.columns.tolist()

    def reset(self) -> None:
        """Forget the accumulated sums (a re-initialised classification layer starts a new
        history)."""
        for buffer in (self.pos_grad, self.neg_grad, self.pos_grad_local, self.neg_grad_local):
            buffer.zero_()

    def _active(self, x: torch.Tensor) -> bool:
        return self.training and torch.is_grad_enabled() and x.requires_grad

    def observe(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """Return ``logits`` unchanged, watched so that backward accumulates the statistics.

        Args:
            logits: (R, L) logits about to be fed to the classifier's loss.
            gt_classes: (R,) integer in [-1, C] (-1 ignored, C background).

        Returns:
            (R, L) the same values; use this tensor for the loss. Outside training or without
            grad, ``logits`` itself.
        """
        if not self._active(logits):
            return logits
        check_observed_inputs(logits, gt_classes)
        self.loss_gradient.fill_(1.0)  # until watch_loss's hook reports this step's
        labels = gt_classes.detach()
        watched = logits.view_as(logits)
        watched.register_hook(lambda grad: self._accumulate(grad, labels))
        return watched

    def watch_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Return the classifier's 0-d ``loss`` unchanged, watched so that the gradient
        arriving at it in backward (GradScaler's scale times the head's loss weight) divides
        the sums of the same backward: they become the unscaled magnitudes of the gradient of
        ``loss`` itself. Outside training or without grad, ``loss`` itself."""
        if not self._active(loss):
            return loss
        watched = loss.view_as(loss)
        watched.register_hook(self._record_loss_gradient)
        return watched

    @torch.no_grad()
    def _record_loss_gradient(self, grad: torch.Tensor) -> None:
        # runs before the logits' hook: the loss is downstream of the logits
        self.loss_gradient.copy_(grad.reshape(()))

    @torch.no_grad()
    def _accumulate(self, grad: torch.Tensor, gt_classes: torch.Tensor) -> None:
        columns = None if self._first_columns else self.columns
        pos, neg = positive_negative_sums(grad, gt_classes, columns, self.num_classes)
        # a loss weighted 0 sends 0 to the logits: 0 / 1, not 0 / 0
        scale = torch.where(self.loss_gradient != 0, self.loss_gradient, 1.0)
        add_finite_(
            (self.pos_grad_local, self.neg_grad_local),
            (pos / scale, neg / scale),
            self.nonfinite_updates,
        )

    def synced(self) -> GradientBalance:
        """Accumulated sums over all workers (a collective call: every worker must call it).

        This worker's increments are all-reduced (summed) into the totals and reset, so
        calling it at every logging period sums each increment exactly once. Each worker's
        increments are gradients of its own loss, which DDP averages over the W workers: the
        sum is divided by W, so W workers record what one process would on all their batches.
        """
        increments = all_reduce_sum(torch.stack([self.pos_grad_local, self.neg_grad_local]))
        increments /= comm.get_world_size()
        self.pos_grad += increments[0]
        self.neg_grad += increments[1]
        self.pos_grad_local.zero_()
        self.neg_grad_local.zero_()
        pos, neg = self.pos_grad.clone(), self.neg_grad.clone()
        return GradientBalance(pos, neg, gradient_ratio(pos, neg))

    def extra_repr(self) -> str:
        return f"classifier={self.classifier_name}, num_classes={self.num_classes}"


def _drop_other_workers_increments(module: GradientStats, incompatible_keys) -> None:
    # Checkpoints are written by the main process: its unsynced increments are in the file
    # once, so every other worker forgets the copy it just loaded.
    if comm.get_rank() != 0:
        module.pos_grad_local.zero_()
        module.neg_grad_local.zero_()
