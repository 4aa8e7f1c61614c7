"""Calibrate the LVIS-scale simulation's generative model on the two baselines alone.

Each trial sets some of :class:`SimConfig`'s fields, trains the baselines (SoftmaxCE,
SigmoidBCE; no RFS, no decoupled stage, no other method) with
:mod:`benchmarks.lvis_scale_classifiers` and compares their APr / APc / APf with [EQLv2]
Table 1 rows (a) Softmax and (b) Sigmoid (mask AP, LVIS v1 val, Mask R-CNN R50-FPN 1x; read
from ``lt_d2/evaluation/paper_results.json``).

Objective (``simulation_report.deviation``): the largest absolute difference, in AP points,
over the six numbers (APr, APc, APf of each baseline that was run); a trial meets the
calibration when it is at most ``simulation_report.TOLERANCE``.

    python -m benchmarks.simulation_calibration --out output/sim_calibration \\
        --trial sigma=4,rho=0.25 --trial sigma=3 [--steps N] [--names SoftmaxCE]

Appends one json line per trial to ``<out>/trials.jsonl``.
"""

import argparse
import json
import logging
import os
from dataclasses import fields, replace
from typing import Dict, List, Optional, Sequence

import torch

from benchmarks import lvis_scale_classifiers as sim
from benchmarks.simulation_report import BASELINES, METRICS, deviation, paper_targets

logger = logging.getLogger("simulation_calibration")


def parse_trial(text: str) -> Dict[str, object]:
    """'sigma=4,rho=0.25' -> {'sigma': 4.0, 'rho': 0.25}, typed by SimConfig's fields."""
    types = {f.name: type(f.default) for f in fields(sim.SimConfig)}
    out: Dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise ValueError(
                f"unknown SimConfig field '{key}' in --trial {text!r}; fields: {sorted(types)}"
            )
        out[key] = types[key](value)
    return out


def run_trials(
    out: str, trials: List[Dict[str, object]], names: Sequence[str], base: sim.SimConfig
) -> List[Dict]:
    targets = paper_targets()
    os.makedirs(out, exist_ok=True)
    records = []
    for k, change in enumerate(trials):
        cfg = replace(base, **change)
        tag = "_".join(f"{key}{value}" for key, value in change.items()) or "defaults"
        summary = sim.run(os.path.join(out, f"t{k}_{tag}"), cfg, names, rfs=(), decoupled=False)
        rows = [
            {"run": r["run"], **{m: r[m] for m in ("AP", "AP50", *METRICS)}, "cpu_s": r["cpu_s"]}
            for r in summary["rows"]
        ]
        record = {
            "change": change,
            "steps": cfg.steps,
            "rows": rows,
            "failures": summary["failures"],
        }
        record["deviation"] = deviation(rows, targets) if rows else float("nan")
        records.append(record)
        with open(os.path.join(out, "trials.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info("trial %s: %s", change, json.dumps(record))
    return records


def reevaluate(run_dir: str, classifier: str, cfg: sim.SimConfig, out: str) -> Dict:
    """Evaluate the layer a trial trained (``<run_dir>/model_final.pth``) on the validation set
    of ``cfg``: for a setting that changes the validation set alone (``val_jitter``), with no
    retraining. The validation set's draws do not depend on ``val_jitter``, so the ROIs and
    their features are the trial's own."""
    ctx = sim.prepare(out, cfg)
    predictor = sim.build_predictor(classifier, ctx["stats"], cfg)
    predictor.load_state_dict(torch.load(os.path.join(run_dir, "model_final.pth")))
    metrics = sim.evaluate(predictor, ctx["val"], ctx["dataset"], ctx["stats"])
    return {"run": classifier, **{m: metrics[m] for m in ("AP", "AP50", *METRICS)}}


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/sim_calibration")
    parser.add_argument("--trial", action="append", default=[], help="field=value,...")
    parser.add_argument("--names", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--steps", type=int, help="override the number of training steps")
    parser.add_argument(
        "--reevaluate",
        metavar="RUN_DIR",
        help="evaluate RUN_DIR/model_final.pth (of --names' one classifier, trained with the "
        "trial's other settings) under each --trial's validation setting, without training",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sim.torch.set_num_threads(1)
    base = sim.SimConfig() if args.steps is None else replace(sim.SimConfig(), steps=args.steps)
    trials = [parse_trial(t) for t in args.trial or [""]]
    if args.reevaluate:
        (name,) = args.names
        records = []
        for k, change in enumerate(trials):
            out = os.path.join(args.out, f"reeval{k}")
            row = reevaluate(args.reevaluate, name, replace(base, **change), out)
            record = {"reevaluated": args.reevaluate, "change": change, "rows": [row]}
            record["deviation"] = deviation([row], paper_targets())
            records.append(record)
            print(json.dumps(record))
        return records
    return run_trials(args.out, trials, args.names, base)


if __name__ == "__main__":
    main()
