"""LTRetinaNet: classification delegated to the dense classifier, lt_d2 box losses, and a tiny
detector end to end."""

import math

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import sigmoid_focal_loss

from lt_d2.classifiers import build_dense_classifier
from lt_d2.data import CategoryStats
from lt_d2.modeling.dense_heads.retinanet import LTRetinaNet

from helpers.tiny_dense import NUM_CLASSES, STATS, tiny_batch, tiny_dense_cfg

C = NUM_CLASSES
ANCHORS = torch.tensor(
    [[x - 2, y - 2, x + 2, y + 2] for y in (2.0, 6.0) for x in (2.0, 6.0, 10.0, 14.0)]
)  # 8 anchors, 4 x 4
# Labels in [-1, C]: three positives (classes 0, 2, 1), two ignored, three background.
LABELS = torch.tensor([0, C, -1, C, 2, C, -1, 1])
GT_BOXES = torch.tensor(
    [[0.5, 0.0, 4.5, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1.0, 3.0, 3.0, 9.0]]
    + [[0, 0, 0, 0], [0, 0, 0, 0], [10.0, 4.0, 20.0, 8.0]]
)


def _model(**overrides):
    cfg = tiny_dense_cfg("LTRetinaNet")
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    torch.manual_seed(0)
    return LTRetinaNet(cfg, category_stats=STATS)


def _hand_inputs():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 8, C, generator=generator) * 3
    deltas = torch.randn(1, 8, 4, generator=generator)
    return [Boxes(ANCHORS)], [logits], [LABELS.clone()], [deltas], [GT_BOXES.clone()]


def _encode(anchors, boxes):
    """RetinaNet's delta encoding with weights (1, 1, 1, 1), written out."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = boxes[:, 0] + gw / 2, boxes[:, 1] + gh / 2
    return torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], 1)


def _balanced_l1(x, alpha=0.5, gamma=1.5):
    """Libra R-CNN eq. 9 at beta = 1, with alpha ln(b + 1) = gamma (eq. 10)."""
    b = math.exp(gamma / alpha) - 1
    x = x.abs()
    inner = alpha / b * (b * x + 1) * torch.log(b * x + 1) - alpha * x
    outer = gamma * x + gamma / b - alpha
    return torch.where(x < 1, inner, outer)


# detectron2's EMA normaliser on the first step: 0.9 * 100 + 0.1 * (3 positives)
NORMALIZER = 0.9 * 100 + 0.1 * 3


def test_classification_loss_is_focal_over_non_ignored_anchors():
    model = _model()
    anchors, logits, labels, deltas, boxes = _hand_inputs()
    with EventStorage():
        losses = model.losses(anchors, logits, labels, deltas, boxes)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    valid = LABELS >= 0
    targets = torch.zeros(8, C + 1)
    targets[valid, LABELS[valid]] = 1
    expected = sigmoid_focal_loss(
        logits[0][0][valid], targets[valid, :C], alpha=0.25, gamma=2.0, reduction="sum"
    )
    torch.testing.assert_close(losses["loss_cls"], expected / NORMALIZER)


def test_balanced_l1_box_loss():
    model = _model(**{"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "balanced_l1"})
    anchors, logits, labels, deltas, boxes = _hand_inputs()
    with EventStorage():
        losses = model.losses(anchors, logits, labels, deltas, boxes)
    pos = torch.tensor([0, 4, 7])
    gt_deltas = _encode(ANCHORS[pos], GT_BOXES[pos])
    diff = deltas[0][0][pos] - gt_deltas
    assert (diff.abs() < 1).any() and (diff.abs() >= 1).any()  # both pieces of eq. 9
    expected = _balanced_l1(diff).sum() / NORMALIZER
    torch.testing.assert_close(losses["loss_box_reg"], expected)


def test_detectron2_box_loss_path_is_kept():
    model = _model(**{"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "giou"})
    anchors, logits, labels, deltas, boxes = _hand_inputs()
    with EventStorage():
        losses = model.losses(anchors, logits, labels, deltas, boxes)
    assert torch.isfinite(losses["loss_box_reg"]) and losses["loss_box_reg"] > 0


def test_classification_bias_from_classifier():
    model = _model(**{"MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.PRIOR": 0.01})
    bias = model.head.cls_score.bias.detach()
    torch.testing.assert_close(bias, torch.full_like(bias, math.log(0.01 / 0.99)))


def test_tiny_retinanet_trains_and_infers():
    model = _model()
    model.train()
    with EventStorage():
        losses = model(tiny_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for layer in (model.head.cls_score, model.head.bbox_pred):
        assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model(tiny_batch())
    assert len(outputs) == 2
    for output in outputs:
        instances = output["instances"]
        assert isinstance(instances, Instances) and instances.image_size == (64, 64)
        assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())
        assert ((instances.scores >= 0) & (instances.scores <= 1)).all()


def test_all_images_without_boxes():
    model = _model()
    model.train()
    with EventStorage():
        losses = model(tiny_batch(with_boxes=(False, False)))
    assert losses["loss_box_reg"] == 0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad.abs().sum() > 0


def test_classifier_with_other_class_count_is_rejected():
    cfg = tiny_dense_cfg("LTRetinaNet")
    four = CategoryStats(instance_counts=[1, 1, 1, 1], image_counts=[1, 1, 1, 1], num_images=1)
    kwargs = LTRetinaNet.from_config(cfg, category_stats=STATS)
    kwargs["classifier"] = build_dense_classifier(cfg, 4, four)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        LTRetinaNet(**kwargs)
