"""EQLv2Focal against EQL v2 eqs. 5-9 on focal loss, written out here (float64, autograd)."""

import math

import torch
from torch.nn import functional as F

from lt_d2.classifiers.dense.eqlv2_focal import EQLv2Focal
from lt_d2.classifiers.dense.focal import FocalLoss


def reference_weights(pos, neg, gamma=12.0, mu=0.8, alpha=4.0):
    """q = 1 + alpha (1 - f(g)), r = f(g), f(x) = 1 / (1 + exp(-gamma (x - mu))); q = r = 1
    for a category without negative gradient yet."""
    q, r = torch.ones_like(pos), torch.ones_like(pos)
    for j in range(pos.shape[0]):
        if neg[j] > 0:
            f = 1.0 / (1.0 + math.exp(-gamma * (float(pos[j] / neg[j]) - mu)))
            q[j], r[j] = 1.0 + alpha * (1.0 - f), f
    return q, r


def naive_reweighted_focal(logits, gt_classes, q, r, normalizer, alpha=0.25, gamma=2.0):
    num_classes = logits.shape[1]
    valid = gt_classes >= 0
    x = logits[valid]
    y = F.one_hot(gt_classes[valid], num_classes + 1)[:, :num_classes].to(x.dtype)
    p = torch.sigmoid(x)
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    w = y * q + (1 - y) * r
    return -(w * alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).sum() / normalizer


def test_three_batches_match_eqs_5_to_9():
    C, norm = 4, 3.0
    module = EQLv2Focal(num_classes=C)
    pos = torch.zeros(C, dtype=torch.float64)
    neg = torch.zeros(C, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        logits = torch.randn(60, C, generator=gen, dtype=torch.float64) * 3
        gt = torch.randint(-1, C + 1, (60,), generator=gen)
        gt[:2] = 0  # class 0 always has positives; others at random
        q, r = reference_weights(pos, neg)
        if step == 0:
            assert (q == 1).all() and (r == 1).all()
        x_ref = logits.clone().requires_grad_()
        expected = naive_reweighted_focal(x_ref, gt, q, r, norm)
        expected.backward()
        x = logits.clone().requires_grad_()
        loss = module.losses(x, gt, norm)["loss_cls"]
        loss.backward()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-10, atol=0)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-15)
        # eq. 9: accumulate the re-weighted gradient magnitudes
        y = F.one_hot(gt.clamp(min=0), C + 1)[:, :C].double() * (gt >= 0)[:, None]
        pos = pos + (x_ref.grad.abs() * y).sum(0)
        neg = neg + (x_ref.grad.abs() * (1 - y)).sum(0)
        torch.testing.assert_close(module.pos_grad, pos, rtol=1e-10, atol=0)
        torch.testing.assert_close(module.neg_grad, neg, rtol=1e-10, atol=0)
        q_ref, r_ref = reference_weights(pos, neg)
        q_got, r_got = module.weights()
        torch.testing.assert_close(q_got, q_ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(r_got, r_ref, rtol=1e-10, atol=0)
    assert (module.weights()[1] < 1).all()  # the state did re-weight by the end


def test_initial_state_is_focal_loss():
    C = 5
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, C, generator=gen)
    gt = torch.randint(-1, C + 1, (50,), generator=gen)
    got = EQLv2Focal(num_classes=C).losses(logits, gt, 4.0)["loss_cls"]
    expected = FocalLoss(num_classes=C).losses(logits, gt, 4.0)["loss_cls"]
    torch.testing.assert_close(got, expected)


def test_state_dict_round_trip():
    C = 3
    module = EQLv2Focal(num_classes=C)
    module.losses(torch.randn(20, C), torch.randint(-1, C + 1, (20,)), 2.0)
    restored = EQLv2Focal(num_classes=C)
    restored.load_state_dict(module.state_dict())
    for a, b in zip((restored.pos_grad, restored.neg_grad), (module.pos_grad, module.neg_grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
