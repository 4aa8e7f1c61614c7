"""SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model": one clip of the whole model's gradient norm per
step, checked against the definition written out here (torch.nn.utils.clip_grad_norm_'s
semantics: N = (sum over all parameters of ||g||_q^q)^(1/q), every gradient times
min(1, max_norm / (N + 1e-6)))."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from lt_d2.config import add_lt_config
from lt_d2.engine import LTTrainer
from lt_d2.engine.gradient_clipping import add_full_model_gradient_clipping

from helpers.config import REPO, load_config

G1 = [3.0, 0.0, -4.0]  # ||g1|| = 5
G2 = [[1.0, 2.0], [2.0, -4.0]]  # ||g2|| = 5


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))


def _step(model, optimizer):
    model.a.grad = torch.tensor(G1, dtype=torch.float64)
    model.b.grad = torch.tensor(G2, dtype=torch.float64)
    optimizer.step()
    # SGD with lr 1 from zero: the parameters are minus the gradients actually used
    return -model.a.detach().clone(), -model.b.detach().clone()


def _hand_clipped(max_norm, q=2.0):
    flat = [abs(v) for v in G1] + [abs(v) for row in G2 for v in row]
    total = sum(v**q for v in flat) ** (1 / q)  # q = 2: sqrt(25 + 25)
    coef = min(1.0, max_norm / (total + 1e-6))
    a = torch.tensor([coef * v for v in G1], dtype=torch.float64)
    b = torch.tensor([[coef * v for v in row] for row in G2], dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("max_norm, q", [(1.0, 2.0), (5.0, 2.0), (100.0, 2.0), (2.0, 1.0)])
def test_clips_the_global_norm(max_norm, q):
    model = _Two()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    optimizer = add_full_model_gradient_clipping(optimizer, max_norm, q)
    a, b = _step(model, optimizer)
    exp_a, exp_b = _hand_clipped(max_norm, q)
    torch.testing.assert_close(a, exp_a)
    torch.testing.assert_close(b, exp_b)
    if max_norm == 5.0:
        # each tensor's own norm is 5: per-parameter clipping would leave both unchanged, the
        # global norm sqrt(50) scales both by 5 / sqrt(50)
        assert torch.allclose(a.norm(), torch.tensor(5 / 50**0.5 * 5, dtype=torch.float64))


def _cfg(clip_type, value=5.0):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
    return cfg


def test_trainer_builds_it_from_the_config_and_keeps_detectron2s_norm():
    model = _Two()
    optimizer = LTTrainer.build_optimizer(_cfg("full_model"), model)
    a, b = _step(model, optimizer)
    exp_a, exp_b = _hand_clipped(5.0)
    torch.testing.assert_close(a, exp_a)
    torch.testing.assert_close(b, exp_b)
    # "norm" stays detectron2's per-parameter clipping: each tensor (own norm 5) scaled by
    # min(1, 5 / (5 + 1e-6)) only
    model = _Two()
    a, b = _step(model, LTTrainer.build_optimizer(_cfg("norm"), model))
    own = 5.0 / (5.0 + 1e-6)
    torch.testing.assert_close(a, own * torch.tensor(G1, dtype=torch.float64))
    torch.testing.assert_close(b, own * torch.tensor(G2, dtype=torch.float64))
    with pytest.raises(ValueError, match="CLIP_VALUE = 0.0 must be > 0"):
        LTTrainer.build_optimizer(_cfg("full_model", 0.0), _Two())


def test_optimizer_state_dict_round_trips():
    model = _Two()
    optimizer = LTTrainer.build_optimizer(_cfg("full_model"), model)
    _step(model, optimizer)
    fresh = LTTrainer.build_optimizer(_cfg("full_model"), _Two())
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_efl_stabilized_settings_clip_the_whole_model_at_35():
    """[EFL] sec. 4.1 and the official config: every config with the stabilized settings."""
    paths = glob.glob(os.path.join(REPO, "configs", "efl", "*.yaml"))
    stabilized = [load_config(p) for p in paths if load_config(p).SOLVER.WARMUP_ITERS == 6000]
    assert len(stabilized) >= 8
    for cfg in stabilized:
        clip = cfg.SOLVER.CLIP_GRADIENTS
        assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (
            True,
            "full_model",
            35.0,
            2.0,
        )


def test_works_under_detectron2s_lr_scheduler():
    """The scheduler wraps ``optimizer.step`` after the optimizer is built; the clip still
    happens (warm-up factor 1 here, so the update is the clipped gradient)."""
    from detectron2.solver import build_lr_scheduler

    cfg = _cfg("full_model")
    cfg.SOLVER.WARMUP_ITERS = 0
    model = _Two()
    optimizer = LTTrainer.build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    a, b = _step(model, optimizer)
    scheduler.step()
    exp_a, exp_b = _hand_clipped(5.0)
    torch.testing.assert_close(a, exp_a)
    torch.testing.assert_close(b, exp_b)
