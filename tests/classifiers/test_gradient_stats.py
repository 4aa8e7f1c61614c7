"""GradientStats against the analytic logit gradients written out here (EQL v2 eqs. 3-4 for a
sigmoid classifier, (p - onehot) / R for softmax cross entropy, dL/dx of sigmoid focal loss)."""

from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lt_d2.classifiers import CLASSIFIER_REGISTRY, Classifier, kernels
from lt_d2.classifiers.dense.focal import FocalLoss
from lt_d2.classifiers.gradient_stats import GradientStats, gradient_balance, gradient_ratio
from lt_d2.classifiers.state import pop_nonfinite_updates

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


class _Stateful(_Sigmoid):
    def __init__(self, *, num_classes):
        super().__init__(num_classes=num_classes)
        self.register_buffer("pos_grad", torch.arange(1.0, num_classes + 1))
        self.register_buffer("neg_grad", torch.full((num_classes,), 4.0))

    def accumulated_gradients(self):
        return self.pos_grad, self.neg_grad


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


class _HookedFocal(FocalLoss):
    """FocalLoss measured by GradientStats's hook instead of its own backward."""

    computes_gradient_sums = False


@pytest.mark.parametrize("chunk_elements", [None, 2 * C])
def test_focal_loss_sums_from_its_backward_equal_the_analytic_split_and_the_hook(
    chunk_elements, monkeypatch
):
    if chunk_elements is not None:  # several chunks in the fused kernel
        monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", chunk_elements)
    fused, hooked = FocalLoss(num_classes=C), _HookedFocal(num_classes=C)
    fused_stats, hooked_stats = GradientStats(fused).train(), GradientStats(hooked).train()
    want_pos = torch.zeros(C, dtype=torch.float64)
    want_neg = torch.zeros(C, dtype=torch.float64)
    normalizer, outer = 3.0, 2.5  # an outer loss weight reaches the sums, as in the hook
    for step in range(3):
        gt = _problem(10 + step, rows=11)
        x = torch.randn(gt.shape[0], C, generator=torch.Generator().manual_seed(step)) * 3
        z = x.clone().requires_grad_(True)
        assert fused_stats.observe(z, gt) is z  # no hook: the classifier's backward feeds it
        loss = fused.losses(z, gt, normalizer, gradient_sink=fused_stats.gradient_sink())
        (outer * loss["loss_cls"]).backward()
        z2 = x.clone().requires_grad_(True)
        loss = hooked.losses(hooked_stats.observe(z2, gt), gt, normalizer)
        (outer * loss["loss_cls"]).backward()
        torch.testing.assert_close(z.grad, z2.grad)
        pos, neg = focal_sums(x, gt, fused.alpha, fused.gamma, outer / normalizer)
        want_pos += pos
        want_neg += neg
    got, hook = fused_stats.synced(), hooked_stats.synced()
    torch.testing.assert_close(got.pos.double(), want_pos, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.neg.double(), want_neg, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.pos, hook.pos, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.neg, hook.neg, rtol=1e-5, atol=1e-7)
    # the same buffers as with the hook: checkpoints keep their layout
    assert list(fused_stats.state_dict()) == list(hooked_stats.state_dict())


def test_focal_loss_sink_only_in_training_with_grad():
    stats = GradientStats(FocalLoss(num_classes=C)).eval()
    assert stats.gradient_sink() is None
    stats.train()
    with torch.no_grad():
        assert stats.gradient_sink() is None
    assert stats.gradient_sink() is not None
    assert GradientStats(_HookedFocal(num_classes=C)).train().gradient_sink() is None


def test_nonfinite_focal_sums_are_skipped_and_counted():
    classifier = FocalLoss(num_classes=C)
    stats = GradientStats(classifier).train()
    gt = torch.tensor([0, 1, C, C])
    z = torch.randn(4, C)
    z[2, 3] = float("nan")  # category 3's negative sum is NaN, the others finite
    z.requires_grad_(True)
    classifier.losses(z, gt, 1.0, gradient_sink=stats.gradient_sink())["loss_cls"].backward()
    got = stats.synced()
    assert torch.isfinite(got.pos).all() and torch.isfinite(got.neg).all()
    assert got.neg[3] == 0 and (got.neg[:3] > 0).all()
    ((_, counts),) = pop_nonfinite_updates(stats).values()
    assert counts.tolist() == [0, 0, 0, 1]


def test_eqlv2_state_is_reused():
    classifier = CLASSIFIER_REGISTRY.get("EQLv2")(num_classes=C).train()
    stats = GradientStats(classifier).train()
    assert stats.reuses_classifier_state
    gt = _problem(6).clamp(min=0)
    _train_step(stats, classifier, torch.randn(gt.shape[0], classifier.num_logits), gt)
    got = gradient_balance(classifier, stats)
    assert got.pos.sum() > 0
    torch.testing.assert_close(got.pos, classifier.pos_grad.float())
    torch.testing.assert_close(got.neg, classifier.neg_grad.float())


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


def test_reuses_classifier_state_without_hook():
    classifier = _Stateful(num_classes=C)
    stats = GradientStats(classifier).train()
    assert stats.reuses_classifier_state
    assert list(stats.state_dict()) == []  # nothing stored twice
    z = torch.randn(5, C, requires_grad=True)
    assert stats.observe(z, torch.zeros(5, dtype=torch.long)) is z
    with pytest.raises(RuntimeError, match="keeps no sums of its own"):
        stats.synced()
    got = gradient_balance(classifier, stats)
    torch.testing.assert_close(got.pos, torch.arange(1.0, C + 1))
    torch.testing.assert_close(got.ratio, torch.arange(1.0, C + 1) / 4.0)


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
    run_on_gloo_workers(_worker, 2, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    want_pos = torch.zeros(C, dtype=torch.float64)
    want_neg = torch.zeros(C, dtype=torch.float64)
    for res in results:
        pos, neg = sigmoid_sums(res["z"], res["gt"])
        want_pos += pos
        want_neg += neg
    for res in results:
        torch.testing.assert_close(res["first"].pos.double(), want_pos, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res["first"].neg.double(), want_neg, rtol=1e-5, atol=1e-7)
    # Resumed from rank 0's file: the synced totals plus rank 0's own unsynced increment,
    # counted once although both workers loaded it.
    pos0, _ = sigmoid_sums(results[0]["z"], results[0]["gt"])
    for res in results:
        torch.testing.assert_close(
            res["resumed"].pos.double(), want_pos + pos0, rtol=1e-5, atol=1e-7
        )
