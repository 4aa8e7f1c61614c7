"""A ROI box predictor whose classification is delegated to a pluggable Classifier.

Shape shorthand: R = sampled ROIs of the batch, C = foreground classes, L = the classifier's
``num_logits``.
"""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    _log_classification_stats,
)
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

from lt_d2.classifiers import Classifier, build_classifier

from ..box_losses import LT_BOX_REGRESSION_LOSSES, box_regression_loss, box_regression_loss_args
from ..classifier_head import ClassifierHead

__all__ = ["LTBoxPredictor"]


class LTBoxPredictor(ClassifierHead, FastRCNNOutputLayers):
    """detectron2's FastRCNNOutputLayers with the classification layer sized, initialised,
    trained and scored by a :class:`~lt_d2.classifiers.Classifier`.

    Box regression is detectron2's, plus Libra R-CNN's balanced L1 and LGR-L1 losses.
    """

    num_classes_key = "MODEL.ROI_HEADS.NUM_CLASSES"

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        classifier: Classifier,
        gradient_stats: bool = True,
        tau_norm: float = 0.0,
        logit_scale: bool = False,
        box_loss_args: Optional[Dict[str, float]] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape (ShapeSpec): shape of the box head's output.
            classifier: the method that turns (R, L) logits into losses and scores.
            gradient_stats: measure the per-category logit gradients (GradientStats).
            tau_norm: at inference, divide each classification weight row by its norm to the
                power tau (tau-normalisation, Kang et al. 2020); 0 disables it.
            logit_scale: multiply the (R, L) logits by a learned (L,) scale, initialised to 1
                (LWS, Kang et al. 2020; trained in the decoupled second stage).
            box_loss_args: keyword arguments of ``box_regression_loss`` for the balanced L1
                and LGR-L1 box losses (their alpha, gamma, beta).
            kwargs: FastRCNNOutputLayers' own arguments.
        """
        super().__init__(input_shape, **kwargs)
        if classifier.num_classes != self.num_classes:
            raise ValueError(
                f"the classifier has {classifier.num_classes} classes, the box predictor "
                f"{self.num_classes}"
            )
        self.attach_classifier(classifier, gradient_stats)
        self.cls_score = nn.Linear(self.cls_score.in_features, classifier.num_logits)
        self.reset_classifier()
        if tau_norm < 0:
            raise ValueError(f"MODEL.CLASSIFIER.TAU_NORM must be >= 0, got {tau_norm}")
        self.tau_norm = tau_norm
        self.logit_scale = nn.Parameter(torch.ones(classifier.num_logits)) if logit_scale else None
        self.box_loss_args = box_loss_args or {}

    @classmethod
    def from_config(cls, cfg, input_shape, **overrides):
        ret = super().from_config(cfg, input_shape)
        ret["classifier"] = build_classifier(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        ret["gradient_stats"] = cfg.MODEL.GRADIENT_STATS.ENABLED
        ret["tau_norm"] = cfg.MODEL.CLASSIFIER.TAU_NORM
        ret["logit_scale"] = cfg.MODEL.DECOUPLE.ENABLED and cfg.MODEL.DECOUPLE.MODE == "LWS"
        if ret["box_reg_loss_type"] in LT_BOX_REGRESSION_LOSSES:
            ret["box_loss_args"] = box_regression_loss_args(
                cfg, ret["box_reg_loss_type"], ret["smooth_l1_beta"]
            )
        ret.update(overrides)
        return ret

    def reset_classifier(self) -> None:
        """(Re-)initialise the final classification layer: N(0, 0.01) weights and the
        classifier's prescribed bias; its gradient statistics start afresh."""
        nn.init.normal_(self.cls_score.weight, std=0.01)
        self.classifier.init_bias(self.cls_score.bias.data)
        if self.gradient_stats is not None:
            self.gradient_stats.reset()

    def classification_layer(self) -> nn.Linear:
        return self.cls_score

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (R, ...) per-ROI features.

        Returns:
            (R, L) classification logits and (R, 4 or 4C) box deltas.
        """
        x = x.flatten(start_dim=1)
        weight = self.cls_score.weight
        if self.tau_norm > 0 and not self.training:
            weight = weight / weight.norm(dim=1, keepdim=True).clamp(min=1e-12) ** self.tau_norm
        logits = F.linear(x, weight, self.cls_score.bias)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        return logits, self.bbox_pred(x)

    def losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: (R, L) logits and (R, 4 or 4C) box deltas from :meth:`forward`.
            proposals: sampled proposals with ``proposal_boxes``, ``gt_classes`` and, where
                matched, ``gt_boxes``.
        """
        logits, proposal_deltas = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else logits.new_zeros((0,), dtype=torch.long)
        )
        with torch.no_grad():
            _log_classification_stats(self.classifier.predict_probs(logits), gt_classes)
        cls_weight = self.loss_weight.get("loss_cls", 1.0)
        losses = {
            k: v * cls_weight for k, v in self.classification_losses(logits, gt_classes).items()
        }

        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
            )
        else:
            proposal_boxes = gt_boxes = proposal_deltas.new_zeros((0, 4))
        losses["loss_box_reg"] = self.loss_weight.get("loss_box_reg", 1.0) * self.box_reg_loss(
            proposal_boxes, gt_boxes, proposal_deltas, gt_classes
        )
        return losses

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """detectron2's box regression loss, plus ``balanced_l1`` and ``lgr_l1``."""
        if self.box_reg_loss_type not in LT_BOX_REGRESSION_LOSSES:
            return super().box_reg_loss(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        box_dim = proposal_boxes.shape[1]
        fg = ((gt_classes >= 0) & (gt_classes < self.num_classes)).nonzero().squeeze(1)
        if pred_deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_pred_deltas = pred_deltas[fg]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg, gt_classes[fg]]
        gt_deltas = self.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
        loss = box_regression_loss(
            self.box_reg_loss_type, fg_pred_deltas, gt_deltas, **self.box_loss_args
        )
        # Normalised by all sampled ROIs, as detectron2 does for its own losses.
        return loss / max(gt_classes.numel(), 1.0)

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, (Ri, C + 1) scores from the classifier's inference rule."""
        logits, _ = predictions
        probs = self.classifier.predict_probs(logits)
        return probs.split([len(p) for p in proposals], dim=0)
