"""The training loop: detectron2's DefaultTrainer with lt_d2's data, evaluation and hooks."""

import logging
import os

import torch
from detectron2.config import get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator
from torch import nn

from lt_d2.classifiers import DenseClassifier
from lt_d2.compat import cpu_ddp_model_creation
from lt_d2.config import add_lt_config
from lt_d2.data import category_stats_from_cfg
from lt_d2.data.samplers import ClassBalancedTrainingSampler
from lt_d2.data.validation import check_image_files, check_test_datasets
from lt_d2.evaluation import build_lvis_evaluator, has_compiled_ops
from lt_d2.modeling.classifier_head import classifier_heads
from lt_d2.modeling.roi_heads.decoupled import box_predictors, freeze_all_but_classifier

from .checkpoint import LTCheckpointer
from .gradient_clipping import build_optimizer
from .hooks import NonFiniteStateHook, build_gradient_balance_hook

__all__ = ["LTTrainer", "check_config", "check_model"]

logger = logging.getLogger(__name__)


def check_config(cfg, eval_only: bool = False) -> None:
    """The checks train_net.py runs before building anything (``eval_only``: for
    ``--eval-only``). What needs the model is checked by :func:`check_model`."""
    _check_device(cfg)
    _check_decoupled_weights(cfg)
    if eval_only and not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "--eval-only evaluates the model given by MODEL.WEIGHTS, which is empty: append "
            "'MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth' to the command line"
        )


def check_model(cfg, model: nn.Module) -> None:
    """Checks of a built model against its config, asking the model's lt_d2 heads
    (:func:`~lt_d2.modeling.classifier_head.classifier_heads`): every head's class count
    must match every dataset's categories, and a classifier name that no head uses must be
    left at its default."""
    heads = classifier_heads(model)
    for _, head in heads:
        key, num_classes = head.num_classes_key, head.classifier.num_classes
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            classes = MetadataCatalog.get(name).get("thing_classes", None)
            if classes is not None and len(classes) != num_classes:
                raise ValueError(
                    f"{key} = {num_classes} but dataset '{name}' has {len(classes)} "
                    f"categories: set {key} {len(classes)} in the config (or on the command "
                    f"line)"
                )
    dense = {isinstance(head.classifier, DenseClassifier) for _, head in heads}
    defaults = get_cfg()
    add_lt_config(defaults)
    for node, other, used in (
        ("CLASSIFIER", "DENSE_CLASSIFIER", False in dense),
        ("DENSE_CLASSIFIER", "CLASSIFIER", True in dense),
    ):
        value, default = cfg.MODEL[node].NAME, defaults.MODEL[node].NAME
        if used or value == default:
            continue
        fix = (
            f"set MODEL.{other}.NAME instead (now '{cfg.MODEL[other].NAME}')"
            if heads
            else "the model has no lt_d2 head: use MODEL.ROI_HEADS.NAME LTStandardROIHeads / "
            "LTCascadeROIHeads or MODEL.META_ARCHITECTURE LTRetinaNet / ATSS"
        )
        raise ValueError(
            f"MODEL.{node}.NAME = '{value}' is ignored by the model "
            f"(MODEL.META_ARCHITECTURE '{cfg.MODEL.META_ARCHITECTURE}'): {fix}, and leave "
            f"MODEL.{node}.NAME at its default '{default}'"
        )


def _check_decoupled_weights(cfg) -> None:
    if cfg.MODEL.DECOUPLE.ENABLED and not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.DECOUPLE.ENABLED trains only the classifier of a first-stage model, but "
            "MODEL.WEIGHTS is empty: set MODEL.WEIGHTS to the first stage's model_final.pth "
            "(train the same config less MODEL.DECOUPLE first), e.g. append 'MODEL.WEIGHTS "
            "<stage-1 OUTPUT_DIR>/model_final.pth' to the command line"
        )


def _check_device(cfg) -> None:
    """Fail early, with the fix, when the config asks for a GPU this machine lacks."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but no GPU is available: append "
            f"'MODEL.DEVICE cpu' to the command line"
        )


class LTTrainer(DefaultTrainer):
    """DefaultTrainer plus the class-balanced sampler, the LVIS evaluator with frequency and
    instance-count bins, and lt_d2's diagnostics hooks."""

    def __init__(self, cfg):
        # a test set that cannot be evaluated fails now, not after the whole training
        check_test_datasets(cfg.DATASETS.TEST, cfg.DATASETS.TRAIN)
        # Several CPU processes (gloo) train one DistributedDataParallel model without device
        # ids (lt_d2.compat, difference 3); GPU jobs are wrapped as detectron2 does.
        with cpu_ddp_model_creation():
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's loader (TrainingSampler, RepeatFactorTrainingSampler) or lt_d2's
        ClassBalancedTrainingSampler, on dataset dicts loaded once and checked first: every
        image file must exist."""
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_image_files(dataset, cfg.DATASETS.TRAIN)
        sampler = None  # detectron2 builds the one DATALOADER.SAMPLER_TRAIN names
        if cfg.DATALOADER.SAMPLER_TRAIN == "ClassBalancedTrainingSampler":
            sampler = ClassBalancedTrainingSampler(
                dataset, seed=cfg.SEED if cfg.SEED >= 0 else None
            )
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "lvis":
            # the bins come from the training counts the json stores; the training set is
            # read only for a json without them
            return build_lvis_evaluator(
                cfg, dataset_name, output_folder, lambda: category_stats_from_cfg(cfg)
            )
        if evaluator_type == "coco":
            # The fast COCO evaluator needs detectron2's compiled operators.
            return COCOEvaluator(
                dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops()
            )
        raise NotImplementedError(
            f"dataset '{dataset_name}' has evaluator_type={evaluator_type!r}; lt_d2 evaluates "
            f"LVIS-format (register yours with lt_d2.data.register_lvis_format) and COCO-format "
            f"datasets"
        )

    def build_hooks(self):
        """detectron2's hooks plus the gradient-balance diagnostics, placed before the
        checkpointer (so that checkpoints hold every worker's synced statistics) and hence
        before the writers (so that what it logs is written at the same iteration)."""
        # detectron2 made its checkpointer before building the hooks: swap in lt_d2's (same
        # files, plus the classifier record) before the PeriodicCheckpointer captures it
        self.checkpointer = LTCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            allow_classifier_change=self.cfg.MODEL.DECOUPLE.ENABLED,
            require_frozen_weights=self.cfg.MODEL.DECOUPLE.ENABLED,
            **self.checkpointer.checkpointables,
        )
        hook_list = super().build_hooks()
        stats = category_stats_from_cfg(self.cfg)  # training: the training set is at hand
        balance = build_gradient_balance_hook(self.cfg, stats)
        if balance is not None:
            later = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
            first = [i for i, h in enumerate(hook_list) if isinstance(h, later)]
            hook_list.insert(first[0] if first else len(hook_list), balance)
        hook_list.append(
            NonFiniteStateHook(
                names=stats.names and list(stats.names), loss_scaled=self.cfg.SOLVER.AMP.ENABLED
            )
        )
        return hook_list

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's optimizer, plus SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model, checked against the config (:func:`check_model`), with all but
        the classifier frozen in a decoupled stage."""
        model = super().build_model(cfg)
        check_model(cfg, model)
        if cfg.MODEL.DECOUPLE.ENABLED:
            freeze_all_but_classifier(model, cfg.MODEL.DECOUPLE.MODE)
        return model

    def resume_or_load(self, resume: bool = True):
        """detectron2's resume/load; a decoupled cRT stage that starts from first-stage
        weights (not resuming its own checkpoint) then re-initialises the final layer."""
        resuming = resume and self.checkpointer.has_checkpoint()
        super().resume_or_load(resume=resume)
        if self.cfg.MODEL.DECOUPLE.ENABLED and self.cfg.MODEL.DECOUPLE.MODE == "cRT":
            if not resuming:
                for predictor in box_predictors(self.model):
                    predictor.reset_classifier()
                logger.info("cRT: re-initialised the box classifier's final layer")
