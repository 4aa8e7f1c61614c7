import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from lt_d2.config import add_lt_config
from lt_d2.modeling.necks.bfp import BalancedFeaturePyramid, EmbeddedGaussianNonLocal

CH = 4
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


class _FixedPyramid(Backbone):
    """A stand-in FPN that returns the given features (ignores its input)."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    @property
    def size_divisibility(self):
        return 32

    def forward(self, x):
        return dict(self.features)

    def output_shape(self):
        return {k: ShapeSpec(channels=CH, stride=STRIDES[k]) for k in self.features}


def _pyramid(size=32, levels=("p2", "p3", "p4", "p5", "p6")):
    """Random features of a 128x128 image: p2 32x32 ... p6 2x2."""
    torch.manual_seed(0)
    return {k: torch.randn(2, CH, size * 4 // STRIDES[k], size * 4 // STRIDES[k]) for k in levels}


def _expected_integration(feats, refine="p4"):
    """Eq. (3) at the refine level's size, with fixed-ratio max pooling / nearest upsampling,
    then the reverse rescaling added to every level (refinement off)."""
    r = STRIDES[refine]
    rescaled = []
    for name, f in feats.items():
        s = STRIDES[name]
        if s < r:
            rescaled.append(F.max_pool2d(f, kernel_size=r // s, stride=r // s))
        elif s > r:
            rescaled.append(F.interpolate(f, scale_factor=s // r, mode="nearest"))
        else:
            rescaled.append(f)
    bsf = torch.stack(rescaled).mean(0)
    out = {}
    for name, f in feats.items():
        s = STRIDES[name]
        if s < r:
            back = F.interpolate(bsf, scale_factor=r // s, mode="nearest")
        elif s > r:
            back = F.max_pool2d(bsf, kernel_size=s // r, stride=s // r)
        else:
            back = bsf
        out[name] = f + back
    return out


@pytest.mark.parametrize("refine", ["p4", "p3"])
def test_integration_only_is_identity_plus_rescaled_average(refine):
    feats = _pyramid()
    bfp = BalancedFeaturePyramid(_FixedPyramid(feats), refine_level=refine, refine_type="none")
    out = bfp(torch.zeros(2, 3, 128, 128))
    expected = _expected_integration(feats, refine)
    assert list(out) == list(feats)
    for name in feats:
        assert out[name].shape == feats[name].shape
        torch.testing.assert_close(out[name], expected[name])


def test_non_local_block_starts_as_the_identity():
    """The output projection starts at zero (mmdetection's NonLocal2d, zeros_init)."""
    block = EmbeddedGaussianNonLocal(CH)
    f = torch.randn(2, CH, 3, 2)
    torch.testing.assert_close(block(f), f)


def test_non_local_refinement_is_eq_4():
    torch.manual_seed(1)
    block = EmbeddedGaussianNonLocal(CH)
    for conv in (block.theta, block.phi, block.g, block.out):  # non-trivial weights
        torch.nn.init.normal_(conv.weight)
        torch.nn.init.normal_(conv.bias)
    f = torch.randn(1, CH, 3, 2)
    positions = f[0].reshape(CH, -1).T  # (HW, CH)

    def conv1x1(conv, x):
        return x @ conv.weight.reshape(CH, CH).T + conv.bias

    theta, phi, g = (conv1x1(c, positions) for c in (block.theta, block.phi, block.g))
    expected = torch.empty_like(positions)
    for i in range(positions.shape[0]):
        weights = torch.exp(theta[i] @ phi.T)
        weights = weights / weights.sum()
        # W_out, the output projection of the authors' block, after the attention sum
        expected[i] = conv1x1(block.out, (weights[:, None] * g).sum(0)) + positions[i]
    out = block(f)
    torch.testing.assert_close(out[0].reshape(CH, -1).T, expected, rtol=1e-4, atol=1e-5)


def test_refinement_adds_the_refined_feature_and_gradients_flow():
    feats = {k: v.requires_grad_() for k, v in _pyramid().items()}
    for refine_type in ("non_local", "conv"):
        bfp = BalancedFeaturePyramid(_FixedPyramid(feats), refine_type=refine_type)
        out = bfp(torch.zeros(2, 3, 128, 128))
        # The p4 output minus its input is refine(mean of the rescaled levels).
        integrated = (
            _expected_integration({k: v.detach() for k, v in feats.items()}, "p4")["p4"]
            - feats["p4"].detach()
        )
        torch.testing.assert_close(out["p4"] - feats["p4"], bfp.refine(integrated))
        sum(o.sum() for o in out.values()).backward()
        assert all(p.grad is not None for p in bfp.refine.parameters())
        assert feats["p2"].grad is not None


def _tiny_cfg(backbone):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    return cfg


@pytest.mark.parametrize(
    "builder,levels",
    [
        ("build_resnet_bfp_backbone", ["p2", "p3", "p4", "p5", "p6"]),
        ("build_retinanet_resnet_bfp_backbone", ["p3", "p4", "p5", "p6", "p7"]),
    ],
)
def test_registered_builders_wrap_detectron2_fpn(builder, levels):
    cfg = _tiny_cfg(builder)
    if builder.startswith("build_retinanet"):
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.BFP.REFINE_TYPE = "conv"
    model = BACKBONE_REGISTRY.get(builder)(cfg, ShapeSpec(channels=3))
    assert isinstance(model, BalancedFeaturePyramid)
    assert sorted(model.output_shape()) == sorted(levels)
    assert model.size_divisibility == model.fpn.size_divisibility
    x = torch.randn(1, 3, 128, 128)
    model.eval()
    with torch.no_grad():
        out, plain = model(x), model.fpn(x)
    for name in levels:
        assert out[name].shape == plain[name].shape
        assert (
            out[name].shape[1] == 16
            and out[name].shape[-1] == 128 // model.output_shape()[name].stride
        )


def test_bad_input():
    fpn = _FixedPyramid(_pyramid(levels=("p3", "p4", "p5")))
    with pytest.raises(ValueError, match="REFINE_LEVEL='p2'.*'p3', 'p4', 'p5'"):
        BalancedFeaturePyramid(fpn, refine_level="p2")
    with pytest.raises(ValueError, match="REFINE_TYPE"):
        BalancedFeaturePyramid(fpn, refine_type="gc_block")


def test_imagenet_style_backbone_weights_still_match_inside_the_wrapper():
    """detectron2 matches pre-trained weights to the model by name suffix; the wrapper's
    extra ``fpn.`` prefix must not stop ImageNet ResNet weights from loading."""
    cfg = _tiny_cfg("build_resnet_bfp_backbone")
    model = BACKBONE_REGISTRY.get("build_resnet_bfp_backbone")(cfg, ShapeSpec(channels=3))
    prefix = "fpn.bottom_up."
    # What a converted ImageNet checkpoint holds: the ResNet's own names, no prefixes.
    checkpoint = {
        k[len(prefix) :]: torch.full_like(v, 0.5)
        for k, v in model.state_dict().items()
        if k.startswith(prefix)
    }
    aligned = align_and_update_state_dicts(model.state_dict(), checkpoint, c2_conversion=False)
    assert set(aligned) == {prefix + k for k in checkpoint}
