"""GradientStats against the analytic logit gradients written out here (EQL v2 eqs. 3-4 for a
sigmoid classifier, (p - onehot) / R for softmax cross entropy, dL/dx of sigmoid focal loss),
unscaled under a loss scale and an outer loss weight, in float32 and fp16."""

from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lt_d2.classifiers import CLASSIFIER_REGISTRY, Classifier
from lt_d2.classifiers.compile import set_compile_enabled
from lt_d2.classifiers.dense.focal import FocalLoss
from lt_d2.classifiers.gradient_stats import (
    GradientStats,
    gradient_ratio,
    positive_negative_sums,
)
from lt_d2.classifiers.state import pop_nonfinite_updates
from lt_d2.engine.hooks import nonfinite_update_warnings

from helpers.gloo import run_on_gloo_workers

C = 4


class _Sigmoid(Classifier):
    """C sigmoid logits, BCE summed over categories, averaged over the non-ignored rows."""

    @property
    def num_logits(self) -> int:
        return self.num_classes

    def losses(self, logits, gt_classes) -> Dict[str, torch.Tensor]:
        keep = gt_classes >= 0
        y = F.one_hot(gt_classes[keep], self.num_classes + 1)[:, : self.num_classes]
        loss = F.binary_cross_entropy_with_logits(logits[keep], y.float(), reduction="sum")
        return {"loss_cls": loss / max(int(keep.sum()), 1)}


class _Softmax(Classifier):
    """C + 1 logits (background last), cross entropy averaged over the non-ignored rows."""

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def losses(self, logits, gt_classes) -> Dict[str, torch.Tensor]:
        return {"loss_cls": F.cross_entropy(logits, gt_classes, ignore_index=-1)}


class _Interleaved(_Softmax):
    """Softmax over 2C + 1 logits where category j scores column 2j + 1 (a permuted layout)."""

    @property
    def num_logits(self) -> int:
        return 2 * self.num_classes + 1

    def losses(self, logits, gt_classes) -> Dict[str, torch.Tensor]:
        target = torch.where(gt_classes < self.num_classes, 2 * gt_classes + 1, 0)
        target = torch.where(gt_classes < 0, -1, target)
        return {"loss_cls": F.cross_entropy(logits, target, ignore_index=-1)}

    def logit_columns(self) -> List[int]:
        return [2 * j + 1 for j in range(self.num_classes)]


class _Opaque(_Softmax):
    def logit_columns(self) -> List[int]:
        raise NotImplementedError("groups share logits")


def _problem(seed: int, rows: int = 9):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(-1, C + 1, (rows,), generator=g)
    gt[:3] = torch.tensor([0, C, -1])  # a foreground, a background and an ignored row
    return gt


def sigmoid_sums(z: torch.Tensor, gt: torch.Tensor):
    """EQL v2 eqs. 3-4 in absolute value, |I| = non-ignored rows, ignored rows skipped."""
    pos, neg = torch.zeros(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    n = int((gt >= 0).sum())
    p = torch.sigmoid(z.double())
    for i in range(z.shape[0]):
        for j in range(C):
            if gt[i] == -1:
                continue
            if gt[i] == j:
                pos[j] += abs(p[i, j] - 1.0) / n
            else:
                neg[j] += abs(p[i, j]) / n
    return pos, neg


def softmax_sums(z: torch.Tensor, gt: torch.Tensor, columns: List[int]):
    """|p - onehot| / R of the softmax cross entropy, at each category's column."""
    pos, neg = torch.zeros(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    n = int((gt >= 0).sum())
    p = torch.softmax(z.double(), dim=1)
    for i in range(z.shape[0]):
        for j, col in enumerate(columns):
            if gt[i] == -1:
                continue
            if gt[i] == j:
                pos[j] += abs(p[i, col] - 1.0) / n
            else:
                neg[j] += abs(p[i, col]) / n
    return pos, neg


def _train_step(stats: GradientStats, classifier: Classifier, z: torch.Tensor, gt: torch.Tensor):
    logits = z.clone().requires_grad_(True)
    watched = stats.observe(logits, gt)
    sum(classifier.losses(watched, gt).values()).backward()


@pytest.mark.parametrize("kind", ["sigmoid", "softmax", "interleaved"])
def test_sums_equal_analytic_gradients_over_iterations(kind):
    torch.manual_seed(0)
    classifier = {"sigmoid": _Sigmoid, "softmax": _Softmax, "interleaved": _Interleaved}[kind](
        num_classes=C
    )
    stats = GradientStats(classifier).train()
    want_pos = torch.zeros(C, dtype=torch.float64)
    want_neg = torch.zeros(C, dtype=torch.float64)
    for step in range(3):
        gt = _problem(step)
        z = torch.randn(gt.shape[0], classifier.num_logits)
        _train_step(stats, classifier, z, gt)
        if kind == "sigmoid":
            pos, neg = sigmoid_sums(z, gt)
        else:
            pos, neg = softmax_sums(z, gt, classifier.logit_columns())
        want_pos += pos
        want_neg += neg
    got = stats.synced()
    torch.testing.assert_close(got.pos.double(), want_pos, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.neg.double(), want_neg, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.ratio.double(), want_pos / want_neg, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["SigmoidBCE", "SoftmaxCE"])
def test_registered_classifiers_match_analytic_gradients(name):
    torch.manual_seed(2)
    classifier = CLASSIFIER_REGISTRY.get(name)(num_classes=C)
    stats = GradientStats(classifier).train()
    gt = _problem(5).clamp(min=0)  # two-stage classifiers take labels in [0, C]
    z = torch.randn(gt.shape[0], classifier.num_logits)
    _train_step(stats, classifier, z, gt)
    if name == "SigmoidBCE":
        want_pos, want_neg = sigmoid_sums(z, gt)
    else:
        want_pos, want_neg = softmax_sums(z, gt, list(range(C)))
    got = stats.synced()
    torch.testing.assert_close(got.pos.double(), want_pos, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.neg.double(), want_neg, rtol=1e-5, atol=1e-7)


def focal_sums(x: torch.Tensor, gt: torch.Tensor, alpha: float, gamma: float, scale: float):
    """|dL/dx| of sigmoid focal loss (RetinaNet; EFL eq. 1) times ``scale``, split per category
    into positives and negatives, in float64. With p = sigmoid(x):

    positive (y = 1), L = -alpha (1 - p)^gamma log p:
        dL/dx = alpha (1 - p)^gamma (gamma p log p - (1 - p))              (<= 0)
    negative (y = 0), L = -(1 - alpha) p^gamma log(1 - p):
        dL/dx = (1 - alpha) p^gamma (p - gamma (1 - p) log(1 - p))        (>= 0)

    (d/dx p = p (1 - p)); ignored rows (gt = -1) contribute nothing.
    """
    pos, neg = torch.zeros(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    p = torch.sigmoid(x.double())
    for i in range(x.shape[0]):
        for j in range(C):
            if gt[i] == -1:
                continue
            pij = p[i, j]
            if gt[i] == j:
                d = alpha * (1 - pij) ** gamma * (gamma * pij * torch.log(pij) - (1 - pij))
                pos[j] += abs(d) * scale
            else:
                d = (1 - alpha) * pij**gamma * (pij - gamma * (1 - pij) * torch.log(1 - pij))
                neg[j] += abs(d) * scale
    return pos, neg


def _head_step(stats, classifier, x, gt, *args, weight=1.0, scale=1.0):
    """What a head and GradScaler do: observe, loss, watch_loss, weight, scale, backward."""
    z = x.clone().requires_grad_(True)
    loss = classifier.losses(stats.observe(z, gt), gt, *args)["loss_cls"]
    (scale * weight * stats.watch_loss(loss)).backward()
    return z.grad


@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_focal_loss_sums_are_the_unscaled_analytic_split(scale):
    """The hook measures FocalLoss's logit gradient; the loss scale and the head's loss weight
    (2.5) are divided out: the sums are those of loss_cls itself."""
    classifier = FocalLoss(num_classes=C)
    stats = GradientStats(classifier).train()
    want_pos = torch.zeros(C, dtype=torch.float64)
    want_neg = torch.zeros(C, dtype=torch.float64)
    normalizer = 3.0
    for step in range(3):
        gt = _problem(10 + step, rows=11)
        x = torch.randn(gt.shape[0], C, generator=torch.Generator().manual_seed(step)) * 3
        grad = _head_step(stats, classifier, x, gt, normalizer, weight=2.5, scale=scale)
        pos, neg = focal_sums(x, gt, classifier.alpha, classifier.gamma, 1.0 / normalizer)
        torch.testing.assert_close(  # the gradient itself is scaled and weighted
            grad.abs().sum().double(), 2.5 * scale * (pos + neg).sum(), rtol=1e-5, atol=0
        )
        want_pos += pos
        want_neg += neg
    got = stats.synced()
    torch.testing.assert_close(got.pos.double(), want_pos, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.neg.double(), want_neg, rtol=1e-5, atol=1e-7)


def test_half_logits_under_a_loss_scale_give_float32_sums():
    """fp16 logits, GradScaler's 65536 and a loss weight: the sums are the float32 unscaled
    ones within fp16 rounding of the summed entries."""
    classifier = FocalLoss(num_classes=C)
    stats = GradientStats(classifier).train()
    gt = _problem(20, rows=200)
    x = (torch.randn(200, C, generator=torch.Generator().manual_seed(3)) * 2 - 4).half()
    _head_step(stats, classifier, x, gt, 7.0, weight=2.0, scale=65536.0)
    pos, neg = focal_sums(x.double(), gt, classifier.alpha, classifier.gamma, 1.0 / 7.0)
    got = stats.synced()
    torch.testing.assert_close(got.pos.double(), pos, rtol=2e-3, atol=0)
    torch.testing.assert_close(got.neg.double(), neg, rtol=2e-3, atol=0)


def test_loss_scale_overflow_is_skipped_and_not_reported_as_divergence():
    """A loss scale too large for fp16 logit gradients (inf: the step GradScaler skips) adds
    nothing; under mixed precision the trainer does not call that divergence, without it it
    does."""
    model = torch.nn.Module()
    model.classifier = FocalLoss(num_classes=C)
    model.stats = GradientStats(model.classifier).train()
    gt = torch.tensor([0, 1, 2, 3, C])
    x = torch.zeros(5, C).half()  # |dL/dz| ~ 0.1: x 2^20 overflows fp16
    grad = _head_step(model.stats, model.classifier, x, gt, 1.0, scale=2.0**20)
    assert not torch.isfinite(grad).all()
    got = model.stats.synced()
    assert got.pos.abs().sum() == 0 and got.neg.abs().sum() == 0
    assert nonfinite_update_warnings(model, loss_scaled=True) == []
    _head_step(model.stats, model.classifier, x, gt, 1.0, scale=2.0**20)
    (message,) = nonfinite_update_warnings(model, loss_scaled=False)
    assert "GradientStats ('stats')" in message and "diverges" in message


def test_loss_weighted_zero_adds_nothing_and_is_no_divergence():
    classifier = FocalLoss(num_classes=C)
    stats = GradientStats(classifier).train()
    gt = _problem(7)
    _head_step(stats, classifier, torch.randn(gt.shape[0], C), gt, 1.0, weight=0.0)
    got = stats.synced()
    assert got.pos.abs().sum() == 0 and got.neg.abs().sum() == 0
    assert pop_nonfinite_updates(stats) == {}


def test_nonfinite_focal_sums_are_skipped_and_counted():
    classifier = FocalLoss(num_classes=C)
    stats = GradientStats(classifier).train()
    gt = torch.tensor([0, 1, C, C])
    x = torch.randn(4, C)
    x[2, 3] = float("nan")  # category 3's negative sum is NaN, the others finite
    _head_step(stats, classifier, x, gt, 1.0)
    got = stats.synced()
    assert torch.isfinite(got.pos).all() and torch.isfinite(got.neg).all()
    assert got.neg[3] == 0 and (got.neg[:3] > 0).all()
    ((_, counts),) = pop_nonfinite_updates(stats).values()
    assert counts.tolist() == [0, 0, 0, 1]


def test_stateful_classifier_is_measured_by_the_hook_like_any_other():
    """EQL v2 keeps its own accumulated gradients as method state; GradientStats measures the
    gradient reaching its logits independently, and one step of both agrees (both are the
    magnitudes of the gradient of EQL v2's loss, eqs. 7-8)."""
    classifier = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C).train()
    stats = GradientStats(classifier).train()
    assert {"pos_grad", "neg_grad"} <= set(stats.state_dict())
    gt = _problem(6).clamp(min=0)
    x = torch.randn(gt.shape[0], classifier.num_logits)
    _head_step(stats, classifier, x, gt, weight=3.0)
    got = stats.synced()
    assert got.pos.sum() > 0
    torch.testing.assert_close(got.pos, classifier.pos_grad.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.neg, classifier.neg_grad.float(), rtol=1e-5, atol=1e-7)


def test_observe_is_transparent_and_inactive_outside_training():
    classifier = _Softmax(num_classes=C)
    stats = GradientStats(classifier)
    gt = _problem(3)
    z = torch.randn(gt.shape[0], C + 1, requires_grad=True)
    loss = F.cross_entropy(stats.observe(z, gt), gt, ignore_index=-1)
    loss.backward()
    expected = torch.autograd.grad(F.cross_entropy(z, gt, ignore_index=-1), z)[0]
    torch.testing.assert_close(z.grad, expected)  # the hook does not alter the gradient

    stats.eval()
    assert stats.observe(z, gt) is z
    stats.train()
    with torch.no_grad():
        assert stats.observe(z, gt) is z
    before = stats.synced()
    stats.eval()
    _train_step(stats, classifier, torch.randn(gt.shape[0], C + 1), gt)
    torch.testing.assert_close(stats.synced().pos, before.pos)


def test_empty_batch_adds_nothing():
    classifier = _Sigmoid(num_classes=C)
    stats = GradientStats(classifier).train()
    z = torch.zeros(0, C, requires_grad=True)
    (stats.observe(z, torch.zeros(0, dtype=torch.long)).sum() * 0).backward()
    got = stats.synced()
    assert got.pos.abs().sum() == 0 and got.neg.abs().sum() == 0 and got.ratio.abs().sum() == 0


def test_state_survives_save_and_load():
    torch.manual_seed(1)
    classifier = _Sigmoid(num_classes=C)
    stats = GradientStats(classifier).train()
    for step in range(2):
        gt = _problem(step)
        _train_step(stats, classifier, torch.randn(gt.shape[0], C), gt)
        if step == 0:
            stats.synced()  # one share synced into the totals, one left as local increment
    state = {k: v.clone() for k, v in stats.state_dict().items()}
    assert {"pos_grad", "neg_grad", "pos_grad_local", "neg_grad_local"} <= set(state)
    expected = stats.synced()

    restored = GradientStats(_Sigmoid(num_classes=C))
    restored.load_state_dict(state)
    got = restored.synced()
    torch.testing.assert_close(got.pos, expected.pos)
    torch.testing.assert_close(got.neg, expected.neg)


@pytest.mark.parametrize("columns", [None, [4, 0, 2, 1]])
def test_compiled_reduction_equals_eager(columns):
    g = torch.Generator().manual_seed(4)
    grad = torch.randn(300, 5, generator=g)
    gt = torch.randint(-1, C + 1, (300,), generator=g)
    index = None if columns is None else torch.tensor(columns)
    set_compile_enabled(True)
    compiled = positive_negative_sums(grad, gt, index, C)
    eager = positive_negative_sums.eager(grad, gt, index, C)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unattributable_classifier_fails_at_build_time():
    with pytest.raises(ValueError, match="_Opaque.*groups share logits"):
        GradientStats(_Opaque(num_classes=C))


def test_bad_logit_columns_fail_at_build_time():
    class _Duplicate(_Softmax):
        def logit_columns(self):
            return [0] * self.num_classes

    class _OutOfRange(_Softmax):
        def logit_columns(self):
            return list(range(self.num_classes - 1)) + [self.num_logits]

    with pytest.raises(ValueError, match="distinct"):
        GradientStats(_Duplicate(num_classes=C))
    with pytest.raises(ValueError, match="num_logits"):
        GradientStats(_OutOfRange(num_classes=C))


def test_gradient_ratio_is_zero_without_negatives():
    ratio = gradient_ratio(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(ratio, torch.tensor([0.5, 0.0, 0.0]))


# ------------------------------------------------------------------ two gloo processes
def _worker(rank: int, out: str) -> None:
    torch.manual_seed(10 + rank)  # each worker sees its own batch
    classifier = _Sigmoid(num_classes=C)
    stats = GradientStats(classifier).train()
    gt = _problem(rank)
    z = torch.randn(gt.shape[0], C)
    _train_step(stats, classifier, z, gt)
    synced_once = stats.synced()
    state = {k: v.clone() for k, v in stats.state_dict().items()}
    _train_step(stats, classifier, z, gt)  # an increment left unsynced
    # every worker resumes from the main process's checkpoint
    main = [stats.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(main, 0)
    resumed = GradientStats(_Sigmoid(num_classes=C))
    resumed.load_state_dict(main[0])
    torch.save(
        {
            "z": z,
            "gt": gt,
            "first": synced_once,
            "state": state,
            "resumed": resumed.synced(),
        },
        f"{out}/rank{rank}.pt",
    )


@pytest.mark.integration
def test_two_gloo_workers_sum_their_shares(tmp_path):
    run_on_gloo_workers(_worker, 2, str(tmp_path), backward=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    want_pos = torch.zeros(C, dtype=torch.float64)
    want_neg = torch.zeros(C, dtype=torch.float64)
    for res in results:  # DDP averages the two workers' gradients: each counts 1/2
        pos, neg = sigmoid_sums(res["z"], res["gt"])
        want_pos += pos / 2
        want_neg += neg / 2
    for res in results:
        torch.testing.assert_close(res["first"].pos.double(), want_pos, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res["first"].neg.double(), want_neg, rtol=1e-5, atol=1e-7)
    # Resumed from rank 0's file: the synced totals plus rank 0's own unsynced increment,
    # counted once although both workers loaded it (and, like every increment, halved).
    pos0, _ = sigmoid_sums(results[0]["z"], results[0]["gt"])
    for res in results:
        torch.testing.assert_close(
            res["resumed"].pos.double(), want_pos + pos0 / 2, rtol=1e-5, atol=1e-7
        )
