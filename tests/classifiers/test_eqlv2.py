"""EQLv2 and EQLv2Softmax2C against EQL v2 eqs. 3-10 written out independently here."""

import math

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import CLASSIFIER_REGISTRY, build_classifier
from lt_d2.config import add_lt_config

GAMMA, MU, ALPHA = 12.0, 0.8, 4.0


def paper_weights(pos_acc, neg_acc):
    """Eqs. 5-6 per category, in plain Python floats; no negative gradient yet -> q = r = 1."""
    q, r = [], []
    for pos, neg in zip(pos_acc, neg_acc):
        if neg == 0.0:
            f = 1.0
        else:
            f = 1.0 / (1.0 + math.exp(-GAMMA * (pos / neg - MU)))
        q.append(1.0 + ALPHA * (1.0 - f))
        r.append(f)
    return torch.tensor(q, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)


def paper_step(z, gt, pos_acc, neg_acc):
    """One iteration by the paper: loss (eq. 3/4 with eqs. 7-8 weights), its logit gradient,
    and the updated accumulators (eq. 9). z: (R, C + 1) float64, objectness last."""
    R, C = z.shape[0], z.shape[1] - 1
    q, r = paper_weights(pos_acc, neg_acc)
    p = torch.sigmoid(z)
    y = torch.zeros(R, C + 1, dtype=torch.float64)
    for i, c in enumerate(gt.tolist()):
        if c < C:
            y[i, c] = 1.0
            y[i, C] = 1.0
    loss = 0.0
    grad = torch.zeros_like(z)
    new_pos, new_neg = list(pos_acc), list(neg_acc)
    for i in range(R):
        for j in range(C + 1):
            wq = q[j] if j < C else 1.0
            wr = r[j] if j < C else 1.0
            if y[i, j] == 1:
                loss += -wq * math.log(p[i, j])
                grad[i, j] = wq * (p[i, j] - 1.0) / R  # eq. 3 reweighted by eq. 7
                if j < C:
                    new_pos[j] += abs(float(grad[i, j]))
            else:
                loss += -wr * math.log(1.0 - p[i, j])
                grad[i, j] = wr * p[i, j] / R  # eq. 4 reweighted by eq. 8
                if j < C:
                    new_neg[j] += abs(float(grad[i, j]))
    return loss / R, grad, new_pos, new_neg


def make_batch(seed, R=6, C=3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, C + 1, generator=g, dtype=torch.float64) * 2.0
    gt = torch.randint(0, C + 1, (R,), generator=g)
    gt[0], gt[1] = 0, C  # at least one positive of class 0, one background
    return z, gt


def test_three_batches_match_the_paper():
    C = 3
    model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C).train()
    pos_acc, neg_acc = [0.0] * C, [0.0] * C
    for step in range(3):
        z, gt = make_batch(step, C=C)
        exp_loss, exp_grad, pos_acc, neg_acc = paper_step(z, gt, pos_acc, neg_acc)
        logits = z.float().requires_grad_(True)
        loss = model.losses(logits, gt)["loss_cls"]
        loss.backward()
        assert loss.item() == pytest.approx(exp_loss, rel=1e-5)
        torch.testing.assert_close(logits.grad.double(), exp_grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(model.pos_grad, torch.tensor(pos_acc, dtype=torch.float64))
        torch.testing.assert_close(model.neg_grad, torch.tensor(neg_acc, dtype=torch.float64))
    # the sequence actually reweights: by the third batch weights are far from 1
    q, r = paper_weights(pos_acc, neg_acc)
    assert (q - 1).abs().max() > 0.1 and (r - 1).abs().max() > 0.1


def test_initial_state_is_plain_sigmoid_bce():
    C = 4
    model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C).train()
    z, gt = make_batch(5, R=8, C=C)
    y = torch.zeros(8, C + 1, dtype=torch.float64)
    fg = gt < C
    y[fg, gt[fg]] = 1.0
    y[fg, C] = 1.0
    p = torch.sigmoid(z)
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / 8
    q, r = model.weights()
    assert torch.equal(q, torch.ones(C)) and torch.equal(r, torch.ones(C))
    assert model.losses(z.float(), gt)["loss_cls"].item() == pytest.approx(expected.item(), 1e-6)


def test_eval_mode_does_not_accumulate():
    model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=3).eval()
    z, gt = make_batch(1)
    model.losses(z.float(), gt)
    assert model.pos_grad.abs().sum() == 0 and model.neg_grad.abs().sum() == 0


def test_predict_probs_is_eq10():
    C = 3
    model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C)
    z = torch.randn(5, C + 1)
    scores = model.predict_probs(z)
    assert scores.shape == (5, C + 1)
    for i in range(5):
        p_obj = 1 / (1 + math.exp(-z[i, C].item()))
        for j in range(C):
            p_j = 1 / (1 + math.exp(-z[i, j].item()))
            assert scores[i, j].item() == pytest.approx(p_j * p_obj, rel=1e-5)
        assert scores[i, C].item() == pytest.approx(1 - p_obj, rel=1e-5)


def test_state_dict_round_trip():
    model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=3).train()
    for step in range(2):
        z, gt = make_batch(step)
        model.losses(z.float(), gt)
    assert model.pos_grad.sum() > 0
    state = model.state_dict()
    assert set(state) == {"pos_grad", "neg_grad"}
    fresh = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=3)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.pos_grad, model.pos_grad)
    torch.testing.assert_close(fresh.neg_grad, model.neg_grad)
    z, gt = make_batch(7)
    fresh.eval(), model.eval()
    assert torch.equal(
        fresh.losses(z.float(), gt)["loss_cls"], model.losses(z.float(), gt)["loss_cls"]
    )


@pytest.mark.parametrize("name", ["EQLv2", "EQLv2Softmax2C"])
def test_extreme_logits_and_empty_input(name):
    C = 3
    model = CLASSIFIER_REGISTRY.get(name)(num_classes=C).train()
    L = model.num_logits
    gt = torch.tensor([0, 1, 2, 3])
    for value in (100.0, -100.0):
        logits = torch.full((4, L), value, requires_grad=True)
        loss = model.losses(logits, gt)["loss_cls"]
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
        assert torch.isfinite(model.pos_grad).all() and torch.isfinite(model.neg_grad).all()
    before = model.pos_grad.clone(), model.neg_grad.clone()
    empty = torch.zeros(0, L, requires_grad=True)
    loss = model.losses(empty, torch.zeros(0, dtype=torch.long))["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, L)
    assert torch.equal(model.pos_grad, before[0]) and torch.equal(model.neg_grad, before[1])
    assert model.predict_probs(torch.zeros(0, L)).shape == (0, C + 1)


@pytest.mark.parametrize("name", ["EQLv2", "EQLv2Softmax2C"])
def test_bad_input(name):
    model = CLASSIFIER_REGISTRY.get(name)(num_classes=3)
    with pytest.raises(ValueError, match="num_logits"):
        model.losses(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="gt_classes"):
        model.losses(torch.zeros(2, model.num_logits), torch.tensor([0, 4]))


def test_bias_init_prior():
    """Categories start at the prior 0.001 (sec. 4.2); the objectness task at 1 - 0.001, the
    negation of the official code's background column, whose bias starts at 0.001."""
    expected = torch.tensor([0.001, 0.001, 0.001, 0.999])
    model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=3)
    bias = torch.empty(4)
    model.init_bias(bias)
    torch.testing.assert_close(torch.sigmoid(bias), expected)
    model2 = CLASSIFIER_REGISTRY.get("EQLv2Softmax2C")(num_classes=3)
    bias2 = torch.empty(8)
    model2.init_bias(bias2)
    torch.testing.assert_close(torch.softmax(bias2.view(2, 4), dim=0)[0], expected)


@pytest.mark.parametrize("name", ["EQLv2", "EQLv2Softmax2C"])
def test_scores_at_initialisation_are_the_official_ones(name):
    """A fresh final layer (features that give zero weight contribution): the official code
    scores sigmoid(b_j) (1 - sigmoid(b_bg)) with both biases at logit(0.001), i.e.
    0.001 * 0.999 per category, and background 0.001 (its background probability)."""
    model = CLASSIFIER_REGISTRY.get(name)(num_classes=3)
    bias = torch.empty(model.num_logits, dtype=torch.float64)
    model.init_bias(bias)
    probs = model.predict_probs(bias.expand(2, -1))  # logits of two ROIs = the biases
    p, p_bg = 0.001, 0.001
    expected_row = [p * (1 - p_bg)] * 3 + [p_bg]
    torch.testing.assert_close(probs, torch.tensor([expected_row] * 2, dtype=torch.float64))


def test_softmax2c_matches_pairwise_softmax():
    """Sec. 4.8: per task a 2-way softmax over ("yes", "others"); same reweighting; the
    state equals the sigmoid form's fed with the logit differences."""
    C, R = 3, 6
    soft = CLASSIFIER_REGISTRY.get("EQLv2Softmax2C")(num_classes=C).train()
    sig = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C).train()
    pos_acc, neg_acc = [0.0] * C, [0.0] * C
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        logits = torch.randn(R, 2 * (C + 1), generator=g).requires_grad_(True)
        gt = torch.tensor([0, 1, 3, 2, 3, 0])
        # independent: log of the 2-way softmax per task, weights of eqs. 5-8
        q, r = paper_weights(pos_acc, neg_acc)
        pairs = torch.stack([logits[:, : C + 1], logits[:, C + 1 :]], dim=2).double()
        logp = torch.log_softmax(pairs, dim=2)  # (R, C+1, 2): [yes, others]
        y = torch.zeros(R, C + 1, dtype=torch.float64)
        fg = gt < C
        y[fg, gt[fg]] = 1.0
        y[fg, C] = 1.0
        wq = torch.cat([q, torch.ones(1, dtype=torch.float64)])
        wr = torch.cat([r, torch.ones(1, dtype=torch.float64)])
        expected = -(y * wq * logp[..., 0] + (1 - y) * wr * logp[..., 1]).sum() / R
        exp_grad = torch.autograd.grad(expected, logits)[0]
        loss = soft.losses(logits, gt)["loss_cls"]
        loss.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(logits.grad, exp_grad.float(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(logits.grad[:, : C + 1], -logits.grad[:, C + 1 :])
        d = (logits[:, : C + 1] - logits[:, C + 1 :]).detach().double()
        _, _, pos_acc, neg_acc = paper_step(d, gt, pos_acc, neg_acc)
        sig.losses(d.float(), gt)
        torch.testing.assert_close(soft.pos_grad, torch.tensor(pos_acc, dtype=torch.float64))
        torch.testing.assert_close(soft.neg_grad, sig.neg_grad)
    probs = soft.predict_probs(logits.detach())
    p = torch.softmax(pairs.detach(), dim=2)[..., 0].float()
    torch.testing.assert_close(probs[:, :C], p[:, :C] * p[:, C:])
    torch.testing.assert_close(probs[:, C], 1 - p[:, C])


def test_built_from_config():
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.CLASSIFIER.NAME = "EQLv2"
    cfg.MODEL.CLASSIFIER.EQLV2.ALPHA = 8.0
    model = build_classifier(cfg, 5, None)
    assert (model.gamma, model.mu, model.alpha, model.prior) == (12.0, 0.8, 8.0, 0.001)
    assert model.num_logits == 6 and model.logit_columns() == list(range(5))
    cfg.MODEL.CLASSIFIER.NAME = "EQLv2Softmax2C"
    model = build_classifier(cfg, 5, None)
    assert model.num_logits == 12 and model.logit_columns() == list(range(5))


def test_softmax2c_loss_function_matches_autograd_of_pairwise_softmax():
    """eqlv2_softmax2c_loss with an upstream gradient != 1 against
    -sum w log softmax(pair) / R written with F.softmax and differentiated by autograd; its
    gradient sums are eqs. 7-8 on the pair probabilities."""
    from torch.nn import functional as F

    from lt_d2.classifiers.two_stage.eqlv2_softmax2c import eqlv2_softmax2c_loss

    torch.manual_seed(0)
    R, C = 5, 3
    K = C + 1
    logits = (torch.randn(R, 2 * K, dtype=torch.float64) * 3).requires_grad_(True)
    gt = torch.tensor([1, 3, 0, 3, 2])
    q = torch.rand(C, dtype=torch.float64) + 1.0
    r = torch.rand(C, dtype=torch.float64)
    y = torch.zeros(R, K, dtype=torch.float64)
    for i, c in enumerate(gt.tolist()):
        if c < C:
            y[i, c] = y[i, C] = 1.0
    p_yes = F.softmax(torch.stack([logits[:, :K], logits[:, K:]], dim=2), dim=2)[..., 0]
    one = torch.ones(1, dtype=torch.float64)
    wq, wr = torch.cat([q, one]), torch.cat([r, one])
    w = y * wq + (1 - y) * wr
    expected = -(w * (y * p_yes.log() + (1 - y) * (1 - p_yes).log())).sum() / R
    (exp_grad,) = torch.autograd.grad(3.0 * expected, logits)
    loss, pos_sum, neg_sum = eqlv2_softmax2c_loss(logits, gt, q, r)
    (3.0 * loss).backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits.grad, exp_grad)
    p = p_yes.detach()
    torch.testing.assert_close(pos_sum, (y * wq * (1 - p)).sum(dim=0)[:C])
    torch.testing.assert_close(neg_sum, ((1 - y) * wr * p).sum(dim=0)[:C])


@pytest.mark.parametrize("compiled", [False, True])
def test_gradient_sums_over_several_row_blocks(compiled):
    """R = 150 ROIs (the sums run over blocks of 64 rows, then the 22 left): the state after a
    step with non-trivial weights is eq. 9's update written out (paper_step), eagerly and
    compiled."""
    from helpers.compiled_losses import assert_compiled_matches_eager

    C, R = 4, 150
    pos_acc, neg_acc = [0.3, 0.02, 0.5, 0.1], [1.0, 2.0, 0.4, 0.1]
    g = torch.Generator().manual_seed(11)
    z = torch.randn(R, C + 1, generator=g, dtype=torch.float64) * 2.0
    gt = torch.randint(0, C + 1, (R,), generator=g)

    def build():
        model = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C).train()
        model.pos_grad.copy_(torch.tensor(pos_acc, dtype=torch.float64))
        model.neg_grad.copy_(torch.tensor(neg_acc, dtype=torch.float64))
        return model

    if compiled:
        assert_compiled_matches_eager(build, z.float(), gt, steps=1)
        return
    model = build()
    model.losses(z.clone().requires_grad_(True), gt)["loss_cls"].backward()
    _, _, new_pos, new_neg = paper_step(z, gt, pos_acc, neg_acc)
    torch.testing.assert_close(model.pos_grad, torch.tensor(new_pos, dtype=torch.float64))
    torch.testing.assert_close(model.neg_grad, torch.tensor(new_neg, dtype=torch.float64))
