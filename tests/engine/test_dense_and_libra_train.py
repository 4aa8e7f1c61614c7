"""Every dense classifier trains 20 iterations inside ATSS and RetinaNet on the demo data and
evaluates; every Libra R-CNN demo config (each component alone and all together) does too."""

import glob
import math
import os

import pytest

from lt_d2.classifiers import DENSE_CLASSIFIER_REGISTRY
from lt_d2.engine import LTTrainer

from helpers.config import REPO, SWEEP_OPTS
from helpers.training import evaluation_results

pytestmark = pytest.mark.integration  # trains and evaluates through LTTrainer

DENSE_CONFIGS = {
    "atss": os.path.join(REPO, "configs", "demo", "efl", "focal_atss_R_18_FPN_demo.yaml"),
    "retinanet": os.path.join(REPO, "configs", "demo", "efl", "focal_retinanet_R_18_FPN_demo.yaml"),
}
LIBRA_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "demo", "libra", "*.yaml")))


def _train_and_evaluate(cfg):
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    assert math.isfinite(trainer.storage.latest()["total_loss"][0])
    results = evaluation_results(trainer)
    assert set(results["bbox"]) >= {"AP", "APr", "APc", "APf"}
    return results


@pytest.mark.parametrize("arch", sorted(DENSE_CONFIGS))
@pytest.mark.parametrize("name", sorted(name for name, _ in DENSE_CLASSIFIER_REGISTRY))
def test_dense_classifier_trains_and_evaluates(instant_cfg, name, arch):
    cfg = instant_cfg(
        "MODEL.DENSE_CLASSIFIER.NAME", name, *SWEEP_OPTS, config_file=DENSE_CONFIGS[arch]
    )
    _train_and_evaluate(cfg)


@pytest.mark.parametrize("path", LIBRA_CONFIGS, ids=os.path.basename)
def test_libra_component_trains_and_evaluates(instant_cfg, path):
    _train_and_evaluate(instant_cfg(*SWEEP_OPTS, config_file=path))
