"""A 20-iteration CPU training run of the demo Mask R-CNN with checkpoint, resume and LVIS
evaluation; decoupled training's freezing and re-initialisation."""

import glob
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from lt_d2.engine import LTTrainer
from lt_d2.modeling.roi_heads import LTBoxPredictor

from helpers.training import evaluation_results


def _train(cfg, resume=False):
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


@pytest.mark.integration
def test_train_checkpoint_resume_and_evaluate(instant_cfg):
    cfg = instant_cfg("SOLVER.CHECKPOINT_PERIOD", 10, "SOLVER.MAX_ITER", 20, "DATASETS.TEST", "()")
    trainer = _train(cfg)
    out = cfg.OUTPUT_DIR
    assert os.path.isfile(os.path.join(out, "model_0000009.pth"))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert glob.glob(os.path.join(out, "events.out.tfevents.*")), "no TensorBoard events"
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f]
    assert metrics[-1]["iteration"] == 19
    assert all(torch.isfinite(torch.tensor(m["total_loss"])) for m in metrics if "total_loss" in m)
    final_weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    # Resume: continues at iteration 20 with the weights of the last checkpoint.
    resumed_cfg = cfg.clone()
    resumed_cfg.defrost()
    resumed_cfg.SOLVER.MAX_ITER = 24
    resumed_cfg.DATASETS.TEST = ("lvis_demo_val",)
    resumed = LTTrainer(resumed_cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 20
    restored = resumed.model.state_dict()
    params = [k for k, _ in resumed.model.named_parameters()]
    assert params and all(torch.equal(final_weights[k], restored[k]) for k in params)
    # GradientStats may have moved its increments into its totals after the last checkpoint
    # (the diagnostics hook syncs at the end); the accumulated sums are what must survive.
    for part in ("pos_grad", "neg_grad"):
        prefix = "roi_heads.box_predictor.gradient_stats."
        total = restored[prefix + part] + restored[prefix + part + "_local"]
        expected = final_weights[prefix + part] + final_weights[prefix + part + "_local"]
        torch.testing.assert_close(total, expected)
        assert total.sum() > 0
    resumed.train()
    assert resumed.iter == 24  # detectron2 leaves iter at MAX_ITER after the loop
    results = evaluation_results(resumed)
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
            assert key in results[task], (task, key)
            value = results[task][key]
            assert value != value or 0.0 <= value <= 100.0  # NaN only where lvis-api gives it


def test_eval_only_uses_lvis_limits(instant_cfg):
    cfg = instant_cfg()
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0001
    model = LTTrainer.build_model(cfg)
    predictors = [m for m in model.modules() if isinstance(m, LTBoxPredictor)]
    assert predictors[0].test_topk_per_image == 300


@pytest.fixture
def first_stage(instant_cfg):
    """Weights of a (briefly trained) first-stage softmax model."""
    cfg = instant_cfg("SOLVER.MAX_ITER", 2, "DATASETS.TEST", "()")
    trainer = _train(cfg)
    return os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), trainer.model.state_dict()


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["cRT", "LWS"])
def test_decoupled_stage_trains_only_the_classifier(instant_cfg, first_stage, tmp_path, mode):
    weights, first = first_stage
    cfg = instant_cfg(
        "MODEL.WEIGHTS", weights,
        "MODEL.DECOUPLE.ENABLED", True,
        "MODEL.DECOUPLE.MODE", mode,
        "SOLVER.MAX_ITER", 3,
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / mode),
    )  # fmt: skip
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    prefix = "roi_heads.box_predictor.gradient_stats."
    stats = [prefix + "pos_grad", prefix + "pos_grad_local"]
    assert sum(first[k].sum() for k in stats) > 0
    if mode == "cRT":  # re-initialised, not the first stage's layer, with fresh statistics
        assert not torch.equal(
            start["roi_heads.box_predictor.cls_score.weight"],
            first["roi_heads.box_predictor.cls_score.weight"],
        )
        assert sum(start[k].sum() for k in stats) == 0
    trainer.train()
    end = trainer.model.state_dict()
    # Parameters and normalisation statistics; diagnostics buffers (GradientStats) move anyway.
    watched = {k for k, _ in trainer.model.named_parameters()} | {
        k for k in start if "running_" in k
    }
    changed = {k for k in watched if not torch.equal(start[k], end[k])}
    expected = (
        {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"}
        if mode == "cRT"
        else {"roi_heads.box_predictor.logit_scale"}
    )
    # Only the classifier moves: no other parameter and no BatchNorm statistic.
    assert changed == expected


def test_tau_normalisation_divides_weight_rows_by_norm_power(instant_cfg):
    cfg = instant_cfg("MODEL.CLASSIFIER.TAU_NORM", 0.7)
    model = LTTrainer.build_model(cfg)
    predictor = model.roi_heads.box_predictor
    predictor.eval()
    x = torch.randn(5, predictor.cls_score.in_features)
    w, b = predictor.cls_score.weight, predictor.cls_score.bias
    expected = torch.stack(
        [x @ (w[j] / w[j].norm() ** 0.7) + b[j] for j in range(w.shape[0])], dim=1
    )
    logits, _ = predictor(x)
    torch.testing.assert_close(logits, expected)
    predictor.train()  # training uses the raw weights
    logits, _ = predictor(x)
    torch.testing.assert_close(logits, x @ w.t() + b)


def test_checkpointer_round_trip_keeps_classifier_state(instant_cfg, tmp_path):
    cfg = instant_cfg("MODEL.CLASSIFIER.NAME", "EQLv2")
    model = LTTrainer.build_model(cfg)
    buffers = dict(model.roi_heads.box_predictor.classifier.named_buffers())
    assert buffers, "EQLv2 keeps its accumulated gradients as buffers"
    for value in buffers.values():
        value.add_(torch.rand_like(value.float()).to(value.dtype))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    fresh = LTTrainer.build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "m.pth"))
    for name, value in fresh.roi_heads.box_predictor.classifier.named_buffers():
        torch.testing.assert_close(value, buffers[name])
