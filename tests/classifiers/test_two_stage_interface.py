"""Every registered two-stage classifier honours the Classifier contract (parametrized over
the registry, so classifiers added later are covered automatically): its compiled loss equals
its eager one, its loss is computed in float32 for half-precision logits, and it refuses labels
that are not integers."""

import pytest
import torch

from lt_d2.classifiers import Classifier, build_classifier

from helpers.compiled_losses import assert_compiled_matches_eager, assert_half_precision_gradient
from helpers.registered import STATS, TWO_STAGE, C, build_registered
from helpers.registered import classifier_cfg as _cfg

NAMES = TWO_STAGE


def test_unknown_name_lists_registered_ones():
    with pytest.raises(KeyError) as err:
        build_classifier(_cfg("NoSuchLoss"), C, STATS)
    for name in NAMES:
        assert name in str(err.value)


def test_statistics_of_another_class_count_are_refused():
    with pytest.raises(ValueError, match="describe 6 categories but the model has 7"):
        build_classifier(_cfg("SoftmaxCE"), C + 1, STATS)


def test_dense_and_two_stage_names_are_not_mixed_up():
    from lt_d2.classifiers import build_dense_classifier

    cfg = _cfg("SoftmaxCE")
    cfg.MODEL.CLASSIFIER.NAME = "EqualizedFocalLoss"
    with pytest.raises(KeyError, match="is a dense .* MODEL.DENSE_CLASSIFIER.NAME"):
        build_classifier(cfg, C, STATS)
    cfg = _cfg("SoftmaxCE")
    cfg.MODEL.DENSE_CLASSIFIER.NAME = "EQLv2"
    with pytest.raises(KeyError, match="is a two-stage classifier: set it in MODEL.CLASSIFIER"):
        build_dense_classifier(cfg, C, STATS)


@pytest.mark.parametrize("name", NAMES)
def test_registered_classifier_satisfies_interface(name):
    torch.manual_seed(0)
    clf = build_classifier(_cfg(name), C, STATS)
    assert isinstance(clf, Classifier) and clf.num_classes == C
    num_logits = clf.num_logits
    assert isinstance(num_logits, int) and num_logits >= C
    bias = torch.zeros(num_logits)
    clf.init_bias(bias)
    assert torch.isfinite(bias).all()

    logits = torch.randn(12, num_logits, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 3, 4, 5, C, C, C, C, C, 5])
    losses = clf.losses(logits, gt)
    assert losses and all(key.startswith("loss_") for key in losses)
    total = sum(losses.values())
    assert total.dim() == 0 and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    probs = clf.predict_probs(logits.detach())
    assert probs.shape == (12, C + 1)
    assert ((probs >= 0) & (probs <= 1)).all()
    try:
        columns = clf.logit_columns()
    except NotImplementedError:  # allowed for layouts that cannot be attributed per category
        return
    assert len(columns) == C and all(0 <= c < num_logits for c in columns)


@pytest.mark.parametrize("name", NAMES)
def test_registered_classifier_accepts_empty_batch(name):
    clf = build_classifier(_cfg(name), C, STATS)
    logits = torch.zeros(0, clf.num_logits, requires_grad=True)
    total = sum(clf.losses(logits, torch.zeros(0, dtype=torch.long)).values())
    total.backward()
    assert total.item() == 0.0
    assert clf.predict_probs(logits.detach()).shape == (0, C + 1)


@pytest.mark.parametrize("name", NAMES)
def test_registered_classifier_state_survives_save_and_load(name):
    torch.manual_seed(0)
    trained = build_classifier(_cfg(name), C, STATS)
    logits = torch.randn(12, trained.num_logits, requires_grad=True)
    gt = torch.tensor([0, 1, 2, 3, 4, 5, C, C, C, C, C, 5])
    sum(trained.losses(logits, gt).values()).backward()  # stateful methods update here
    fresh = build_classifier(_cfg(name), C, STATS)
    fresh.load_state_dict(trained.state_dict())
    restored = fresh.state_dict()
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(restored[key], value)


def _batch(num_logits: int):
    """13 ROIs (not L: equal sizes would be specialised by the compiler's duck sizing), every
    category and background; logits around -2, every other column around -18, where the
    probabilities (about 1e-8) and so the float32 gradients lie below fp16's smallest
    subnormal until the loss scale is applied."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(13, num_logits, generator=g) * 3 - 2
    logits[:, ::2] -= 16
    gt = torch.tensor([0, 1, 2, 3, 4, 5, C, C, C, C, C, 5, 0])
    return logits, gt


@pytest.mark.parametrize("name", NAMES)
def test_compiled_loss_matches_eager(name):
    build = lambda: build_registered(name)  # noqa: E731
    assert_compiled_matches_eager(build, *_batch(build().num_logits))


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_logits_get_the_float32_gradient(name):
    build = lambda: build_registered(name)  # noqa: E731
    assert_half_precision_gradient(build, *_batch(build().num_logits), scale=65536.0)


@pytest.mark.parametrize("name", NAMES)
def test_float_labels_are_refused(name):
    clf = build_classifier(_cfg(name), C, STATS)
    logits, gt = _batch(clf.num_logits)
    with pytest.raises(TypeError, match=f"{name} needs integer gt_classes"):
        clf.losses(logits, gt.float())
