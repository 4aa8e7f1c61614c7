"""The dense detectors' per-level decoding (top-k first, then the score threshold) gives
detectron2's detections (DenseDetector._decode_per_level_predictions: threshold first, then
top-k), at a threshold that keeps every score, one that keeps some, and one that keeps none."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes

from lt_d2.modeling.dense_heads import retinanet

from helpers.tiny_dense import tiny_dense_cfg

LEVELS = (60, 25, 7)  # anchors per level
NUM_CLASSES, TOPK = 9, 40


def _level(num_anchors, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_anchors, 2, generator=g) * 100
    anchors = Boxes(torch.cat([xy, xy + 8 + torch.rand(num_anchors, 2, generator=g) * 30], 1))
    scores = torch.rand(num_anchors, NUM_CLASSES, generator=g)  # distinct: no ties to order
    scores[::5, ::2] = 0.0  # a sigmoid underflows to exactly 0: not above a 0.0 threshold
    deltas = torch.randn(num_anchors, 4, generator=g) * 0.2
    return anchors, scores, deltas


@pytest.fixture(scope="module", params=["LTRetinaNet", "ATSS"])
def model(request):
    torch.manual_seed(0)
    return build_model(tiny_dense_cfg(request.param)).eval()


@pytest.mark.parametrize("thresh", [0.0, 0.05, 0.995, 1.0])
def test_same_detections_as_detectron2_decoding(model, thresh):
    for seed, num_anchors in enumerate(LEVELS):
        anchors, scores, deltas = _level(num_anchors, seed)
        args = (anchors, scores, deltas, thresh, TOPK, (120, 140))
        ours = model._decode_per_level_predictions(*args)
        theirs = DenseDetector._decode_per_level_predictions(model, *args)
        assert len(ours) == len(theirs) == min(TOPK, int((scores > thresh).sum()))
        torch.testing.assert_close(ours.scores, theirs.scores, rtol=0, atol=0)
        assert torch.equal(ours.pred_classes, theirs.pred_classes)
        torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)


def test_whole_image_inference_matches_detectron2_decoding(model, monkeypatch):
    levels = [_level(n, 10 + i) for i, n in enumerate(LEVELS)]
    anchors, scores, deltas = (list(x) for x in zip(*levels))
    monkeypatch.setattr(model, "test_score_thresh", 0.0)
    monkeypatch.setattr(model, "test_topk_candidates", TOPK)
    ours = model.inference_single_image(anchors, scores, deltas, (120, 140))
    monkeypatch.setattr(
        model,
        "_decode_per_level_predictions",
        DenseDetector._decode_per_level_predictions.__get__(model),
    )
    theirs = model.inference_single_image(anchors, scores, deltas, (120, 140))
    assert len(ours) == len(theirs) > 0
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=0, atol=0)
    assert torch.equal(ours.pred_classes, theirs.pred_classes)
    torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)


def test_top_k_over_chunks_is_the_top_k_of_all(monkeypatch):
    monkeypatch.setattr(retinanet, "_TOPK_CHUNK", 7)
    scores = torch.randperm(50).float()  # distinct
    for k in (1, 6, 7, 8, 30, 50, 80):
        values, indices = retinanet._topk_of_flat(scores, k)
        expected = torch.arange(49, 49 - min(k, 50), -1).float()  # the largest, descending
        assert torch.equal(values, expected)
        assert torch.equal(scores[indices], expected)
