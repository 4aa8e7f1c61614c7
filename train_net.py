#!/usr/bin/env python
"""Train and evaluate lt_d2 detectors.

python train_net.py --config-file configs/demo/softmax_mask_rcnn_R_18_FPN_demo.yaml
python train_net.py --config-file <yaml> --num-gpus 8 [--num-machines N --machine-rank R
    --dist-url tcp://host:port] [--resume] [--eval-only MODEL.WEIGHTS model.pth]

--num-gpus N starts N processes per machine: one per GPU, or, without GPUs and on a
detectron2 whose launch supports it (main), N CPU processes joined by gloo.
"""

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import lt_d2  # noqa: F401  (registers classifiers, heads and datasets)
from lt_d2.compat import check_launch
from lt_d2.config import add_lt_config, merge_lt_config
from lt_d2.engine import LTCheckpointer, LTTrainer, check_config


def setup(args):
    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(cfg, args.config_file, args.opts)
    cfg.freeze()
    check_config(cfg, eval_only=args.eval_only)
    default_setup(cfg, args)
    # lt_d2's own loggers: console (main process) and OUTPUT_DIR/log.txt, as detectron2's
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="lt_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = LTTrainer.build_model(cfg)
        LTCheckpointer(model, save_dir=cfg.OUTPUT_DIR, require_all_weights=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = LTTrainer.test(cfg, model)
        if comm.is_main_process():  # the other processes' results are empty
            verify_results(cfg, results)
        return results
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    """Parse the command line and run :func:`main` in the processes it asks for."""
    args = default_argument_parser().parse_args(argv)
    check_launch(args.num_gpus, args.num_machines)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
