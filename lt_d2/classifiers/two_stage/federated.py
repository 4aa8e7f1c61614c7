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
- The draw without replacement (the official ``torch.multinomial(..., replacement=False)``)
  is made as an exponential race: each candidate j gets E_j / w_j with E_j ~ Exp(1), and the
  smallest keys win. Its successive minima pick category j with probability proportional to
  w_j among those left, i.e. the same distribution, drawn on the device without a host
  synchronisation (the number of draws stays a tensor).

Shape shorthand: R = ROIs, C = foreground classes.
"""

import logging
from typing import Optional, Sequence

import torch
from detectron2.config import configurable

from ..base import CLASSIFIER_REGISTRY
from ..checks import require_category_stats
from ..compile import compiled_loss, loss_dtype
from .labels import class_targets
from .sigmoid_bce import SigmoidBCE, weighted_sigmoid_bce

__all__ = ["FederatedSigmoidBCE", "federated_classes", "federated_sigmoid_bce_loss"]

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
    device = sample_weights.device
    if gt_classes.numel() == 0:
        return torch.zeros(num_classes, dtype=torch.bool, device=device)
    present = torch.zeros(num_classes + 1, dtype=torch.bool, device=device)
    present.scatter_(0, gt_classes, True)  # U, background label C included
    num_draws = num_sampled - present.sum()
    weights = sample_weights.to(torch.float32)
    candidate = ~present[:num_classes] & (weights > 0)
    # exponential race (module docstring): the num_draws smallest E_j / w_j among candidates
    race = torch.empty(num_classes, device=device).exponential_(generator=generator)
    key = torch.where(candidate, race / weights.clamp(min=1e-30), torch.inf)
    rank = key.argsort().argsort()
    return present[:num_classes] | (candidate & (rank < num_draws))


@compiled_loss
def federated_sigmoid_bce_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, subset: torch.Tensor
) -> torch.Tensor:
    """L = (1/R) sum_r sum_{j in S} BCE(z_rj, y_rj): sigmoid BCE with weight 1 on the columns
    of the federated subset S, 0 elsewhere (CenterNet2's ``sigmoid_cross_entropy_loss``).

    Args:
        logits: (R, C), any float dtype (computed in float32). gt_classes: (R,) in [0, C].
        subset: (C,) bool, S (:func:`federated_classes`).
    """
    z = logits.to(loss_dtype(logits))
    y = class_targets(gt_classes, z.shape[1])
    return weighted_sigmoid_bce(z, y, subset.to(z.dtype))


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

    def loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """This batch's subset S (its ground-truth classes are in S, so every positive term
        keeps weight 1) and the masked BCE (:func:`federated_sigmoid_bce_loss`)."""
        subset = federated_classes(
            gt_classes, self.sample_weights, self.num_sampled, self.generator
        )
        return federated_sigmoid_bce_loss(logits, gt_classes, subset)
