"""Every registered two-stage classifier trains 20 iterations inside Standard and Cascade
Mask R-CNN on the demo data and evaluates with the LVIS evaluator."""

import math
import os

import pytest

from lt_d2.classifiers import CLASSIFIER_REGISTRY
from lt_d2.engine import LTTrainer

from helpers.config import REPO, SWEEP_OPTS
from helpers.training import evaluation_results

pytestmark = pytest.mark.integration  # trains and evaluates through LTTrainer

CASCADE_DEMO = os.path.join(REPO, "configs", "demo", "softmax_cascade_mask_rcnn_R_18_FPN_demo.yaml")
# The demo dataset has no category with 1000+ training instances (BAGS's last group).
EXTRA_OPTS = {"BAGS": ["MODEL.CLASSIFIER.BAGS.GROUP_BOUNDS", "[0, 10, 100]"]}


@pytest.mark.parametrize("heads", ["standard", "cascade"])
@pytest.mark.parametrize("name", sorted(name for name, _ in CLASSIFIER_REGISTRY))
def test_trains_and_evaluates(instant_cfg, name, heads):
    opts = ["MODEL.CLASSIFIER.NAME", name, *EXTRA_OPTS.get(name, []), *SWEEP_OPTS]
    if heads == "cascade":
        cfg = instant_cfg(*opts, config_file=CASCADE_DEMO)
    else:
        cfg = instant_cfg(*opts)
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 20  # MAX_ITER after the loop
    latest = trainer.storage.latest()
    assert math.isfinite(latest["total_loss"][0])
    results = evaluation_results(trainer)
    for task in ("bbox", "segm"):
        assert set(results[task]) >= {"AP", "APr", "APc", "APf"}
