"""Balanced Feature Pyramid (Libra R-CNN sec. 3.2) around detectron2's FPN.

The four steps of Fig. 4, applied to the outputs {P_l} of an FPN backbone:

1. rescale every level to the size of the refine level (the C4-sized level, "p4", by
   default): max-pooling for finer levels, nearest-neighbour interpolation for coarser ones;
2. integrate: average the rescaled levels, ``f = 1/L sum_l P_l`` (eq. 3);
3. refine ``f`` with an embedded-Gaussian non-local block (eq. 4), a 3x3 convolution, or
   not at all (Table 5's "Integration");
4. strengthen: rescale the refined ``f`` back to each level's size by the reverse
   operations and add it to that level.

The wrapper is itself a detectron2 :class:`Backbone` with the FPN's output names, channels
and strides, so every detectron2 head (RPN + ROI heads, RetinaNet, ATSS, ...) works on it
unchanged.

Shape shorthand: N = images, Ch = FPN channels, H_l x W_l = level l's size,
H x W = the refine level's size.
"""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import (
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from torch import Tensor, nn

__all__ = [
    "REFINE_TYPES",
    "BalancedFeaturePyramid",
    "EmbeddedGaussianNonLocal",
    "build_resnet_bfp_backbone",
    "build_retinanet_resnet_bfp_backbone",
    "rescale_feature",
]


REFINE_TYPES = ("non_local", "conv", "none")


def rescale_feature(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Resize a feature map the way BFP does (sec. 3.2): max-pooling when shrinking,
    nearest-neighbour interpolation when enlarging, unchanged when already ``size``.

    Args:
        x: (N, Ch, H_in, W_in) feature map.
        size: target (H_out, W_out); both sides either not larger or not smaller than the
            input's.
    """
    in_size = tuple(x.shape[-2:])
    size = tuple(size)
    if in_size == size:
        return x
    if in_size[0] >= size[0] and in_size[1] >= size[1]:
        return F.adaptive_max_pool2d(x, size)
    if in_size[0] <= size[0] and in_size[1] <= size[1]:
        return F.interpolate(x, size=size, mode="nearest")
    raise ValueError(
        f"Cannot rescale a {in_size} feature map to {size}: one side grows while the other "
        "shrinks, which a feature pyramid's levels never do."
    )


class EmbeddedGaussianNonLocal(nn.Module):
    """The refining step of BFP, eq. (4):
    ``f'_i = sum_j softmax_j(theta(f_i)^T phi(f_j)) g(f_j) + f_i``, with theta, phi and g
    1x1 convolutions (Ch -> Ch) as the equation states it (no extra output projection).

    Args:
        channels: Ch, the number of input (and output) channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.theta = Conv2d(channels, channels, kernel_size=1)
        self.phi = Conv2d(channels, channels, kernel_size=1)
        self.g = Conv2d(channels, channels, kernel_size=1)
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, f: Tensor) -> Tensor:
        """Args: f: (N, Ch, H, W). Returns: (N, Ch, H, W)."""
        n, c, h, w = f.shape
        theta = self.theta(f).reshape(n, c, h * w)
        phi = self.phi(f).reshape(n, c, h * w)
        g = self.g(f).reshape(n, c, h * w)
        # affinity[n, i, j] = softmax over j of theta_i . phi_j
        affinity = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)
        attended = torch.bmm(g, affinity.transpose(1, 2))  # (N, Ch, HW): sum_j a_ij g_j
        return attended.reshape(n, c, h, w) + f


class BalancedFeaturePyramid(Backbone):
    """A detectron2 Backbone that applies BFP (sec. 3.2) to the outputs of an FPN.

    Args:
        fpn: a Backbone whose outputs all have the same number of channels (an FPN).
        refine_level: name of the output the levels are integrated at ("p4", the C4-sized
            level, as in the paper).
        refine_type: "non_local" (the paper's default, eq. 4), "conv" (a 3x3 convolution)
            or "none" (integration only).
    """

    def __init__(self, fpn: Backbone, *, refine_level: str = "p4", refine_type: str = "non_local"):
        super().__init__()
        shapes = fpn.output_shape()
        if refine_level not in shapes:
            raise ValueError(
                f"MODEL.BFP.REFINE_LEVEL={refine_level!r} is not an output of the FPN, whose "
                f"levels are {sorted(shapes)}; pick one of them (the paper integrates at the "
                "C4-sized level, 'p4')."
            )
        channels = {spec.channels for spec in shapes.values()}
        if len(channels) != 1:
            raise ValueError(
                "BFP averages the pyramid's levels, so they need one channel count; got "
                f"{ {name: spec.channels for name, spec in shapes.items()} }."
            )
        (num_channels,) = channels
        if refine_type == "non_local":
            self.refine = EmbeddedGaussianNonLocal(num_channels)
        elif refine_type == "conv":
            self.refine = Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
            nn.init.normal_(self.refine.weight, std=0.01)
            nn.init.zeros_(self.refine.bias)
        elif refine_type == "none":
            self.refine = nn.Identity()
        else:
            raise ValueError(
                f"Unknown MODEL.BFP.REFINE_TYPE {refine_type!r}; choose one of {REFINE_TYPES}."
            )
        self.fpn = fpn
        self.refine_level = refine_level
        self.refine_type = refine_type
        self._out_features = list(shapes)
        self._out_feature_channels = {name: spec.channels for name, spec in shapes.items()}
        self._out_feature_strides = {name: spec.stride for name, spec in shapes.items()}

    @property
    def size_divisibility(self) -> int:
        return self.fpn.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        # detectron2 main asks backbones for padding constraints; v0.6 has no such property.
        return getattr(self.fpn, "padding_constraints", {})

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Args: x: (N, 3, H_img, W_img) images.
        Returns: {name: (N, Ch, H_l, W_l)}, the FPN's outputs, each strengthened by BFP."""
        features = self.fpn(x)
        size = tuple(features[self.refine_level].shape[-2:])
        integrated = sum(rescale_feature(features[name], size) for name in self._out_features)
        balanced = self.refine(integrated / len(self._out_features))
        return {
            name: features[name] + rescale_feature(balanced, tuple(features[name].shape[-2:]))
            for name in self._out_features
        }


def _bfp_from_cfg(cfg, fpn: Backbone) -> BalancedFeaturePyramid:
    return BalancedFeaturePyramid(
        fpn, refine_level=cfg.MODEL.BFP.REFINE_LEVEL, refine_type=cfg.MODEL.BFP.REFINE_TYPE
    )


@BACKBONE_REGISTRY.register()
def build_resnet_bfp_backbone(cfg, input_shape: ShapeSpec) -> BalancedFeaturePyramid:
    """ResNet + FPN (P2-P6, detectron2's ``build_resnet_fpn_backbone``) + BFP, for R-CNN."""
    return _bfp_from_cfg(cfg, build_resnet_fpn_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_bfp_backbone(cfg, input_shape: ShapeSpec) -> BalancedFeaturePyramid:
    """ResNet + FPN (P3-P7, ``build_retinanet_resnet_fpn_backbone``) + BFP, for dense
    detectors (Libra RetinaNet, ATSS)."""
    return _bfp_from_cfg(cfg, build_retinanet_resnet_fpn_backbone(cfg, input_shape))
