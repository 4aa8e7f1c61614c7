"""A decoupled stage starts only from a trained detector of the same classes: weights that
leave a frozen weight uninitialised (an ImageNet backbone, a detector of other classes, an
LWS stage without the classifier it re-scales) are refused, naming MODEL.WEIGHTS and what to
pass; the shipped decoupled configs refuse to start until MODEL.WEIGHTS is given."""

import glob
import os

import pytest
import torch

from lt_d2.engine import LTCheckpointer, LTTrainer, check_config

from helpers.config import DEMO_CONFIG, INSTANT_OPTS, REPO, load_config

NUM_CLASSES = 10  # the demo's
PREDICTOR = "roi_heads.box_predictor."


def _model(*opts, decoupled_mode=None):
    mode = [] if decoupled_mode is None else [
        "MODEL.DECOUPLE.ENABLED", True, "MODEL.DECOUPLE.MODE", decoupled_mode,
    ]  # fmt: skip
    cfg = load_config(DEMO_CONFIG, *INSTANT_OPTS, *mode, *opts)
    return LTTrainer.build_model(cfg)


@pytest.fixture(scope="module")
def stage1():
    """State of a first-stage softmax detector of the demo's classes."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in _model().state_dict().items()}


def _write(tmp_path, name, state):
    path = str(tmp_path / name)
    torch.save({"model": state}, path)
    return path


def _load(model, path):
    LTCheckpointer(model, allow_classifier_change=True, require_frozen_weights=True).load(path)


@pytest.mark.parametrize("mode", ["cRT", "LWS"])
def test_first_stage_detector_is_loaded(stage1, tmp_path, mode):
    model = _model(decoupled_mode=mode)
    _load(model, _write(tmp_path, "model_final.pth", stage1))
    state = model.state_dict()
    # every weight of the model came from the file (FrozenBatchNorm2d has no batch counter)
    assert set(state) - set(stage1) == ({PREDICTOR + "logit_scale"} if mode == "LWS" else set())
    assert all(torch.equal(state[k], stage1[k]) for k in state if k in stage1)


def test_second_stage_with_another_classifier_starts_its_state_fresh(stage1, tmp_path):
    # EQL v2's accumulated gradients are not in a softmax first stage: allowed, and zero
    model = _model("MODEL.CLASSIFIER.NAME", "EQLv2", decoupled_mode="cRT")
    _load(model, _write(tmp_path, "model_final.pth", stage1))
    assert model.state_dict()[PREDICTOR + "classifier.pos_grad"].abs().sum() == 0


def _refused(model, path, missing_example):
    with pytest.raises(ValueError) as err:
        _load(model, path)
    message = str(err.value)
    assert f"MODEL.WEIGHTS {path} is not a trained detector" in message
    assert f"{NUM_CLASSES} classes" in message
    assert "model_final.pth" in message and missing_example in message


def test_imagenet_backbone_is_refused(stage1, tmp_path):
    backbone = {k: v for k, v in stage1.items() if k.startswith("backbone.bottom_up.")}
    assert backbone and len(backbone) < len(stage1)
    path = _write(tmp_path, "R-18.pth", backbone)
    _refused(_model(decoupled_mode="cRT"), path, "backbone.fpn_")


def test_detector_of_other_classes_is_refused(stage1, tmp_path):
    other = dict(stage1)
    for part in ("weight", "bias"):  # a box regressor for 5 classes: its shape differs
        key = PREDICTOR + f"bbox_pred.{part}"
        other[key] = other[key][: 5 * 4]
    path = _write(tmp_path, "other_classes.pth", other)
    _refused(_model(decoupled_mode="cRT"), path, PREDICTOR + "bbox_pred")


def test_lws_needs_the_classifier_it_rescales_crt_does_not(stage1, tmp_path):
    no_classifier = {k: v for k, v in stage1.items() if "cls_score" not in k}
    path = _write(tmp_path, "no_cls_score.pth", no_classifier)
    _load(_model(decoupled_mode="cRT"), path)  # cRT re-initialises cls_score anyway
    _refused(_model(decoupled_mode="LWS"), path, PREDICTOR + "cls_score")


def test_without_decoupling_partial_weights_load_as_in_detectron2(stage1, tmp_path):
    backbone = {k: v for k, v in stage1.items() if k.startswith("backbone.bottom_up.")}
    LTCheckpointer(_model()).load(_write(tmp_path, "R-18.pth", backbone))


def test_trainer_refuses_an_imagenet_backbone_for_a_decoupled_stage(stage1, tmp_path):
    backbone = {k: v for k, v in stage1.items() if k.startswith("backbone.bottom_up.")}
    path = _write(tmp_path, "R-18.pth", backbone)
    cfg = load_config(
        DEMO_CONFIG, *INSTANT_OPTS,
        "MODEL.DECOUPLE.ENABLED", True,
        "MODEL.WEIGHTS", path,
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    cfg.freeze()
    trainer = LTTrainer(cfg)
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS .*R-18\.pth is not a trained detector"):
        trainer.resume_or_load(resume=False)


def _decoupled_configs():
    found = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)):
        if os.path.basename(path).startswith("Base-") and "decoupled" not in path:
            continue
        if load_config(path).MODEL.DECOUPLE.ENABLED:
            found.append(os.path.relpath(path, REPO))
    return found


def test_shipped_decoupled_configs_refuse_to_start_without_a_first_stage():
    configs = _decoupled_configs()
    assert len(configs) >= 6, configs  # eqlv2 cRT/LWS/BAGS and its base, BAGS x2, the demo
    for path in configs:
        cfg = load_config(os.path.join(REPO, path), "MODEL.DEVICE", "cpu")
        with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty.*model_final.pth") as err:
            check_config(cfg)
        assert "MODEL.DECOUPLE.ENABLED" in str(err.value), path
