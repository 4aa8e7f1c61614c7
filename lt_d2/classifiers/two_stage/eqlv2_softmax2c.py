"""EQL v2 in its 2C-softmax form (Tan et al. 2021, sec. 4.8, Table 9).

Each binary task (the C categories and the objectness task) gets two logits, "yes" and
"others", and its probability is their 2-way softmax,
p_j = exp(z_j) / (exp(z_j) + exp(z'_j)) = sigmoid(z_j - z'_j). The cross entropy of that
softmax is the sigmoid cross entropy of the difference d_j = z_j - z'_j, so the gradient
reweighting of eqs. 5-9 applies unchanged to d_j; the loss gradient reaching the "yes" logit
is exactly dL/dd_j and the one reaching the "others" logit is its negative.

Logit layout (L = 2 (C + 1)): columns [0, C) the categories' "yes" logits, column C the
objectness "object" logit, columns [C + 1, 2C + 1) the categories' "others" logits (same
order), column 2C + 1 the "not an object" logit. The first C + 1 columns thus match
:class:`EQLv2`'s layout and the second block mirrors it.

State: :class:`EQLv2`'s, non-finite increments included (skipped and reported, not folded in).

Shape shorthand: R = ROIs, C = foreground classes, L = ``num_logits``.
"""

from typing import List, Tuple

import torch

from ..base import CLASSIFIER_REGISTRY
from ..compile import compiled_loss, loss_dtype
from .eqlv2 import EQLv2, eqlv2_loss

__all__ = ["EQLv2Softmax2C", "eqlv2_softmax2c_loss", "pair_differences"]


def pair_differences(logits: torch.Tensor) -> torch.Tensor:
    """(R, 2K) logits [z | z'] -> (R, K) d = z - z', the sigmoid logits of K 2-way softmaxes:
    exp(z) / (exp(z) + exp(z')) = sigmoid(z - z') (EQL v2 sec. 4.8)."""
    K = logits.shape[1] // 2
    return logits[:, :K] - logits[:, K:]


@compiled_loss
def eqlv2_softmax2c_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, q: torch.Tensor, r: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EQL v2 sec. 4.8: the cross entropy of each task's 2-way softmax is the sigmoid cross
    entropy of d = z - z', so eqs. 3-9 apply to d unchanged (:func:`eqlv2_loss`); autograd
    sends dL/dd to the "yes" and -dL/dd to the "others" logits.

    Args:
        logits: (R, 2 (C + 1)) "yes" block then "others" block; any float dtype (computed in
            float32). gt_classes: (R,) int64 in [0, C]. q, r: (C,) float32 (eq. 5).

    Returns:
        the loss and the (C,) float64 gradient-magnitude sums of :func:`eqlv2_loss` for d.
    """
    z = logits.to(loss_dtype(logits))
    return eqlv2_loss.eager(pair_differences(z), gt_classes, q, r)


@CLASSIFIER_REGISTRY.register()
class EQLv2Softmax2C(EQLv2):
    """EQL v2 with a 2-way softmax (task vs. its "others") per task; same arguments, state,
    weights and inference rule (eq. 10) as :class:`EQLv2`. Built from the config node
    ``MODEL.CLASSIFIER.EQLV2`` (the paper uses the same hyper-parameters for both forms)."""

    @property
    def num_logits(self) -> int:
        return 2 * (self.num_classes + 1)

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, 2 (C + 1)) -> (R, C + 1) differences "yes" - "others", the sigmoid logits
        equivalent to each 2-way softmax."""
        return pair_differences(logits)

    def loss(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, q: torch.Tensor, r: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`eqlv2_softmax2c_loss`: the sigmoid form's loss and gradient magnitudes on
        the differences d (so the same eq. 9 state)."""
        return eqlv2_softmax2c_loss(logits, gt_classes, q, r)

    def init_bias(self, bias: torch.Tensor) -> None:
        """ "yes" biases :meth:`EQLv2.initial_task_logits`, "others" biases 0, so every task
        starts where the sigmoid form's does (categories at prior, objectness at 1 - prior)."""
        half = self.num_classes + 1
        with torch.no_grad():
            bias[:half] = torch.tensor(self.initial_task_logits(), dtype=bias.dtype)
            bias[half:] = 0.0

    def logit_columns(self) -> List[int]:
        """The "yes" columns [0, C); their gradient is the task gradient of eqs. 3-4 (the
        "others" columns receive its negative)."""
        return list(range(self.num_classes))
