"""EqualizedFocalLoss against EFL eq. 4 written out here, and its gradient-ratio state.

Reference: the loss of eq. 4 in plain torch (float64) on one-hot targets, differentiated by
autograd; g_j, gamma_j and the weighting factor recomputed here from the accumulated sums.
"""

import math

import torch
from torch.nn import functional as F

from lt_d2.classifiers.dense.efl import EqualizedFocalLoss
from lt_d2.classifiers.dense.focal import FocalLoss

ALPHA, GAMMA_B, S = 0.25, 2.0, 8.0


def naive_efl(logits, gt_classes, gamma, weight, normalizer, alpha=ALPHA):
    """EFL eq. 4: sum_j -alpha_t (gamma_j / gamma_b) (1 - p_t)^gamma_j log p_t, ignoring -1."""
    num_classes = logits.shape[1]
    valid = gt_classes >= 0
    x = logits[valid]
    y = F.one_hot(gt_classes[valid], num_classes + 1)[:, :num_classes].to(x.dtype)
    p = torch.sigmoid(x)
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    return -(alpha_t * weight * (1 - p_t) ** gamma * torch.log(p_t)).sum() / normalizer


def reference_factors(pos, neg):
    """g = clamp(pos / neg, 0, 1) (1 before any negative gradient), gamma_j, gamma_j / gamma_b."""
    g = torch.ones_like(pos)
    seen = neg > 0
    g[seen] = (pos[seen] / neg[seen]).clamp(0, 1)
    gamma = GAMMA_B + S * (1 - g)
    return g, gamma, gamma / GAMMA_B


def grad_magnitudes(grad, gt_classes, num_classes):
    """Per category: summed |dL/dx| over its positives and over its negatives (rows -1 have a
    zero gradient anyway)."""
    y = F.one_hot(gt_classes.clamp(min=0), num_classes + 1)[:, :num_classes].to(grad.dtype)
    y = y * (gt_classes >= 0)[:, None]
    return (grad.abs() * y).sum(0), (grad.abs() * (1 - y)).sum(0)


def random_batch(num_anchors, num_classes, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_anchors, num_classes, generator=g, dtype=torch.float64) * scale
    gt = torch.randint(-1, num_classes + 1, (num_anchors,), generator=g)
    return logits, gt


def test_loss_and_gradient_match_eq4():
    C = 7
    efl = EqualizedFocalLoss(num_classes=C).eval()  # eval: the state stays fixed
    torch.manual_seed(0)
    efl.pos_grad.copy_(torch.rand(C, dtype=torch.float64) * 2)  # some ratios > 1: clamped
    efl.neg_grad.copy_(torch.rand(C, dtype=torch.float64) + 0.1)
    efl.neg_grad[0] = 0.0  # never a negative gradient yet: g = 1
    _, gamma, weight = reference_factors(efl.pos_grad.clone(), efl.neg_grad.clone())
    assert gamma.max() > GAMMA_B and gamma.min() == GAMMA_B

    logits, gt = random_batch(300, C, seed=1)
    x1 = logits.clone().requires_grad_()
    got = efl.losses(x1, gt, 13.0)["loss_cls"]
    got.backward()
    x2 = logits.clone().requires_grad_()
    expected = naive_efl(x2, gt, gamma, weight, 13.0)
    expected.backward()
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-14)


def test_float32_matches_float64_reference():
    C = 5
    efl = EqualizedFocalLoss(num_classes=C).eval()
    efl.pos_grad.copy_(torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0], dtype=torch.float64))
    efl.neg_grad.fill_(1.0)
    _, gamma, weight = reference_factors(efl.pos_grad.clone(), efl.neg_grad.clone())
    logits, gt = random_batch(30000, C, seed=2)
    x32 = logits.float().requires_grad_()
    loss = efl.losses(x32, gt, 31.0)["loss_cls"]
    loss.backward()
    x64 = logits.clone().requires_grad_()
    expected = naive_efl(x64, gt, gamma, weight, 31.0)
    expected.backward()
    assert loss.dtype == torch.float32 and x32.grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-7)


def test_half_logits_get_a_half_gradient_computed_in_float32():
    C = 4
    logits, gt = random_batch(50, C, seed=10)
    efl = EqualizedFocalLoss(num_classes=C).eval()
    x16 = logits.half().requires_grad_()
    loss = efl.losses(x16, gt, 5.0)["loss_cls"]
    loss.backward()
    x64 = logits.half().double().requires_grad_()
    _, gamma, weight = reference_factors(efl.pos_grad, efl.neg_grad)
    expected = naive_efl(x64, gt, gamma, weight, 5.0)
    expected.backward()
    assert loss.dtype == torch.float32 and x16.grad.dtype == torch.float16
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(x16.grad.double(), x64.grad, rtol=1e-3, atol=1e-6)


def test_three_hand_stepped_batches():
    """g_j, gamma_j and gamma_j / gamma_b after each of three training batches."""
    C, norm = 3, 2.0
    efl = EqualizedFocalLoss(num_classes=C).train()
    # batch 1: all logits 0 (p = 1/2), one positive of class 0, one of class 2, a background
    # row and an ignored row. At p = 1/2 with gamma = 2, weight 1 (initial state: g = 1):
    #   |dL/dx| of a negative = (1 - alpha) (1/2)^2 (1/2 + 2 (1/2) ln 2) / norm
    #   |dL/dx| of a positive = alpha (1/2)^2 (1/2 + 2 (1/2) ln 2) / norm
    bracket = 0.5 + math.log(2.0)
    neg1 = 0.75 * 0.25 * bracket / norm
    pos1 = 0.25 * 0.25 * bracket / norm
    gt1 = torch.tensor([0, 2, 3, -1])
    efl.losses(torch.zeros(4, C, dtype=torch.float64), gt1, norm)
    # class 0: 1 positive, 2 negatives (rows 1, 2); class 1: 3 negatives; class 2: 1 / 2
    expected_pos = torch.tensor([pos1, 0.0, pos1], dtype=torch.float64)
    expected_neg = torch.tensor([2 * neg1, 3 * neg1, 2 * neg1], dtype=torch.float64)
    torch.testing.assert_close(efl.pos_grad, expected_pos, rtol=1e-12, atol=0)
    torch.testing.assert_close(efl.neg_grad, expected_neg, rtol=1e-12, atol=0)
    # g = (1/6, 0, 1/6): pos1 / (2 neg1) = alpha / (2 (1 - alpha)) = 1/6
    gamma, weight = efl.factors()
    expected_gamma = torch.tensor(
        [2 + 8 * (1 - 1 / 6), 2 + 8.0, 2 + 8 * (1 - 1 / 6)], dtype=torch.float64
    )
    torch.testing.assert_close(gamma, expected_gamma, rtol=1e-12, atol=0)
    torch.testing.assert_close(weight, expected_gamma / 2, rtol=1e-12, atol=0)

    # batches 2 and 3: the reference state is stepped here with autograd of eq. 4
    pos, neg = expected_pos.clone(), expected_neg.clone()
    for seed in (3, 4):
        logits, gt = random_batch(40, C, seed=seed)
        _, gamma_ref, weight_ref = reference_factors(pos, neg)
        x = logits.clone().requires_grad_()
        naive_efl(x, gt, gamma_ref, weight_ref, norm).backward()
        p_inc, n_inc = grad_magnitudes(x.grad, gt, C)
        pos, neg = pos + p_inc, neg + n_inc
        efl.losses(logits.clone().requires_grad_(), gt, norm)
        torch.testing.assert_close(efl.pos_grad, pos, rtol=1e-10, atol=0)
        torch.testing.assert_close(efl.neg_grad, neg, rtol=1e-10, atol=0)
        g_ref, gamma_ref, weight_ref = reference_factors(pos, neg)
        gamma, weight = efl.factors()
        torch.testing.assert_close(gamma, gamma_ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(weight, weight_ref, rtol=1e-10, atol=0)


def test_equals_focal_loss_when_all_g_are_one():
    C = 6
    logits, gt = random_batch(200, C, seed=5)
    focal = FocalLoss(num_classes=C)
    initial = EqualizedFocalLoss(num_classes=C)  # no state yet: g = 1
    balanced = EqualizedFocalLoss(num_classes=C)
    balanced.pos_grad.fill_(5.0)  # ratio 5 / 2 clamps to 1
    balanced.neg_grad.fill_(2.0)
    grads, losses = [], []
    for module in (focal, initial, balanced):
        x = logits.clone().requires_grad_()
        losses.append(module.losses(x, gt, 9.0)["loss_cls"])
        losses[-1].backward()
        grads.append(x.grad)
    for loss, grad in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(loss, losses[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, grads[0], rtol=1e-12, atol=0)


def test_no_state_update_without_training_gradients():
    C = 4
    logits, gt = random_batch(20, C, seed=6)
    efl = EqualizedFocalLoss(num_classes=C).eval()
    efl.losses(logits, gt, 1.0)
    efl.train()
    with torch.no_grad():
        efl.losses(logits, gt, 1.0)
    assert efl.pos_grad.abs().sum() == 0 and efl.neg_grad.abs().sum() == 0


def test_state_dict_round_trip():
    C = 4
    efl = EqualizedFocalLoss(num_classes=C)
    for seed in (7, 8):
        logits, gt = random_batch(30, C, seed=seed)
        efl.losses(logits, gt, 2.0)
    restored = EqualizedFocalLoss(num_classes=C)
    restored.load_state_dict(efl.state_dict())
    assert set(efl.state_dict()) == {"pos_grad", "neg_grad"}
    torch.testing.assert_close(restored.pos_grad, efl.pos_grad, rtol=0, atol=0)
    torch.testing.assert_close(restored.neg_grad, efl.neg_grad, rtol=0, atol=0)
    logits, gt = random_batch(30, C, seed=9)
    torch.testing.assert_close(
        restored.eval().losses(logits, gt, 2.0)["loss_cls"],
        efl.eval().losses(logits, gt, 2.0)["loss_cls"],
        rtol=0,
        atol=0,
    )
