"""The GPU tier: every registered classifier (both registries, so classifiers added later are
covered) compiled == eager on CUDA, its fp16 gradient under GradScaler's 65536, and a head-like
autocast + GradScaler step whose GradientStats sums equal the float32 run's. Skipped without
CUDA; ``make test-gpu`` runs it."""

import pytest
import torch
from torch import nn

from lt_d2.classifiers.gradient_stats import GradientStats

from helpers.compiled_losses import assert_compiled_matches_eager, assert_half_precision_gradient
from helpers.registered import DENSE, TWO_STAGE, C, build_registered

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuda tier needs a GPU"),
]


def _builder(name: str):
    """Zero-argument builder of a fresh classifier ``name`` on the GPU, in training mode."""
    return lambda: build_registered(name).to("cuda")


def _batch(name: str, rows: int = 512, seed: int = 0):
    """Logits, labels and the loss's extra arguments (a dense classifier's normaliser)."""
    build = _builder(name)
    num_logits = build().num_logits
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, num_logits, generator=g) * 3
    low = -1 if name in DENSE else 0
    gt = torch.randint(low, C + 1, (rows,), generator=g)
    gt[: C + 1] = torch.arange(C + 1)  # every category and the background appear
    args = (float(((gt >= 0) & (gt < C)).sum()),) if name in DENSE else ()
    return build, logits.cuda(), gt.cuda(), args


@pytest.mark.parametrize("name", TWO_STAGE + DENSE)
def test_compiled_equals_eager_on_cuda(name):
    build, logits, gt, args = _batch(name)
    assert_compiled_matches_eager(build, logits, gt, *args)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", TWO_STAGE + DENSE)
def test_half_precision_gradient_on_cuda(name, compiled, monkeypatch):
    from lt_d2.classifiers import compile as loss_compile

    monkeypatch.setattr(loss_compile, "_ENABLED", compiled)
    build, logits, gt, args = _batch(name)
    assert_half_precision_gradient(build, logits, gt, *args)


@pytest.mark.parametrize("name", ["EQLv2", "FocalLoss"])
def test_autocast_grad_scaler_step_gives_unscaled_sums(name):
    """A linear head under autocast (fp16 logits) with GradScaler: the classifier's loss is
    float32, the step is taken, and GradientStats's sums equal the float32 run's (unscaled)."""
    build, _, gt, args = _batch(name, rows=256)
    torch.manual_seed(0)
    features = torch.randn(256, 32, device="cuda")
    sums = {}
    for amp in (False, True):
        torch.manual_seed(1)
        classifier = build()
        layer = nn.Linear(32, classifier.num_logits).cuda()
        stats = GradientStats(classifier).cuda().train()
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = layer(features)
            assert logits.dtype == (torch.float16 if amp else torch.float32)
            loss = classifier.losses(stats.observe(logits, gt), gt, *args)["loss_cls"]
        assert loss.dtype == torch.float32
        scaler.scale(2.0 * stats.watch_loss(loss)).backward()
        scaler.step(optimizer)
        scaler.update()
        assert scaler.get_scale() == (65536.0 if amp else 1.0)  # the step was not skipped
        sums[amp] = stats.synced()
    torch.testing.assert_close(sums[True].pos, sums[False].pos, rtol=2e-2, atol=1e-6)
    torch.testing.assert_close(sums[True].neg, sums[False].neg, rtol=2e-2, atol=1e-6)
