"""LTCheckpointer refuses weights that would silently change the model: a checkpoint of
another classifier with the same logit count, weights that leave parameters random under
--eval-only, a truncated file (named, with the key that points to it)."""

import pytest
import torch
from torch import nn

from lt_d2.classifiers.two_stage.eqlv2 import EQLv2
from lt_d2.classifiers.two_stage.softmax_ce import SoftmaxCE
from lt_d2.engine import LTCheckpointer

C = 4


class _TinyDetector(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.cls_score = nn.Linear(3, classifier.num_logits)
        self.classifier = classifier


def test_checkpoint_of_another_classifier_with_the_same_logit_count_is_refused(tmp_path):
    # EQL v2 (C sigmoid tasks + objectness) and softmax (C classes + background): both C + 1
    LTCheckpointer(_TinyDetector(EQLv2(num_classes=C)), str(tmp_path)).save("eqlv2")
    softmax = _TinyDetector(SoftmaxCE(num_classes=C))
    assert softmax.cls_score.out_features == C + 1
    with pytest.raises(ValueError, match=r"eqlv2\.pth.*EQLv2.*SoftmaxCE.*MODEL.CLASSIFIER.NAME"):
        LTCheckpointer(softmax).load(str(tmp_path / "eqlv2.pth"))
    # the decoupled stage changes the classifier on purpose
    LTCheckpointer(softmax, allow_classifier_change=True).load(str(tmp_path / "eqlv2.pth"))
    assert torch.equal(
        softmax.cls_score.weight, torch.load(tmp_path / "eqlv2.pth")["model"]["cls_score.weight"]
    )


def test_eval_only_with_weights_that_leave_layers_random_is_refused(tmp_path):
    backbone_only = {"model": {"cls_score.weight": torch.zeros(C + 1, 3)}}  # no bias
    torch.save(backbone_only, tmp_path / "partial.pth")
    model = _TinyDetector(SoftmaxCE(num_classes=C))
    with pytest.raises(ValueError, match=r"partial\.pth lacks 1 .*cls_score\.bias"):
        LTCheckpointer(model, require_all_weights=True).load(str(tmp_path / "partial.pth"))


def test_truncated_checkpoint_names_the_path(tmp_path):
    model = _TinyDetector(SoftmaxCE(num_classes=C))
    LTCheckpointer(model, str(tmp_path)).save("full")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"cut\.pth.*truncated.*MODEL.WEIGHTS"):
        LTCheckpointer(model).load(str(tmp_path / "cut.pth"))
