"""EQL v2: gradient-guided reweighting of C sigmoid tasks (Tan et al. 2021, eqs. 3-10).

Every category j is an independent binary task scored by a sigmoid. Each iteration its
positive gradients are multiplied by q_j and its negative gradients by r_j (eqs. 5-8), where
both follow from g_j, the ratio of the positive to the negative gradient magnitudes
accumulated over all previous iterations (eq. 9). A category-agnostic objectness task
(sec. 4.2, eq. 10), positive for every foreground ROI, is trained alongside without
reweighting and multiplies the category scores at inference. Its bias starts at
logit(1 - prior), so that the initial scores are the official code's (see
:meth:`EQLv2.initial_task_logits`).

Logit layout (L = C + 1): columns [0, C) are the categories in contiguous-id order, column C
is the objectness logit.

State: ``pos_grad`` and ``neg_grad`` (C,) float64 buffers, the accumulated magnitudes of
eq. 9. They are computed from the closed-form gradient of the weighted loss with respect to
the logits inside :meth:`EQLv2.losses` (no backward hooks), summed over every worker when
``torch.distributed`` runs more than one process, and saved in checkpoints.
A category whose increment is not finite (a NaN logit) keeps its
state and is counted; the trainer warns, naming it (:mod:`lt_d2.classifiers.state`: skipped on
the device rather than raised, so no host sync per step).

Shape shorthand: R = ROIs, C = foreground classes, L = ``num_logits``.
"""

import logging
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY, Classifier, prior_bias
from ..checks import check_gt_classes, check_logit_count
from ..kernels import one_hot_weighted_sigmoid_bce
from ..state import AccumulatedGradientsMixin

__all__ = ["EQLv2", "eqlv2_mapping", "eqlv2_weights"]

logger = logging.getLogger(__name__)


def eqlv2_mapping(x: torch.Tensor, gamma: float, mu: float) -> torch.Tensor:
    """EQL v2 eq. 6: f(x) = 1 / (1 + exp(-gamma (x - mu))), elementwise."""
    return torch.sigmoid(gamma * (x - mu))


def eqlv2_weights(
    pos_grad: torch.Tensor, neg_grad: torch.Tensor, gamma: float, mu: float, alpha: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """EQL v2 eqs. 5-6: per-category weights of positive and negative gradients.

    g_j = pos_grad_j / neg_grad_j (eq. 9's accumulated ratio), r_j = f(g_j),
    q_j = 1 + alpha (1 - f(g_j)).

    A category that has accumulated no negative gradient yet (neg_grad_j = 0, in particular
    the initial all-zero state) has g_j = +inf, hence f = 1 and q_j = r_j = 1 exactly: the
    first iteration is the plain, un-reweighted sigmoid loss.

    Args:
        pos_grad: (C,) accumulated positive gradient magnitudes (>= 0).
        neg_grad: (C,) accumulated negative gradient magnitudes (>= 0).

    Returns:
        q: (C,) positive weights, r: (C,) negative weights.
    """
    seen = neg_grad > 0
    ratio = pos_grad / torch.where(seen, neg_grad, torch.ones_like(neg_grad))
    f = torch.where(seen, eqlv2_mapping(ratio, gamma, mu), torch.ones_like(ratio))
    return 1.0 + alpha * (1.0 - f), f


@CLASSIFIER_REGISTRY.register()
class EQLv2(AccumulatedGradientsMixin, Classifier):
    """Equalization Loss v2 with C sigmoid tasks and one objectness task.

    Args:
        num_classes: C.
        gamma, mu: shape of the mapping function f (eq. 6); paper defaults 12 and 0.8.
        alpha: up-weighting strength of positive gradients (eq. 5); paper default 4.
        prior: the categories' biases start at logit(prior) (sec. 4.2, "0.001"), the
            objectness bias at logit(1 - prior) (official code, :meth:`initial_task_logits`).

    Initial state: both accumulators are zero, which :func:`eqlv2_weights` reads as
    g_j = +inf, so f(g_j) = 1 and q_j = r_j = 1 exactly: the first iteration trains the
    plain sigmoid loss (the paper starts un-reweighted; q = r = 1 is the only state in which
    neither the positive nor the negative gradient is reweighted, and it needs f = 1).
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        prior: float = 0.001,
    ):
        super().__init__(num_classes=num_classes)
        prior_bias(prior)  # validates
        self.gamma = gamma
        self.mu = mu
        self.alpha = alpha
        self.prior = prior
        # eq. 9 numerator and denominator, accumulated over all iterations and workers
        self._init_accumulated_gradients(num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes):
        node = cfg.MODEL.CLASSIFIER.EQLV2
        return {
            "num_classes": num_classes,
            "gamma": node.GAMMA,
            "mu": node.MU,
            "alpha": node.ALPHA,
            "prior": node.PRIOR,
        }

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, L) raw logits -> (R, C + 1) sigmoid logits of the C category tasks and the
        objectness task (last)."""
        return logits

    def weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C,) q and (C,) r of eq. 5 for the current state (float32)."""
        q, r = eqlv2_weights(self.pos_grad, self.neg_grad, self.gamma, self.mu, self.alpha)
        return q.float(), r.float()

    def balance_weights(self) -> Dict[str, torch.Tensor]:
        q, r = self.weights()
        return {"q": q, "r": r}

    def losses(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Reweighted sigmoid cross entropy, summed over tasks and averaged over ROIs.

        loss = 1/R sum_i [ sum_j w_ij BCE(z_ij, y_ij) + BCE(z_i,obj, y_i,obj) ] with
        w_ij = q_j y_ij + r_j (1 - y_ij), whose logit gradients are eqs. 7-8 (and eqs. 3-4
        for objectness). In training mode the reweighted gradient magnitudes of this batch
        (all workers) are added to the state (eq. 9) after the weights have been read.

        Args:
            logits: (R, L).
            gt_classes: (R,) int64 in [0, C], C = background.
        """
        check_gt_classes(logits, gt_classes, self.num_classes)
        check_logit_count(logits, self.num_logits, type(self).__name__)
        C = self.num_classes
        # positives: (i, gt_i) and (i, C) (objectness) for every foreground ROI i
        fg_rows = (gt_classes < C).nonzero(as_tuple=True)[0]
        pos_rows = torch.cat([fg_rows, fg_rows])
        pos_cols = torch.cat([gt_classes[fg_rows], torch.full_like(fg_rows, C)])
        q, r = self.weights()
        ones = q.new_ones(1)  # the objectness task is not reweighted
        loss, pos_sum, neg_sum = self.task_loss(
            logits.float(), pos_rows, pos_cols, torch.cat([q, ones]), torch.cat([r, ones])
        )
        if self.training:
            self._accumulate(pos_sum[:C], neg_sum[:C], logits.shape[0])
        return {"loss_cls": loss}

    def task_loss(
        self,
        logits: torch.Tensor,
        pos_rows: torch.Tensor,
        pos_cols: torch.Tensor,
        pos_weight: torch.Tensor,
        neg_weight: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reweighted cross entropy of the C + 1 binary tasks scored by the raw logits, with
        the (C + 1,) summed gradient magnitudes with respect to the task logits (eqs. 3-4,
        7-8): :func:`one_hot_weighted_sigmoid_bce` of :meth:`task_logits`.

        Args:
            logits: (R, L) float32. pos_rows, pos_cols: (P,) positive tasks, columns in
                [0, C]. pos_weight, neg_weight: (C + 1,) q and r, 1 for objectness.
        """
        return one_hot_weighted_sigmoid_bce(
            self.task_logits(logits), pos_rows, pos_cols, pos_weight, neg_weight
        )

    @torch.no_grad()
    def _accumulate(self, pos_sum: torch.Tensor, neg_sum: torch.Tensor, num_rois: int) -> None:
        """Eq. 9 update from this worker's (C,) summed gradient magnitudes of its
        ``num_rois`` ROIs: the sums and counts of all workers are added up and the ratio
        (1/|I| with |I| the ROIs of all workers, the gradient of the globally averaged
        loss) is added to the state."""
        self._add_gradients(pos_sum, neg_sum, pos_sum.new_full((1,), float(num_rois)))

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Eq. 10: p'_j = p_j p_obj for the C categories; background column 1 - p_obj.

        Args:
            logits: (R, L). Returns: (R, C + 1).
        """
        p = torch.sigmoid(self.task_logits(logits))
        p_obj = p[:, -1:]
        return torch.cat([p[:, :-1] * p_obj, 1.0 - p_obj], dim=1)

    def initial_task_logits(self) -> List[float]:
        """(C + 1,) bias of each task at initialisation: logit(prior) for the C categories,
        logit(1 - prior) for objectness.

        The paper (sec. 4.2) starts every sigmoid at the prior 0.001. The official code
        (tztztztztz/eqlv2, ``EQLv2`` loss and ``ConvFCBBoxHead.init_weights``) keeps a
        *background* column, positive for background ROIs, whose bias also starts at
        probability 0.001, and scores p_j (1 - p_bg). lt_d2's objectness column is that
        column negated (the same loss: BCE(z, y) = BCE(-z, 1 - y)), so it starts at
        1 - 0.001 and the initial scores are the official ones: p_j p_obj = 0.001 * 0.999.
        """
        start = prior_bias(self.prior)
        return [start] * self.num_classes + [-start]

    def init_bias(self, bias: torch.Tensor) -> None:
        """The C + 1 sigmoid biases of :meth:`initial_task_logits`."""
        with torch.no_grad():
            bias.copy_(torch.tensor(self.initial_task_logits(), dtype=bias.dtype))

    def logit_columns(self) -> List[int]:
        """Categories occupy columns [0, C); the objectness column C is no category's."""
        return list(range(self.num_classes))
