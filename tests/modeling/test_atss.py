"""ATSS: hand-computed sample selection, hand-computed losses, and a tiny detector end to end."""

import math
import os
import statistics

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from lt_d2.classifiers import build_dense_classifier
from lt_d2.config import add_lt_config, merge_lt_config
from lt_d2.data import CategoryStats
from lt_d2.modeling.dense_heads.atss import ATSS
from lt_d2.modeling.dense_heads.atss_matching import atss_match, centerness_targets

from helpers.tiny_dense import NUM_CLASSES, STATS, tiny_batch, tiny_dense_cfg

# A hand-made 2-level anchor set on a 16 x 8 image.
# Level 0 (stride 4, 4 x 4 anchors), index = 4 * row + column, centres x in {2, 6, 10, 14},
# y in {2, 6}. Level 1 (stride 8, 8 x 8 anchors): index 8 = [0, 0, 8, 8], 9 = [8, 0, 16, 8].
LEVEL0 = torch.tensor(
    [[x - 2, y - 2, x + 2, y + 2] for y in (2.0, 6.0) for x in (2.0, 6.0, 10.0, 14.0)]
)
LEVEL1 = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]])
TOPK = 2  # per level: 2 of level 0's 8 anchors, both of level 1's

GT_A = [0.0, 0.0, 6.0, 4.0]
GT_B = [5.0, 1.0, 15.0, 7.0]
GT_C = [3.0, 0.0, 9.0, 7.0]
GT_D = [1.0, 1.0, 7.0, 7.0]
GT_E = [4.5, 0.0, 10.5, 8.0]

# Per GT: the candidates (2 nearest centres on level 0, then anchors 8 and 9), their IoUs
# worked out by hand as intersection / union, and which candidate centres lie strictly inside.
HAND = {
    # centre (3, 2): level-0 distances 1 (a0), 3 (a1), then sqrt(17) (a4) ...
    # a0 [0,0,4,4]: 16 / 24; a1 [4,0,8,4]: 8 / 32; a8: 24 / 64; a9: 0.
    # a1's centre (6, 2) lies on the right edge x = 6: not strictly inside.
    "A": ([0, 1, 8, 9], [16 / 24, 8 / 32, 24 / 64, 0.0], [True, False, False, False]),
    # centre (10, 4): level-0 distances 2 (a2, a6), then sqrt(20) ...
    # a2 [8,0,12,4]: 12 / 64; a6 [8,4,12,8]: 12 / 64; a8: 18 / 106; a9: 42 / 82.
    "B": ([2, 6, 8, 9], [12 / 64, 12 / 64, 18 / 106, 42 / 82], [True, True, False, True]),
    # centre (6, 3.5): level-0 distances 1.5 (a1), 2.5 (a5), then sqrt(18.25) ...
    # a1 [4,0,8,4] lies inside C: 16 / 42; a5 [4,4,8,8]: 12 / 46; a8: 35 / 71; a9: 7 / 99.
    "C": ([1, 5, 8, 9], [16 / 42, 12 / 46, 35 / 71, 7 / 99], [True, True, True, False]),
    # D = [1,1,7,7], centre (4, 4): a four-way tie at sqrt(8) on level 0 (a0, a1, a4, a5),
    # each with IoU 9 / 43, so either pick gives the same numbers; a8: 36 / 64; a9: 0.
    "D": ([0, 1, 8, 9], [9 / 43, 9 / 43, 36 / 64, 0.0], [True, True, True, False]),
    # centre (7.5, 4): level-0 distances 2.5 (a1, a5), then sqrt(10.25) ...
    # a1: 14 / 50; a5: 14 / 50; a8: 28 / 84; a9: 20 / 92. a8's centre (4, 4) lies left of 4.5.
    "E": ([1, 5, 8, 9], [14 / 50, 14 / 50, 28 / 84, 20 / 92], [True, True, False, False]),
}


def _hand_positives(candidates, ious, inside):
    """ATSS rule from the paper on hand-computed numbers: IoU >= mean + sample std, inside."""
    threshold = statistics.mean(ious) + statistics.stdev(ious)
    return [a for a, iou, ok in zip(candidates, ious, inside) if iou >= threshold and ok]


def _match(gts, topk=TOPK):
    return atss_match([LEVEL0, LEVEL1], torch.tensor(gts), topk).tolist()


def test_hand_computed_thresholds_select_expected_anchors():
    # The threshold arithmetic on the hand numbers gives these positives:
    # A: mean 0.32292 + std 0.27717 = 0.60009 -> a0 (0.667)
    # B: mean 0.26425 + std 0.16551 = 0.42976 -> a9 (0.512)
    # C: mean 0.30137 + std 0.18063 = 0.48200 -> a8 (0.493)
    # D: mean 0.24528 + std 0.23337 = 0.47864 -> a8 (0.5625)
    # E: mean 0.27768 + std 0.04741 = 0.32509 -> a8 (0.333) passes the IoU test, but its
    #    centre is outside E: no positive.
    assert _hand_positives(*HAND["A"]) == [0]
    assert _hand_positives(*HAND["B"]) == [9]
    assert _hand_positives(*HAND["C"]) == [8]
    assert _hand_positives(*HAND["D"]) == [8]
    assert _hand_positives(*HAND["E"]) == []
    assert _hand_positives(HAND["E"][0], HAND["E"][1], [True] * 4) == [8]


@pytest.mark.parametrize(
    "name, expected_anchor", [("A", 0), ("B", 9), ("C", 8), ("D", 8), ("E", None)]
)
def test_single_gt_matches_hand_selection(name, expected_anchor):
    gt = {"A": GT_A, "B": GT_B, "C": GT_C, "D": GT_D, "E": GT_E}[name]
    expected = [-1] * 10
    if expected_anchor is not None:
        expected[expected_anchor] = 0
    assert _match([gt]) == expected


def test_anchor_claimed_by_two_gts_goes_to_higher_iou():
    # C and D both claim a8: IoU 35/71 = 0.493 with C, 36/64 = 0.5625 with D -> D (index 3).
    # A keeps a0, B keeps a9, E has none.
    assert _match([GT_A, GT_B, GT_C, GT_D, GT_E]) == [0, -1, -1, -1, -1, -1, -1, -1, 3, 1]


def test_empty_gt_and_topk_larger_than_level():
    assert _match(torch.zeros((0, 4)).tolist()) == [-1] * 10
    # k = 20 exceeds both levels: all 10 anchors are candidates; IoUs with A are 16/24 (a0),
    # 8/32 (a1), 24/64 (a8), 0 elsewhere: mean 0.12917 + std 0.23112 = 0.36028, so a0 and a8
    # pass the IoU test, but a8's centre (4, 4) lies on A's edge y = 4, not strictly inside.
    assert _match([GT_A], topk=20) == [0] + [-1] * 9


def test_topk_below_one_is_refused_when_the_detector_is_built():
    with pytest.raises(ValueError, match=r"MODEL.ATSS.TOPK must be >= 1, got 0"):
        _model(**{"MODEL.ATSS.TOPK": 0})


def test_centerness_targets_formula():
    # centre (2, 3) in [0, 0, 10, 4]: l=2, r=8, t=3, b=1 -> sqrt(2/8 * 1/3)
    # centre (5, 5) in [0, 0, 10, 10]: 1
    got = centerness_targets(
        torch.tensor([[2.0, 3.0], [5.0, 5.0]]),
        torch.tensor([[0.0, 0.0, 10.0, 4.0], [0, 0, 10, 10]]),
    )
    torch.testing.assert_close(got, torch.tensor([math.sqrt(1 / 12), 1.0]))


def _model(quality_branch="centerness", **overrides):
    cfg = tiny_dense_cfg("ATSS")
    cfg.MODEL.ATSS.QUALITY_BRANCH = quality_branch
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    torch.manual_seed(0)
    return ATSS(cfg, category_stats=STATS)


def _hand_losses_inputs(model):
    """One image with GTs A, B, D (classes 0, 1, 2) on the hand-made anchors, zero deltas
    (predicted boxes = anchors), quality logits 1."""
    anchors = [Boxes(LEVEL0), Boxes(LEVEL1)]
    gt = Instances((8, 16))
    gt.gt_boxes = Boxes(torch.tensor([GT_A, GT_B, GT_D]))
    gt.gt_classes = torch.tensor([0, 1, 2])
    gt_labels, gt_boxes = model.label_anchors(anchors, [gt])
    pred_logits = [torch.zeros(1, 8, NUM_CLASSES), torch.zeros(1, 2, NUM_CLASSES)]
    pred_deltas = [torch.zeros(1, 8, 4), torch.zeros(1, 2, 4)]
    pred_quality = [torch.ones(1, 8, 1), torch.ones(1, 2, 1)]
    return anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_quality


# Positives a0 -> A, a8 -> D, a9 -> B. With predicted boxes = anchors, GIoU = IoU - (enclosing -
# union) / enclosing:
#   a0 [0,0,4,4] vs A: IoU 16/24, enclosing = union = 24            -> loss 1 - 2/3
#   a8 [0,0,8,8] vs D: IoU 36/64, enclosing = union = 64            -> loss 1 - 36/64
#   a9 [8,0,16,8] vs B: IoU 42/82, enclosing [5,0,16,8] = 88        -> loss 1 - (42/82 - 6/88)
GIOU_LOSSES = [1 - 16 / 24, 1 - 36 / 64, 1 - (42 / 82 - 6 / 88)]
IOUS = [16 / 24, 36 / 64, 42 / 82]
# centerness: a0 (2,2) in A: l2 r4 t2 b2; a8 (4,4) in D: all 3; a9 (12,4) in B: l7 r3 t3 b3
CENTERNESS = [math.sqrt(2 / 4 * 2 / 2), 1.0, math.sqrt(3 / 7 * 3 / 3)]


def _bce_of_logit_one(target):
    # -t log sigmoid(1) - (1 - t) log(1 - sigmoid(1)) = log(1 + e) - t
    return math.log(1 + math.e) - target


def test_labels_of_hand_made_image():
    model = _model()
    _, _, gt_labels, _, gt_boxes, _ = _hand_losses_inputs(model)
    assert gt_labels[0].tolist() == [0] + [NUM_CLASSES] * 7 + [2, 1]
    torch.testing.assert_close(gt_boxes[0][[0, 8, 9]], torch.tensor([GT_A, GT_D, GT_B]))
    assert gt_boxes[0][1:8].abs().sum() == 0


def test_centerness_losses_by_hand():
    model = _model("centerness")
    with EventStorage():
        losses = model.losses(*_hand_losses_inputs(model))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    # ATSS: GIoU weighted by the centerness targets, normalised by their sum, weight 2
    box = 2.0 * sum(w * g for w, g in zip(CENTERNESS, GIOU_LOSSES)) / sum(CENTERNESS)
    quality = sum(_bce_of_logit_one(t) for t in CENTERNESS) / 3  # 3 positives
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(box))
    torch.testing.assert_close(losses["loss_centerness"], torch.tensor(quality))


def test_iou_branch_losses_by_hand():
    model = _model("iou")
    with EventStorage():
        losses = model.losses(*_hand_losses_inputs(model))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_iou"}
    # the EFL authors' code: GIoU weighted by the IoU targets, normalised by their sum
    # (at least 1; one worker)
    box = 2.0 * sum(w * g for w, g in zip(IOUS, GIOU_LOSSES)) / max(sum(IOUS), 1.0)
    quality = sum(_bce_of_logit_one(t) for t in IOUS) / 3
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(box))
    torch.testing.assert_close(losses["loss_iou"], torch.tensor(quality))


def test_classification_bias_from_classifier():
    model = _model(**{"MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.PRIOR": 0.001})
    bias = model.head.cls_score.bias.detach()
    assert bias.shape == (model.num_anchors * NUM_CLASSES,)
    torch.testing.assert_close(bias, torch.full_like(bias, math.log(0.001 / 0.999)))


@pytest.mark.parametrize("quality_branch", ["centerness", "iou"])
def test_tiny_atss_trains_and_infers(quality_branch):
    model = _model(
        quality_branch,
        **{
            "MODEL.ANCHOR_GENERATOR.SIZES": [[12, 16], [24, 32], [48, 64], [96, 128], [192, 256]],
            "MODEL.ATSS.TOPK": 18,
        },
    )
    assert model.num_anchors == 2
    model.train()
    with EventStorage():
        losses = model(tiny_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg", f"loss_{quality_branch}"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name in ("cls_score", "bbox_pred", "quality"):
        grad = getattr(model.head, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name

    model.eval()
    with torch.no_grad():
        outputs = model(tiny_batch())
    assert len(outputs) == 2
    for output in outputs:
        instances = output["instances"]
        assert isinstance(instances, Instances)
        assert instances.image_size == (64, 64)
        assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())
        assert len(instances) <= model.max_detections_per_image
        assert ((instances.scores >= 0) & (instances.scores <= 1)).all()


def test_all_images_without_boxes():
    model = _model()
    model.train()
    with EventStorage():
        losses = model(tiny_batch(with_boxes=(False, False)))
    assert losses["loss_box_reg"] == 0 and losses["loss_centerness"] == 0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad.abs().sum() > 0


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="QUALITY_BRANCH"):
        _model("giou")
    with pytest.raises(ValueError, match="IN_FEATURES"):
        _model(**{"MODEL.ATSS.IN_FEATURES": ["p2", "p3"]})


def test_efl_improved_baseline_config_builds_its_model():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(
        cfg, os.path.join(repo, "configs", "efl", "efl_atss_improved_R_50_FPN_2x_lvis_v1.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    # [EFL] sec. 4.1: stabilized settings, IoU branch, scales {6, 8} x stride, k = 18
    assert cfg.SOLVER.WARMUP_ITERS == 6000 and cfg.SOLVER.CLIP_GRADIENTS.ENABLED
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 35.0
    # the official config (United-Perception efl_improved_baseline_r50_2x_rfs.yaml): the whole
    # model's gradient norm clipped, GIoU loss weight 1, test NMS 0.5, 6000 candidates/level
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert cfg.MODEL.ATSS.BOX_LOSS_WEIGHT == 1.0 and cfg.MODEL.ATSS.QUALITY_LOSS_WEIGHT == 1.0
    assert cfg.MODEL.ATSS.NMS_THRESH_TEST == 0.5 and cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST == 6000
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES[0] == [48, 64]
    lvis = CategoryStats(instance_counts=[5] * 1203, image_counts=[2] * 1203, num_images=10)
    model = ATSS(cfg, category_stats=lvis)
    assert type(model.classifier).__name__ == "EqualizedFocalLoss"
    assert (model.num_anchors, model.topk, model.quality_branch) == (2, 18, "iou")
    assert model.head.cls_score.out_channels == 2 * 1203
    bias = model.head.cls_score.bias.detach()
    torch.testing.assert_close(bias, torch.full_like(bias, math.log(0.001 / 0.999)))


def test_head_keeps_its_checkpoint_layout():
    # Towers of (3x3 conv without bias, GroupNorm with 32 groups, ReLU) x 2, then the three
    # output convs and one regression scale per level: the keys ATSS checkpoints hold.
    model = _model()
    keys = {k for k in model.state_dict() if k.startswith("head.")}
    expected = {"head.scales"}
    for tower in ("cls_subnet", "bbox_subnet"):
        expected |= {f"head.{tower}.{i}.weight" for i in (0, 1, 3, 4)}
        expected |= {f"head.{tower}.{i}.bias" for i in (1, 4)}
    for layer in ("cls_score", "bbox_pred", "quality"):
        expected |= {f"head.{layer}.weight", f"head.{layer}.bias"}
    assert keys == expected
    norms = [m for m in model.head.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(32, 32)] * 4
    assert model.head.scales.tolist() == [1.0] * 5
    assert model.head.quality.bias.abs().sum() == 0


def test_head_and_classifier_mismatch_is_reported():
    with pytest.raises(ValueError, match="NUM_CONVS"):
        _model(**{"MODEL.ATSS.NUM_CONVS": 0})
    cfg = tiny_dense_cfg("ATSS")
    kwargs = ATSS.from_config(cfg, category_stats=STATS)
    four = CategoryStats(instance_counts=[1, 1, 1, 1], image_counts=[1, 1, 1, 1], num_images=1)
    kwargs["classifier"] = build_dense_classifier(cfg, 4, four)
    with pytest.raises(ValueError, match="1 anchors x 4 classes .MODEL.ATSS.NUM_CLASSES"):
        ATSS(**kwargs)
