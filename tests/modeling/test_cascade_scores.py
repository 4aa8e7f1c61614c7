"""How LTCascadeROIHeads combines its stages' scores, per MODEL.ROI_BOX_CASCADE_HEAD.
SCORE_AVERAGING: "probs" (detectron2's mean of the stages' probabilities) and "logits" (the
official EQL v2 / BAGS cascade code: the activation of the mean of the stages' logits)."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import lt_d2.modeling.roi_heads.roi_heads as lt_roi_heads
from lt_d2.modeling.roi_heads import LTCascadeROIHeads

from helpers.config import REPO, load_config

CASCADE_DEMO = os.path.join(REPO, "configs", "demo", "softmax_cascade_mask_rcnn_R_18_FPN_demo.yaml")


def _model(classifier, averaging):
    cfg = load_config(
        CASCADE_DEMO,
        "MODEL.CLASSIFIER.NAME", classifier,
        "MODEL.ROI_BOX_CASCADE_HEAD.SCORE_AVERAGING", averaging,
        "MODEL.MASK_ON", False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert isinstance(model.roi_heads, LTCascadeROIHeads)
    with torch.no_grad():
        # stage classifiers that disagree clearly (N(0, 0.01) weights would not)
        for predictor in model.roi_heads.box_predictor:
            predictor.cls_score.weight.normal_(std=0.5)
    return model


def _run(model, monkeypatch):
    """Final (R, C + 1) scores handed to fast_rcnn_inference, and each stage's (R, L) logits."""
    captured, stage_logits = {}, []

    def fake_inference(boxes, scores, image_sizes, *args):
        captured["scores"] = scores[0]
        return [Instances(image_sizes[0])], None

    import detectron2.modeling.roi_heads.cascade_rcnn as d2_cascade

    monkeypatch.setattr(d2_cascade, "fast_rcnn_inference", fake_inference)
    monkeypatch.setattr(lt_roi_heads, "fast_rcnn_inference", fake_inference)
    hooks = [
        p.register_forward_hook(lambda mod, inp, out: stage_logits.append(out[0]))
        for p in model.roi_heads.box_predictor
    ]
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = model.backbone(image)
        proposals = Instances((64, 64))
        proposals.proposal_boxes = Boxes(
            torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 20.0, 20.0]])
        )
        proposals.objectness_logits = torch.zeros(3)
        model.roi_heads._forward_box(features, [proposals])
    for h in hooks:
        h.remove()
    assert len(stage_logits) == 3
    return captured["scores"], stage_logits


def _softmax_scores(z):
    return torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)


def _sigmoid_scores(z):
    """SigmoidBCE's scores: sigmoid per category, background 1 - max."""
    p = 1 / (1 + torch.exp(-z))
    return torch.cat([p, 1 - p.max(dim=1, keepdim=True).values], dim=1)


@pytest.mark.parametrize(
    "classifier, activation", [("SoftmaxCE", _softmax_scores), ("SigmoidBCE", _sigmoid_scores)]
)
def test_scores_per_switch_value(classifier, activation, monkeypatch):
    for averaging in ("logits", "probs"):
        scores, z = _run(_model(classifier, averaging), monkeypatch)
        if averaging == "logits":
            expected = activation((z[0] + z[1] + z[2]) / 3)
        else:
            expected = (activation(z[0]) + activation(z[1]) + activation(z[2])) / 3
        torch.testing.assert_close(scores, expected)
    # the two rules differ on these stages
    assert not torch.allclose(activation(sum(z) / 3), sum(activation(x) for x in z) / 3)


def test_default_is_the_official_logit_average_and_bad_value_is_refused():
    cfg = load_config(CASCADE_DEMO)
    assert cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCORE_AVERAGING == "logits"
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCORE_AVERAGING = "mean"
    with pytest.raises(ValueError, match="SCORE_AVERAGING = 'mean' is unknown"):
        build_model(cfg)
