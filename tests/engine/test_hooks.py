"""GradientBalanceHook on a tiny fake trainer: scalar names and values, images, dumps; and
NonFiniteStateHook reporting a classifier's skipped updates at its period."""

import logging
import os
from types import SimpleNamespace
from typing import Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.utils.events import EventStorage
from torch import nn

from lt_d2.classifiers import Classifier
from lt_d2.classifiers.two_stage.eqlv2 import EQLv2
from lt_d2.data import CategoryStats
from lt_d2.engine.hooks import GradientBalanceHook, NonFiniteStateHook, classifier_weight_norms
from lt_d2.evaluation.balance import list_balance_dumps, load_balance_dump
from lt_d2.modeling.classifier_head import ClassifierHead

C, D = 6, 8
# two categories of each frequency group: rare (<= 10 images), common, frequent
STATS = CategoryStats(
    instance_counts=[5000, 3, 40, 700, 9, 120],
    image_counts=[900, 2, 30, 500, 8, 60],
    num_images=1000,
)


class _Softmax(Classifier):
    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def losses(self, logits, gt_classes) -> Dict[str, torch.Tensor]:
        return {"loss_cls": F.cross_entropy(logits, gt_classes)}

    def balance_weights(self) -> Dict[str, torch.Tensor]:
        return {"q": torch.linspace(1.0, 2.0, self.num_classes)}


class _Predictor(ClassifierHead, nn.Module):
    """A minimal ClassifierHead: one linear layer classified by _Softmax."""

    num_classes_key = "MODEL.ROI_HEADS.NUM_CLASSES"

    def __init__(self, layer=None):
        super().__init__()
        self.attach_classifier(_Softmax(num_classes=C), gradient_stats=True)
        self.layer = nn.Linear(D, C + 1) if layer is None else layer

    def classification_layer(self):
        return self.layer

    def loss(self, x, gt):
        return self.classification_losses(self.layer(x), gt)["loss_cls"]


class _Cascade(nn.Module):
    def __init__(self):
        super().__init__()
        self.box_predictor = nn.ModuleList([_Predictor(), _Predictor()])


def _train(model, trainer, hook, iters):
    gen = torch.Generator().manual_seed(0)
    stages = model.box_predictor if isinstance(model, _Cascade) else [model]
    for it in range(iters):
        trainer.iter = it
        hook.trainer.storage.iter = it
        x = torch.randn(12, D, generator=gen)
        gt = torch.randint(0, C + 1, (12,), generator=gen)
        sum(stage.loss(x, gt) for stage in stages).backward()
        hook.after_step()


class _ImageRecordingStorage(EventStorage):
    """An EventStorage that also lists the images put into it, (name, image) in order
    (EventStorage hands them only to its writers)."""

    def __init__(self, start_iter=0):
        super().__init__(start_iter)
        self.images = []

    def put_image(self, img_name, img_tensor):
        super().put_image(img_name, img_tensor)
        self.images.append((img_name, img_tensor))


def _run(model, tmp_path, iters=4, period=2):
    torch.manual_seed(0)
    trainer = SimpleNamespace(model=model.train(), iter=0, max_iter=iters)
    hook = GradientBalanceHook(period, STATS, str(tmp_path))
    hook.trainer = trainer
    with _ImageRecordingStorage(0) as storage:
        trainer.storage = storage
        hook.before_train()
        _train(model, trainer, hook, iters)
    return storage


def test_scalars_images_and_dumps(tmp_path):
    model = _Predictor()
    storage = _run(model, tmp_path)
    latest = storage.latest()
    freq = STATS.frequency_labels
    ratio = model.gradient_stats.synced().ratio.numpy()  # nothing new since the last log
    norms = model.layer.weight.detach().norm(dim=1).numpy()[:C]
    for g in "rcf":
        assert latest[f"lt/grad_ratio_{g}"][0] == pytest.approx(ratio[freq == g].mean())
        assert latest[f"lt/weight_norm_{g}"][0] == pytest.approx(norms[freq == g].mean())
        assert latest[f"lt/grad_ratio_{g}"][1] == 3  # logged at the last iteration
    images = storage.images
    assert [name for name, _ in images] == ["lt/balance", "lt/balance"]  # iterations 2 and 4
    img = images[-1][1]
    assert img.dtype == np.uint8 and img.shape[0] == 3 and img.shape[1] > 100
    assert img.std() > 0  # something was drawn

    paths = list_balance_dumps(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["iter_0000002.npz", "iter_0000004.npz"]
    dump = load_balance_dump(paths[-1])
    assert dump.iteration == 4 and dump.stages == [""]
    np.testing.assert_allclose(dump.arrays[0]["ratio"], ratio, rtol=1e-6)
    np.testing.assert_allclose(dump.arrays[0]["weight_norm"], norms, rtol=1e-6)
    np.testing.assert_allclose(dump.arrays[0]["weight_q"], np.linspace(1.0, 2.0, C), rtol=1e-6)
    np.testing.assert_array_equal(dump.instance_counts, STATS.instance_count_array)


def test_cascade_stages_get_suffixes(tmp_path):
    storage = _run(_Cascade(), tmp_path, iters=2, period=2)
    latest = storage.latest()
    for k in (0, 1):
        for g in "rcf":
            assert f"lt/grad_ratio_{g}_stage{k}" in latest
            assert f"lt/weight_norm_{g}_stage{k}" in latest
    assert "lt/grad_ratio_r" not in latest
    names = [name for name, _ in storage.images]
    assert names == ["lt/balance_stage0", "lt/balance_stage1"]
    dump = load_balance_dump(list_balance_dumps(str(tmp_path))[0])
    assert dump.stages == ["box_predictor.0", "box_predictor.1"]


def test_dense_conv_weight_norms_average_anchors():
    torch.manual_seed(0)
    num_anchors = 3
    conv = nn.Conv2d(D, num_anchors * (C + 1), 3)  # L = C + 1 logits per anchor
    w = conv.weight.detach()
    expected = np.zeros(C)
    for j in range(C):
        for a in range(num_anchors):
            expected[j] += float(w[a * (C + 1) + j].pow(2).sum().sqrt()) / num_anchors
    np.testing.assert_allclose(classifier_weight_norms(_Predictor(conv)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple"):
        classifier_weight_norms(_Predictor(nn.Linear(D, C)))


def test_mismatched_category_count_fails_before_training(tmp_path):
    model = _Predictor()
    hook = GradientBalanceHook(2, CategoryStats([1, 2], [1, 1], 4), str(tmp_path))
    hook.trainer = SimpleNamespace(model=model)
    with pytest.raises(ValueError, match="DATASETS.TRAIN"):
        hook.before_train()
    with pytest.raises(ValueError, match="DIAGNOSTICS.PERIOD"):
        GradientBalanceHook(0, STATS, str(tmp_path))


def test_skipped_update_is_reported_by_the_trainer_hook_at_its_period(caplog):
    # a NaN logit of category 2 on a background ROI: EQL v2 skips that category's update
    clf = EQLv2(num_classes=4).train()
    gt = torch.tensor([0, 1, 4, 4, 3])
    logits = torch.randn(len(gt), clf.num_logits, generator=torch.Generator().manual_seed(0))
    logits[3, 2] = float("nan")
    clf.losses(logits, gt)
    hook = NonFiniteStateHook(period=20, names=["a", "b", "c", "d"])
    hook.trainer = SimpleNamespace(model=clf, iter=18, max_iter=100)
    with caplog.at_level(logging.WARNING, logger="lt_d2"):
        hook.after_step()  # iteration 19: not a reporting iteration
        assert caplog.text == ""
        hook.trainer.iter = 19
        hook.after_step()
    assert "iteration 20: EQLv2" in caplog.text and "2 (c)" in caplog.text
