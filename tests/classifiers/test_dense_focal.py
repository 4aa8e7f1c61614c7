"""FocalLoss against fvcore's independent implementation, and the contract every dense
classifier keeps (extreme logits, empty and all-ignored batches, bad input, bias, config)."""

import pytest
import torch
from detectron2.config import get_cfg
from fvcore.nn import sigmoid_focal_loss
from torch.nn import functional as F

from lt_d2.classifiers import build as classifier_build
from lt_d2.classifiers import build_dense_classifier
from lt_d2.classifiers.compile import compile_enabled, set_compile_enabled
from lt_d2.classifiers.dense.efl import EqualizedFocalLoss
from lt_d2.classifiers.dense.eqlv2_focal import EQLv2Focal
from lt_d2.classifiers.dense.focal import FocalLoss
from lt_d2.config import add_lt_config

from helpers.compiled_losses import assert_compiled_matches_eager, assert_half_precision_gradient

DENSE = [FocalLoss, EqualizedFocalLoss, EQLv2Focal]


def test_focal_matches_fvcore_sum_over_normalizer():
    C, normalizer = 9, 11.0
    torch.manual_seed(0)
    logits = torch.randn(500, C) * 4  # fvcore computes in float32
    gt = torch.randint(-1, C + 1, (500,))
    x = logits.clone().requires_grad_()
    loss = FocalLoss(num_classes=C).losses(x, gt, normalizer)["loss_cls"]
    loss.backward()
    valid = gt >= 0
    ref_x = logits.clone().requires_grad_()
    targets = F.one_hot(gt[valid], C + 1)[:, :C].to(logits.dtype)
    expected = (
        sigmoid_focal_loss(ref_x[valid], targets, alpha=0.25, gamma=2, reduction="sum") / normalizer
    )
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=0)
    # fvcore's 1 - p_t loses digits where p_t is near 1, on gradients below ~1e-6
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-8)
    assert x.grad[~valid].abs().sum() == 0


@pytest.mark.parametrize("cls", DENSE)
def test_extreme_logits(cls):
    """+-100: the loss is alpha_t * 100 for a confidently wrong element, its gradient
    -+alpha_t, and 0 for a confidently right one (all classifiers start as focal loss)."""
    C = 2
    module = cls(num_classes=C)
    logits = torch.tensor([[-100.0, 100.0], [100.0, -100.0]], requires_grad=True)
    gt = torch.tensor([0, 2])  # row 0: class 0 positive (wrong), class 1 negative (wrong)
    loss = module.losses(logits, gt, 1.0)["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # wrong: row 0 both, row 1 column 0 (negative at +100); right: row 1 column 1
    torch.testing.assert_close(loss, torch.tensor(0.25 * 100 + 0.75 * 100 + 0.75 * 100))
    expected_grad = torch.tensor([[-0.25, 0.75], [0.75, 0.0]])
    torch.testing.assert_close(logits.grad, expected_grad)


@pytest.mark.parametrize("cls", DENSE)
@pytest.mark.parametrize("num_anchors", [0, 5])
def test_empty_and_all_ignored_batches(cls, num_anchors):
    C = 3
    module = cls(num_classes=C)
    logits = torch.randn(num_anchors, C, requires_grad=True)
    gt = torch.full((num_anchors,), -1, dtype=torch.long)
    loss = module.losses(logits, gt, 1.0)["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and logits.grad.shape == (num_anchors, C)
    assert logits.grad.abs().sum() == 0
    for state in module.buffers():  # EFL's and EQLv2Focal's accumulated gradients
        assert state.abs().sum() == 0


@pytest.mark.parametrize("cls", DENSE)
def test_bad_input(cls):
    C = 3
    module = cls(num_classes=C)
    logits = torch.zeros(4, C)
    with pytest.raises(ValueError, match=r"gt_classes must have shape \(4,\)"):
        module.losses(logits, torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 3\]"):
        module.losses(logits, torch.tensor([0, 1, 4, 3]), 1.0)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 3\]"):
        module.losses(logits, torch.tensor([0, -2, 1, 3]), 1.0)
    with pytest.raises(ValueError, match=r"expects \(N, 3\) logits"):
        module.losses(torch.zeros(4, C + 1), torch.tensor([0, 1, 2, 3]), 1.0)
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        module.losses(logits, torch.tensor([0, 1, 2, 3]), 0.0)
    with pytest.raises(TypeError, match="integer gt_classes"):
        module.losses(logits, torch.zeros(4), 1.0)
    with pytest.raises(TypeError, match="integer gt_classes"):
        module.losses(logits, torch.tensor([0.0, 1.0, 2.0, 3.0]), 1.0)  # class ids as floats
    with pytest.raises(TypeError, match="floating-point logits"):
        module.losses(logits.long(), torch.tensor([0, 1, 2, 3]), 1.0)


@pytest.mark.parametrize("cls", DENSE)
def test_label_range_is_read_until_a_batch_passed(cls, monkeypatch):
    """The range check reads the labels on the host: only until one non-empty batch passed,
    so that training steps stay free of host-device syncs."""
    module = cls(num_classes=3)
    logits = torch.zeros(4, 3)
    module.losses(logits[:0], torch.zeros(0, dtype=torch.long), 1.0)  # empty: nothing read
    with pytest.raises(ValueError, match=r"must lie in \[-1, 3\]"):
        module.losses(logits, torch.tensor([0, 1, 4, 3]), 1.0)
    module.losses(logits, torch.tensor([0, 1, 2, 3]), 1.0)

    def no_host_read(*args, **kwargs):
        raise AssertionError("the label range was read again")

    monkeypatch.setattr(torch.Tensor, "min", no_host_read)
    module.losses(logits, torch.tensor([0, 1, 2, 3]), 1.0)


def _dense_batch(num_anchors: int, num_classes: int, seed: int, scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_anchors, num_classes, generator=g) * scale
    return logits, torch.randint(-1, num_classes + 1, (num_anchors,), generator=g)


@pytest.mark.parametrize("cls", DENSE)
def test_compiled_equals_eager(cls):
    logits, gt = _dense_batch(300, 7, seed=3)
    assert_compiled_matches_eager(lambda: cls(num_classes=7).train(), logits, gt, 13.0)


@pytest.mark.parametrize("cls", DENSE)
def test_half_logits_under_a_loss_scale_of_65536(cls):
    """fp16 logits at RetinaNet's prior (p ~ 0.01, most negative gradients ~1e-6 / normaliser)
    and GradScaler's initial scale: the gradient is the float32 one x 65536, in fp16."""
    logits, gt = _dense_batch(2000, 50, seed=4, scale=2.0)
    logits = logits - 4.6  # sigmoid(-4.6) ~ 0.01
    build = lambda: cls(num_classes=50).train()  # noqa: E731
    assert_half_precision_gradient(build, logits, gt, 100.0)


@pytest.mark.parametrize("cls", DENSE)
def test_gradient_scales_with_the_outer_loss_weight(cls):
    module = cls(num_classes=4).eval()
    logits, gt = torch.randn(10, 4), torch.tensor([0, 1, 2, 3, 4, 4, -1, 2, 1, 0])
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    module.losses(x1, gt, 3.0)["loss_cls"].backward()
    (2.5 * module.losses(x2, gt, 3.0)["loss_cls"]).backward()
    torch.testing.assert_close(x2.grad, 2.5 * x1.grad)


@pytest.mark.parametrize(
    "name, prior",
    [("FocalLoss", 0.01), ("EqualizedFocalLoss", 0.001), ("EQLv2Focal", 0.001)],
)
def test_built_from_config_with_paper_defaults(name, prior):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.DENSE_CLASSIFIER.NAME = name
    module = build_dense_classifier(cfg, num_classes=5, category_stats=None)
    assert type(module).__name__ == name and module.num_logits == 5
    bias = torch.empty(5)
    module.init_bias(bias)
    torch.testing.assert_close(torch.sigmoid(bias), torch.full((5,), prior))
    logits = torch.randn(4, 5)
    torch.testing.assert_close(module.predict_probs(logits), torch.sigmoid(logits))
    if name == "EqualizedFocalLoss":
        assert (module.alpha, module.gamma_b, module.s) == (0.25, 2.0, 8.0)
    elif name == "EQLv2Focal":
        assert (module.eqlv2_gamma, module.eqlv2_mu, module.eqlv2_alpha) == (12.0, 0.8, 4.0)
        assert (module.alpha, module.gamma) == (0.25, 2.0)
    else:
        assert (module.alpha, module.gamma) == (0.25, 2.0)


@pytest.mark.parametrize("enabled", [False, True])
def test_compile_losses_key_reaches_the_switch(enabled, monkeypatch):
    monkeypatch.setattr(classifier_build, "set_compile_enabled", set_compile_enabled)
    cfg = get_cfg()
    add_lt_config(cfg)
    assert cfg.MODEL.COMPILE_LOSSES  # compiled by default
    cfg.MODEL.COMPILE_LOSSES = enabled
    build_dense_classifier(cfg, num_classes=5)
    assert compile_enabled() is enabled
