import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import build_classifier
from lt_d2.classifiers.two_stage.eql import EQL, eql_tail
from lt_d2.config import add_lt_config
from lt_d2.data.category_stats import CategoryStats

C = 6
# image frequencies 0.002, 0.004, 0.02, 0.05, 0.3, 0.9: rare, rare, common, common, frequent x2
STATS = CategoryStats(
    instance_counts=[2, 5, 30, 60, 400, 2000],
    image_counts=[2, 4, 20, 50, 300, 900],
    num_images=1000,
)
LAMBDA = 0.1  # tail = categories 0-3 (rare + common)


def _naive(logits, gt, lam=LAMBDA):
    """DropLoss eq. 2 written out per term: L = -(1/R) sum_r sum_j w_j log(p_hat_j),
    w_j = 1 - E(r) T(f_j) (1 - y_j); returns the loss and the weights."""
    freq = [n / 1000 for n in [2, 4, 20, 50, 300, 900]]
    w = torch.ones_like(logits)
    loss = logits.new_zeros(())
    for r in range(logits.shape[0]):
        e = 1.0 if gt[r] < C else 0.0
        for j in range(C):
            y = 1.0 if gt[r] == j else 0.0
            t = 1.0 if freq[j] < lam else 0.0
            w[r, j] = 1 - e * t * (1 - y)
            p = 1 / (1 + torch.exp(-logits[r, j]))
            p_hat = p if y == 1 else 1 - p
            loss = loss - w[r, j] * torch.log(p_hat)
    return loss / logits.shape[0], w


def _clf(**kw):
    return EQL(num_classes=C, image_frequency=STATS.image_frequency, lambda_=LAMBDA, **kw)


def test_loss_and_gradient_match_eq2():
    torch.manual_seed(0)
    logits = torch.randn(8, C, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([0, 2, 4, 5, 6, 6, 3, 1])
    loss = _clf().losses(logits, gt)["loss_cls"]
    expected, w = _naive(logits.detach(), gt)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits)
    y = torch.nn.functional.one_hot(gt, C + 1)[:, :C].double()
    torch.testing.assert_close(grad, w * (torch.sigmoid(logits.detach()) - y) / 8)
    # a foreground ROI of a frequent class (row 2, class 4) sends no gradient to tail classes
    assert (grad[2, :4] == 0).all() and (grad[2, 5] != 0)
    # background ROIs (rows 4, 5) suppress every category
    assert (grad[4:6] != 0).all()


def test_threshold_from_image_frequency():
    assert _clf().tail.tolist() == [True, True, True, True, False, False]
    assert eql_tail(STATS.image_frequency, 0.03).tolist() == [True] * 3 + [False] * 3


def test_tail_from_frequency_groups_replaces_lambda():
    # STATS's labels by LVIS's rule (<= 10 images rare, <= 100 common): r r c c f f
    labels = STATS.frequency_labels.tolist()
    assert labels == ["r", "r", "c", "c", "f", "f"]
    for groups, expected in [
        (("r", "c"), [True, True, True, True, False, False]),  # DropLoss eq. 7
        (("r",), [True, True, False, False, False, False]),
        (("c", "f"), [False, False, True, True, True, True]),
    ]:
        # lambda selects nothing here and is ignored once the groups are named
        clf = EQL(
            num_classes=C,
            image_frequency=STATS.image_frequency,
            lambda_=1e-6,
            frequency_labels=labels,
            tail_groups=groups,
        )
        assert clf.tail.tolist() == expected


def test_empty_tail_is_refused_with_the_key_to_change():
    # the default lambda 1.76e-3 is below every image frequency here (smallest 0.002)
    with pytest.raises(ValueError, match="MODEL.CLASSIFIER.EQL.LAMBDA = 0.00176 puts no"):
        EQL(num_classes=C, image_frequency=STATS.image_frequency)
    labels = ["c", "c", "c", "f", "f", "f"]
    with pytest.raises(ValueError, match=r"TAIL_GROUPS = \['r'\] selects no category"):
        _clf(frequency_labels=labels, tail_groups=("r",))
    with pytest.raises(ValueError, match="distinct LVIS frequency groups"):
        _clf(frequency_labels=labels, tail_groups=("rare",))
    with pytest.raises(ValueError, match="distinct LVIS frequency groups"):
        _clf(frequency_labels=labels, tail_groups=("c", "c"))
    with pytest.raises(ValueError, match="needs one 'r' / 'c' / 'f' label per category"):
        _clf(tail_groups=("r", "c"))
    cfg = get_cfg()
    add_lt_config(cfg)
    for name in ("EQL", "BackgroundEQL", "DropLoss"):
        cfg.MODEL.CLASSIFIER.NAME = name
        with pytest.raises(ValueError, match="TAIL_GROUPS"):
            build_classifier(cfg, C, STATS)


def test_built_from_config_with_lambda_key():
    cfg = get_cfg()
    add_lt_config(cfg)
    assert cfg.MODEL.CLASSIFIER.EQL.LAMBDA == 1.76e-3
    cfg.MODEL.CLASSIFIER.NAME = "EQL"
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = 0.01
    clf = build_classifier(cfg, C, STATS)
    assert clf.tail.tolist() == [True, True, False, False, False, False]
    assert cfg.MODEL.CLASSIFIER.EQL.TAIL_GROUPS == []
    cfg.MODEL.CLASSIFIER.EQL.TAIL_GROUPS = ["r", "c"]
    assert build_classifier(cfg, C, STATS).tail.tolist() == [True] * 4 + [False] * 2
    with pytest.raises(ValueError, match="category statistics"):
        build_classifier(cfg, C, None)


def test_predict_probs_and_bias_are_the_sigmoid_ones():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0, -2.0, 0.5]])
    probs = _clf().predict_probs(logits)
    torch.testing.assert_close(probs[:, :C], torch.sigmoid(logits))
    torch.testing.assert_close(probs[:, C], 1 - torch.sigmoid(torch.tensor([2.0])))
    bias = torch.zeros(C)
    _clf().init_bias(bias)
    torch.testing.assert_close(torch.sigmoid(bias), torch.full((C,), 0.001))


def test_extreme_logits_empty_input_and_bad_labels():
    logits = torch.tensor([[100.0, -100.0] * 3] * 3, requires_grad=True)
    loss = _clf().losses(logits, torch.tensor([0, 4, 6]))["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    empty = torch.zeros(0, C, requires_grad=True)
    loss = _clf().losses(empty, torch.zeros(0, dtype=torch.long))["loss_cls"]
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="gt_classes must lie in"):
        _clf().losses(torch.zeros(1, C), torch.tensor([7]))
    with pytest.raises(ValueError, match="one entry per class"):
        EQL(num_classes=C + 1, image_frequency=STATS.image_frequency)
