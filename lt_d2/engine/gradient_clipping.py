"""Full-model gradient clipping: one clip of the norm over every parameter's gradient per step.

detectron2's ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` "norm" clips each parameter tensor's gradient
norm on its own. The EFL authors' code (United-Perception's ``grad_clipper`` hook, mode
"pre_defined", max_norm 35, norm_type 2) clips the norm of all gradients together, as
``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)`` does: with
N = (sum_p ||g_p||^q)^(1/q) over every parameter p, each gradient is multiplied by
min(1, max_norm / (N + 1e-6)). ``CLIP_TYPE "full_model"`` (the name detectron2's own projects
give it) selects this here; :func:`build_optimizer` builds detectron2's optimizer without its
clipper and adds this one.
"""

import logging

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_d2_optimizer

__all__ = ["FULL_MODEL", "add_full_model_gradient_clipping", "build_optimizer"]

logger = logging.getLogger(__name__)

# The SOLVER.CLIP_GRADIENTS.CLIP_TYPE value of full-model clipping.
FULL_MODEL = "full_model"


def add_full_model_gradient_clipping(
    optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` first clip the global gradient norm of all the parameters of
    all its parameter groups (``torch.nn.utils.clip_grad_norm_`` once over all of them).

    The optimizer's class becomes a subclass whose ``step`` clips and then steps (detectron2
    wraps its per-parameter clipper the same way); its state and ``state_dict`` are unchanged.

    Args:
        optimizer: a built optimizer.
        max_norm: the largest global norm (SOLVER.CLIP_GRADIENTS.CLIP_VALUE; EFL: 35).
        norm_type: q of the q-norm (SOLVER.CLIP_GRADIENTS.NORM_TYPE; EFL: 2).
    """
    if max_norm <= 0:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE = {max_norm} must be > 0 for CLIP_TYPE "
            f"'{FULL_MODEL}' (the largest gradient norm of the whole model; EFL: 35)"
        )
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "WithFullModelGradientClip", (base,), {"step": step})
    return optimizer


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's optimizer; with SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model", built
    without detectron2's clipper and clipped over the whole model instead."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return build_d2_optimizer(cfg, model)
    unclipped = cfg.clone()
    unclipped.defrost()
    unclipped.SOLVER.CLIP_GRADIENTS.ENABLED = False
    optimizer = build_d2_optimizer(unclipped, model)
    logger.info(
        "Gradient clipping: the whole model's %g-norm at %g, once per step",
        clip.NORM_TYPE,
        clip.CLIP_VALUE,
    )
    return add_full_model_gradient_clipping(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)
