"""Federated sigmoid loss (Zhou et al. 2021, "Probabilistic two-stage detection", CenterNet2).

LVIS is federated: an image is exhaustively annotated for a few categories only, so a
negative term of category j is trustworthy only on images where j was checked. The federated
loss keeps the sigmoid BCE of a subset S of the categories per training batch: every
ground-truth class of the batch, plus classes drawn without replacement with probability
proportional to w_j = image_count_j ^ 0.5 until |S| reaches 50. The other columns get no
gradient (weight 0), positives and negatives alike.

Definition followed (the authors' code: CenterNet2's ``custom_fast_rcnn.py``
``sigmoid_cross_entropy_loss`` and ``_load_class_freq``, as adopted by detectron2 main's
``FastRCNNOutputLayers.get_fed_loss_classes``; defaults ``FED_LOSS_NUM_CAT`` 50,
``FED_LOSS_FREQ_WEIGHT`` 0.5, ``PRIOR_PROB`` 0.01):

- S is drawn once per call of the loss, i.e. per batch of one worker (all its images' ROIs
  together), not per image as the paper's prose says: the official code draws once from
  ``unique(gt_classes)`` of all ROIs of the batch.
- The background label counts towards the 50 when the batch has background ROIs: with U the
  distinct labels of the batch (background included), 50 - |U| foreground classes are
  drawn, so S holds 49 foreground classes in a typical batch (detectron2 main's behaviour;
  the background itself is never drawn). When |U| >= 50 nothing is drawn.
- Categories with no training image (w_j = 0) are never drawn. When fewer candidates are
  left than draws requested (vocabularies under 50 categories, e.g. the demo), every
  candidate is taken; the official code stops with an error there.

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
from typing import Optional, Sequence

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..checks import require_category_stats
from ..kernels import positive_entries
from .sigmoid_bce import SigmoidBCE

__all__ = ["FederatedSigmoidBCE", "federated_classes"]

logger = logging.getLogger(__name__)


def federated_classes(
    gt_classes: torch.Tensor,
    sample_weights: torch.Tensor,
    num_sampled: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The class subset S of the federated loss (CenterNet2 / detectron2 main definition).

    S = U plus max(0, num_sampled - |U|) classes drawn without replacement from the
    foreground classes not in U with probabilities proportional to ``sample_weights``, where
    U = the distinct labels of ``gt_classes`` (background C included when present, though it
    is not a column of the result). Draws are capped at the number of candidates with a
    positive weight.

    Args:
        gt_classes: (R,) int64 in [0, C], C = background.
        sample_weights: (C,) w_j >= 0 (image_count_j ^ power).
        num_sampled: the target size of S, background label included (50).
        generator: random source of the draws (None: torch's default generator).

    Returns:
        (C,) bool mask of the foreground classes in S.
    """
    num_classes = sample_weights.shape[0]
    mask = torch.zeros(num_classes, dtype=torch.bool, device=sample_weights.device)
    if gt_classes.numel() == 0:
        return mask
    appeared = torch.unique(gt_classes)
    foreground = appeared[appeared < num_classes]
    mask[foreground] = True
    num_draws = num_sampled - appeared.numel()
    if num_draws <= 0:
        return mask
    prob = sample_weights.to(torch.float32).clone()
    prob[foreground] = 0.0
    num_draws = min(num_draws, int((prob > 0).sum()))
    if num_draws > 0:
        drawn = torch.multinomial(prob, num_draws, replacement=False, generator=generator)
        mask[drawn] = True
    return mask


@CLASSIFIER_REGISTRY.register()
class FederatedSigmoidBCE(SigmoidBCE):
    """C sigmoid tasks whose BCE is kept on the federated subset S only (module docstring).

    L = (1/R) sum_r sum_{j in S} BCE(z_rj, y_rj): every ROI of the batch, the columns of S.
    Scores at inference: sigmoid(z_j), as :class:`SigmoidBCE`.

    Args:
        num_classes: C.
        image_counts: (C,) training images containing each category.
        num_sampled: size of S, background label included (CenterNet2: 50).
        freq_weight_power: w_j = image_count_j ^ power (CenterNet2: 0.5).
        prior: sigmoid bias prior (CenterNet2 ``ROI_BOX_HEAD.PRIOR_PROB``: 0.01).
        generator: random source of the draws (None: torch's default generator, seeded by
            ``torch.manual_seed``); it must live on the logits' device.
    """

    uses_category_stats = True

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        image_counts: Sequence[int],
        num_sampled: int = 50,
        freq_weight_power: float = 0.5,
        prior: float = 0.01,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__(num_classes=num_classes, prior=prior)
        counts = torch.as_tensor(image_counts, dtype=torch.float32)
        if counts.shape != (num_classes,) or bool((counts < 0).any()):
            raise ValueError(
                f"image_counts must hold one count >= 0 per class ({num_classes}), got shape "
                f"{tuple(counts.shape)}: pass CategoryStats.image_count_array of the training set"
            )
        if num_sampled < 1:
            raise ValueError(
                f"MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.NUM_CLASSES must be >= 1, got "
                f"{num_sampled}"
            )
        if freq_weight_power < 0:
            raise ValueError(
                f"MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.FREQ_WEIGHT_POWER must be >= 0, got "
                f"{freq_weight_power}"
            )
        self.num_sampled = num_sampled
        self.generator = generator
        # derived from the statistics, so not saved in checkpoints
        self.register_buffer("sample_weights", counts.pow(freq_weight_power), persistent=False)
        if num_classes + 1 < num_sampled:
            logger.info(
                "FederatedSigmoidBCE: %d categories < %d federated classes: every category "
                "is in every batch's subset (plain sigmoid BCE)",
                num_classes,
                num_sampled,
            )

    @classmethod
    def from_config(cls, cfg, num_classes: int, category_stats=None) -> dict:
        require_category_stats(cls.__name__, category_stats)
        node = cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE
        return {
            "num_classes": num_classes,
            "image_counts": category_stats.image_count_array.tolist(),
            "num_sampled": node.NUM_CLASSES,
            "freq_weight_power": node.FREQ_WEIGHT_POWER,
            "prior": node.PRIOR,
        }

    def weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(C,) 1 for the classes of this batch's subset S, 0 elsewhere.

        The positive terms are in S by construction (their classes are ground truth of the
        batch), so their weight is 1 as :meth:`SigmoidBCE.weights` requires.
        """
        _, classes = positive_entries(targets)
        if classes.numel() < logits.shape[0]:  # background ROIs: label C is in U
            classes = torch.cat([classes, classes.new_full((1,), self.num_classes)])
        mask = federated_classes(classes, self.sample_weights, self.num_sampled, self.generator)
        return mask.to(logits.dtype)
