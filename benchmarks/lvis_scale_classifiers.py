"""LVIS v1 at full scale on a CPU: a 1203-category simulation of the classification stage.

Trains and evaluates the box head's last fc layer and the box classifier on simulated ROI
features at LVIS v1's real category profile, for every registered two-stage
classifier, RFS variants and the decoupled second stages (cRT, LWS, tau-norm), then writes
a table and the per-category gradient-ratio / weight-norm figures ([EQLv2] Fig. 1-3,
[BAGS] Fig. 1).

Categories: the 1203 LVIS v1 categories with their training image / instance counts and
r/c/f labels (``datasets/lvis_v1_train_category_counts.json``) as a ``CategoryStats``.

Generative model (fixed; the same for every method). Category c has a unit prototype
mu_c = sqrt(rho) g_k + sqrt(1 - rho) u_c, g_k the direction of its cluster k (categories
fall into ``clusters`` random clusters, so siblings are confusable) and u_c its own random
direction. An instance's ROI feature is m (mu_c + sigma z / sqrt(D)), z ~ N(0, I_D), m the
``feature_scale``. A background ROI is m (beta mu_k + sigma z / sqrt(D)) with
beta ~ U(0, beta_max) and k one of the image's categories (a proposal that partly covers an
object). The training set has LVIS's
100,170 images; category c is placed in ``image_count[c]`` images drawn at random, with
1 + Poisson(instance_count[c] / image_count[c] - 1) instances per image. Each instance yields
``rois_per_instance`` foreground ROIs; an image contributes ``rois_per_image`` ROIs of which
at most ``fg_fraction`` are foreground (sampled at random), as detectron2's ROI sampler does.
Training batches draw images with detectron2's ``TrainingSampler`` (uniform over images, so
categories in proportion to LVIS's image counts), its ``RepeatFactorTrainingSampler`` (RFS,
t = 0.001) or lt_d2's ``ClassBalancedTrainingSampler`` (cRT / LWS).

Training: a box head (one fc layer of ``head_dim`` units + ReLU, the last fc layer of
detectron2's 2fc head) and the final layer of an ``LTBoxPredictor`` on top of it (N(0, 0.01)
weights, the classifier's bias init) learn, through ``Classifier.losses`` with
``GradientStats`` watching the logits; SGD with momentum, warm-up and step decay, the same
for every run. The decoupled second stages freeze the first stage's box head.

Evaluation: a generated LVIS v1-format validation json (1203 categories, every category in
``val_images_per_category`` images, each category verified absent in
``val_neg_images_per_category`` others through ``neg_category_ids``), one ROI per ground
truth (its box's sides moved by up to ``val_jitter`` of its size) plus background ROIs that
overlap no object; the predictor's own detectron2 inference
(``FastRCNNOutputLayers.inference``: score threshold 1e-4, per-class NMS, 300 detections per
image) feeds ``LTLVISEvaluator`` (lvis-api): AP, APr, APc, APf, AP1..AP4.

    python -m benchmarks.lvis_scale_classifiers --out output/lvis_scale [--quick]

(run from the repository root). Writes ``results.md`` / ``results.json`` (the table),
``grad_ratio.png`` / ``weight_norm.png`` (one panel per run) and, per run,
``<run>/balance/iter_*.npz`` (readable by ``python -m lt_d2.evaluation.plot_balance``).
Runs that fail are reported in the table and the others go on.
"""

import argparse
import functools
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances, pairwise_iou

from lt_d2.classifiers import CLASSIFIER_REGISTRY, build_classifier
from lt_d2.config import add_lt_config
from lt_d2.data import CategoryStats, register_lvis_format
from lt_d2.data.samplers import ClassBalancedTrainingSampler
from lt_d2.engine.hooks import classifier_weight_norms
from lt_d2.evaluation.balance import (
    BalanceDump,
    group_means,
    plot_sorted_curves,
    plt,
    save_balance_dump,
)
from lt_d2.evaluation.lvis_evaluation import LVIS_MAX_DETS, LTLVISEvaluator
from lt_d2.modeling.roi_heads.box_predictor import LTBoxPredictor
from lt_d2.modeling.roi_heads.decoupled import freeze_all_but_classifier

logger = logging.getLogger("lvis_scale_classifiers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS_JSON = os.path.join(REPO, "datasets", "lvis_v1_train_category_counts.json")
IMAGE_SIZE = (480, 640)  # (height, width) of every simulated image
# LVIS's repeat-factor threshold t (Gupta et al. 2019, appendix; detectron2 LVIS configs).
RFS_THRESHOLD = 0.001
# The first stage the decoupled variants start from ([EQLv2] Table 1 (e)-(g): softmax).
DECOUPLE_BASE = "SoftmaxCE"
# EQL's tail threshold for LVIS v1 ([EQLv2] sec. 4.5; configs/eqlv2/eql_*_lvis_v1.yaml).
EQL_LAMBDA_LVIS_V1 = 0.0011
# tau of the tau-normalised classifier (Kang et al. 2020; configs/eqlv2/tau_norm_*.yaml).
TAU = 1.0


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulation (one setting for all methods). The defaults are the
    calibrated point (docs/simulation.md): chosen on SoftmaxCE and SigmoidBCE alone against
    [EQLv2] Table 1 (a) and (b), then frozen."""

    dim: int = 64  # D, ROI feature dimension
    clusters: int = 64  # clusters of confusable categories
    rho: float = 0.5  # squared cosine share of a prototype along its cluster direction
    sigma: float = 2.5  # noise norm relative to the unit prototype
    feature_scale: float = 10.0  # every ROI feature times this (the features' norm)
    head_dim: int = 256  # width of the trained fc + ReLU box head (0: the classifier alone)
    beta_max: float = 0.6  # background ROIs carry up to this fraction of an object's prototype
    rois_per_image: int = 16  # sampled ROIs per training image
    fg_fraction: float = 0.25  # detectron2's ROI_HEADS.POSITIVE_FRACTION
    rois_per_instance: int = 2  # foreground proposals per object before sampling
    images_per_batch: int = 32
    steps: int = 37564  # 12 epochs of LVIS v1 train (100,170 images): the 1x schedule
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 2.5e-5
    warmup: int = 100  # linear warm-up steps (factor 0.001 -> 1, as detectron2's)
    val_images_per_category: int = 1
    val_categories_per_image: int = 8
    val_neg_images_per_category: int = 4
    val_categories: int = 0  # 0: every category appears in the validation set
    val_bg_rois: int = 24  # background ROIs per validation image
    val_jitter: float = 0.18  # a validation ROI's sides move by up to this fraction of its size
    snapshots: int = 4  # balance dumps per run
    seed: int = 0


# --quick: every classifier and the evaluator at 1203 categories, in seconds.
QUICK = {"steps": 12, "warmup": 2, "dim": 32, "val_categories": 40, "snapshots": 2}


@dataclass(frozen=True)
class Variant:
    """One row of the table.

    name: the row's label (also its output sub-directory after sanitising).
    classifier: registered classifier name.
    sampler: "random" (TrainingSampler), "rfs" or "cbs" (class-balanced).
    decouple: "" (train from the start), "cRT", "LWS" or "tau" (on DECOUPLE_BASE's layer).
    """

    name: str
    classifier: str
    sampler: str = "random"
    decouple: str = ""


def variants(names: Sequence[str], rfs: Sequence[str], decoupled: bool = True) -> List[Variant]:
    """The rows for classifiers ``names``, their RFS variants ``rfs`` and, when ``decoupled``
    and DECOUPLE_BASE is among ``names``, the second stages on its layer."""
    rows = [Variant(n, n) for n in names]
    rows += [Variant(f"{n} + RFS", n, "rfs") for n in rfs]
    if decoupled and DECOUPLE_BASE in names:
        rows += [
            Variant(f"cRT ({DECOUPLE_BASE}, CBS)", DECOUPLE_BASE, "cbs", "cRT"),
            Variant(f"LWS ({DECOUPLE_BASE}, CBS)", DECOUPLE_BASE, "cbs", "LWS"),
            Variant(f"tau-norm ({DECOUPLE_BASE}, tau={TAU:g})", DECOUPLE_BASE, "random", "tau"),
        ]
    return rows


# ------------------------------------------------------------------------- the data
class LVISProfile:
    """LVIS v1's categories placed on a simulated training set of its size.

    image_categories(i): the categories annotated in training image i (each category c in
    exactly ``image_count[c]`` images, drawn without replacement).
    """

    def __init__(self, stats: CategoryStats, rng: np.random.Generator):
        self.stats = stats
        counts = stats.image_count_array
        pairs_cat = np.repeat(np.arange(stats.num_classes), counts)
        pairs_img = np.concatenate(
            [rng.choice(stats.num_images, size=int(n), replace=False) for n in counts]
        )
        order = np.argsort(pairs_img, kind="stable")
        self._flat = pairs_cat[order]
        self._starts = np.searchsorted(pairs_img[order], np.arange(stats.num_images + 1))
        # mean instances per image containing c, >= 1
        self.instances_per_image = stats.instance_count_array / np.maximum(counts, 1)

    def image_categories(self, i: int) -> np.ndarray:
        return self._flat[self._starts[i] : self._starts[i + 1]]

    def batch_categories(self, images: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """(B,) number of categories of each image and their concatenation, image-major."""
        images = np.asarray(images, dtype=np.int64)
        starts = self._starts[images]
        num_cats = self._starts[images + 1] - starts
        return num_cats, self._flat[np.repeat(starts, num_cats) + _ranks(num_cats)]

    @functools.cached_property
    def dataset_dicts(self) -> List[dict]:
        """Minimal detectron2 dataset dicts (one annotation per category of an image): what
        RepeatFactorTrainingSampler's and ClassBalancedTrainingSampler's constructors read
        (both use only the set of categories per image)."""
        return [
            {"annotations": [{"category_id": int(c)} for c in self.image_categories(i)]}
            for i in range(self.stats.num_images)
        ]


class GenerativeModel:
    """The fixed prototype + noise model of ROI features (see the module docstring)."""

    def __init__(self, num_classes: int, cfg: SimConfig, rng: np.random.Generator):
        def unit(n: int) -> np.ndarray:
            v = rng.standard_normal((n, cfg.dim))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        cluster_of = rng.integers(cfg.clusters, size=num_classes)
        protos = np.sqrt(cfg.rho) * unit(cfg.clusters)[cluster_of]
        protos += np.sqrt(1 - cfg.rho) * unit(num_classes)
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        self.prototypes = protos.astype(np.float32)
        self.cfg = cfg

    def features(
        self, categories: np.ndarray, strength: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """(N,) categories and (N,) prototype strengths (1 for an object, beta for a
        background ROI) -> (N, D) float32 features."""
        noise = rng.standard_normal((len(categories), self.cfg.dim), dtype=np.float32)
        noise *= np.float32(self.cfg.sigma / np.sqrt(self.cfg.dim))
        noise += strength[:, None].astype(np.float32) * self.prototypes[categories]
        noise *= np.float32(self.cfg.feature_scale)
        return noise


def _instances(profile: LVISProfile, cats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n,) categories of the objects of one image: 1 + Poisson(mean - 1) per category."""
    extra = rng.poisson(np.maximum(profile.instances_per_image[cats] - 1, 0))
    return np.repeat(cats, 1 + extra)


def training_batch(
    profile: LVISProfile,
    model: GenerativeModel,
    images: Sequence[int],
    cfg: SimConfig,
    rng: np.random.Generator,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(R, D) ROI features and (R,) labels in [0, C] (C = background) of ``images``, image by
    image (``rois_per_image`` rows each, foreground first).

    Per image: its objects (1 + Poisson(mean - 1) per annotated category), each repeated
    ``rois_per_instance`` times; a uniformly random subset of at most ``fg_fraction`` of the
    ROIs is foreground; the rest are background ROIs of a uniformly chosen annotated category
    with strength U(0, beta_max) (pure noise in an image without objects). Drawn for the
    whole batch at once (no per-image Python loop).
    """
    num_classes = profile.stats.num_classes
    per_image, max_fg = cfg.rois_per_image, int(cfg.rois_per_image * cfg.fg_fraction)
    num_cats, pair_cat = profile.batch_categories(images)
    pair_image = np.repeat(np.arange(len(images)), num_cats)
    extra = rng.poisson(np.maximum(profile.instances_per_image[pair_cat] - 1, 0))
    copies = (1 + extra) * cfg.rois_per_instance
    fg_image, fg_cat = np.repeat(pair_image, copies), np.repeat(pair_cat, copies)
    # a random subset of at most max_fg object ROIs per image: rank by a random key
    order = np.lexsort((rng.random(len(fg_cat)), fg_image))
    fg_image, fg_cat = fg_image[order], fg_cat[order]
    fg_total = np.bincount(fg_image, minlength=len(images))
    keep = _ranks(fg_total) < max_fg
    fg_image, fg_cat = fg_image[keep], fg_cat[keep]
    num_fg = np.minimum(fg_total, max_fg)
    # background ROIs: a uniformly chosen annotated category of the image
    num_bg = per_image - num_fg
    bg_image = np.repeat(np.arange(len(images)), num_bg)
    has_cats = num_cats[bg_image] > 0
    pick = (rng.random(len(bg_image)) * num_cats[bg_image]).astype(np.int64)
    first = (np.cumsum(num_cats) - num_cats)[bg_image]
    bg_cat = np.where(has_cats, pair_cat[np.minimum(first + pick, len(pair_cat) - 1)], 0)
    bg_strength = np.where(has_cats, rng.uniform(0, cfg.beta_max, len(bg_image)), 0.0)
    # image-major rows: each image's foreground, then its background
    row_image = np.concatenate([fg_image, bg_image])
    row_is_bg = np.concatenate([np.zeros(len(fg_image), bool), np.ones(len(bg_image), bool)])
    rows = np.lexsort((row_is_bg, row_image))
    cats = np.concatenate([fg_cat, bg_cat])[rows]
    strength = np.concatenate([np.ones(len(fg_cat)), bg_strength])[rows]
    labels = np.where(row_is_bg[rows], num_classes, cats)
    feats = model.features(cats, strength, rng)
    return torch.from_numpy(feats), torch.from_numpy(labels.astype(np.int64))


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """0, 1, ..., n_k - 1 for each group size n_k, concatenated."""
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.arange(int(sizes.sum())) - offsets


@dataclass
class ValidationSet:
    """Validation ROIs with boxes, and the LVIS-format json describing their ground truth."""

    json_file: str
    proposals: List[Instances]  # per image: proposal_boxes, image_size
    features: List[torch.Tensor]  # per image: (Ri, D)
    image_ids: List[int]


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4) XYXY boxes inside the image, sides 24..200 pixels."""
    h, w = IMAGE_SIZE
    size = rng.uniform(24, 200, size=(n, 2))
    x0 = rng.uniform(0, w - size[:, 0])
    y0 = rng.uniform(0, h - size[:, 1])
    return np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], axis=1)


def _jitter(rng: np.random.Generator, boxes: np.ndarray, fraction: float) -> np.ndarray:
    """Shift each side by U(-fraction, fraction) of the box's size (the proposal's
    localisation error; the draws do not depend on ``fraction``)."""
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return boxes + rng.uniform(-1.0, 1.0, size=boxes.shape) * fraction * wh


def _background_boxes(rng: np.random.Generator, gt: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) boxes whose IoU with every ground-truth box is below 0.3 (where they can be
    found among 20n candidates; fewer otherwise)."""
    candidates = _random_boxes(rng, 20 * n)
    if len(gt):
        iou = pairwise_iou(Boxes(torch.as_tensor(candidates)), Boxes(torch.as_tensor(gt)))
        candidates = candidates[(iou.max(dim=1).values < 0.3).numpy()]
    return candidates[:n]


def build_validation(
    profile: LVISProfile, model: GenerativeModel, cfg: SimConfig, out_dir: str
) -> ValidationSet:
    """Generate the validation images, their ROIs and the LVIS v1-format json."""
    stats = profile.stats
    rng = np.random.default_rng(cfg.seed + 1)
    num_classes = stats.num_classes
    shown = np.arange(num_classes)
    if cfg.val_categories:
        shown = np.sort(rng.choice(num_classes, size=cfg.val_categories, replace=False))
    # every shown category in val_images_per_category images, ~val_categories_per_image each
    slots = rng.permutation(np.repeat(shown, cfg.val_images_per_category))
    num_images = max(1, int(np.ceil(len(slots) / cfg.val_categories_per_image)))
    image_cats = [np.unique(part) for part in np.array_split(slots, num_images)]
    present = np.zeros((num_images, num_classes), dtype=bool)
    for i, cats in enumerate(image_cats):
        present[i, cats] = True
    negatives: List[List[int]] = [[] for _ in range(num_images)]
    for c in shown:
        absent = np.flatnonzero(~present[:, c])
        size = min(len(absent), cfg.val_neg_images_per_category)
        for i in rng.choice(absent, size=size, replace=False):
            negatives[i].append(int(c) + 1)
    images, annotations, proposals, features = [], [], [], []
    for i, cats in enumerate(image_cats):
        image_id = i + 1
        objects = _instances(profile, cats, rng)
        objects = np.concatenate([objects[objects == c][:3] for c in cats])  # <= 3 each
        gt = _random_boxes(rng, len(objects))
        for c, box in zip(objects, gt):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
        bg = _background_boxes(rng, gt, cfg.val_bg_rois)
        boxes = np.concatenate([_jitter(rng, gt, cfg.val_jitter), bg])
        cats_roi = np.concatenate([objects, rng.choice(cats, size=len(bg))])
        strength = np.concatenate([np.ones(len(gt)), rng.uniform(0, cfg.beta_max, len(bg))])
        features.append(torch.from_numpy(model.features(cats_roi, strength, rng)))
        inst = Instances(IMAGE_SIZE)
        inst.proposal_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        proposals.append(inst)
        images.append(
            {
                "id": image_id,
                "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg",
                "height": IMAGE_SIZE[0],
                "width": IMAGE_SIZE[1],
                "neg_category_ids": sorted(negatives[i]),
                "not_exhaustive_category_ids": [],
            }
        )
    names = stats.names if stats.names is not None else [f"c{c}" for c in range(num_classes)]
    categories = [
        {
            "id": c + 1,
            "name": names[c],
            "frequency": str(stats.frequency_labels[c]),
            "image_count": int(stats.image_count_array[c]),
            "instance_count": int(stats.instance_count_array[c]),
        }
        for c in range(num_classes)
    ]
    json_file = os.path.join(out_dir, "lvis_sim_v1_val.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ValidationSet(json_file, proposals, features, [im["id"] for im in images])


# ------------------------------------------------------------------------- training
def _cfg(classifier: str):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.CLASSIFIER.NAME = classifier
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = EQL_LAMBDA_LVIS_V1
    return cfg


def build_predictor(
    classifier: str, stats: CategoryStats, cfg: SimConfig, lws: bool = False
) -> LTBoxPredictor:
    """An LTBoxPredictor on D-dim features with class-agnostic box regression frozen at zero
    (predicted boxes = proposal boxes) and LVIS's test settings."""
    clf = build_classifier(_cfg(classifier), stats.num_classes, stats)
    predictor = LTBoxPredictor(
        ShapeSpec(channels=cfg.head_dim or cfg.dim),
        classifier=clf,
        logit_scale=lws,
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=stats.num_classes,
        test_score_thresh=1e-4,  # LVIS configs' ROI_HEADS.SCORE_THRESH_TEST
        test_nms_thresh=0.5,
        test_topk_per_image=LVIS_MAX_DETS,
        cls_agnostic_bbox_reg=True,
    )
    torch.nn.init.zeros_(predictor.bbox_pred.weight)
    torch.nn.init.zeros_(predictor.bbox_pred.bias)
    predictor.bbox_pred.requires_grad_(False)
    # the box head's last fc layer (fc7 of detectron2's 2fc head), trained with the classifier
    # and frozen with it by the decoupled second stages; Identity when head_dim is 0
    predictor.box_head = (
        torch.nn.Sequential(torch.nn.Linear(cfg.dim, cfg.head_dim), torch.nn.ReLU())
        if cfg.head_dim
        else torch.nn.Identity()
    )
    return predictor


def predict(predictor: LTBoxPredictor, feats: torch.Tensor):
    """The predictor's outputs on (R, D) ROI features, through its box head."""
    return predictor(predictor.box_head(feats))


def image_stream(profile: LVISProfile, sampler: str, seed: int) -> Iterator[int]:
    n = profile.stats.num_images
    if sampler == "random":
        return iter(TrainingSampler(n, shuffle=True, seed=seed))
    dicts = profile.dataset_dicts
    if sampler == "rfs":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, RFS_THRESHOLD
        )
        return iter(RepeatFactorTrainingSampler(factors, shuffle=True, seed=seed))
    if sampler == "cbs":
        return iter(ClassBalancedTrainingSampler(dicts, shuffle=True, seed=seed))
    raise ValueError(f"unknown sampler '{sampler}'; use random, rfs or cbs")


def _lr_factor(step: int, cfg: SimConfig) -> float:
    """detectron2's WarmupMultiStepLR shape: linear warm-up from 0.001, then x0.1 at 2/3 and
    at 8/9 of training (the 1x schedule's decays at epochs 8 and ~11 of 12)."""
    warm = 1.0 if step >= cfg.warmup else 0.001 + (1 - 0.001) * step / cfg.warmup
    decay = 0.1 ** sum(step >= int(cfg.steps * f) for f in (2 / 3, 8 / 9))
    return warm * decay


def weight_norms(predictor: LTBoxPredictor) -> np.ndarray:
    """(C,) norm of each category's effective classifier row: lt_d2's
    ``classifier_weight_norms``, tau-normalised as at inference when tau_norm > 0 (|w| /
    |w|^tau), times the row's LWS scale when present."""
    norms = classifier_weight_norms(predictor)
    if predictor.tau_norm > 0:
        norms = norms / np.maximum(norms, 1e-12) ** predictor.tau_norm
    if predictor.logit_scale is not None:
        columns = predictor.classifier.logit_columns()
        norms = norms * predictor.logit_scale.detach().abs()[columns].numpy()
    return norms


def _dump(predictor: LTBoxPredictor, step: int, stats: CategoryStats, run_dir: str) -> Dict:
    balance = predictor.gradient_balance()
    arrays = {
        "pos": balance.pos.numpy(),
        "neg": balance.neg.numpy(),
        "ratio": balance.ratio.numpy(),
        "weight_norm": weight_norms(predictor),
    }
    for name, value in predictor.classifier.balance_weights().items():
        arrays[f"weight_{name}"] = value.detach().float().numpy()
    dump = BalanceDump(step, stats.instance_count_array, stats.frequency_labels, ["sim"], [arrays])
    save_balance_dump(os.path.join(run_dir, "balance", f"iter_{step:07d}.npz"), dump)
    return arrays


def train(
    predictor: LTBoxPredictor,
    params: List[torch.nn.Parameter],
    profile: LVISProfile,
    model: GenerativeModel,
    sampler: str,
    cfg: SimConfig,
    run_dir: str,
) -> Dict:
    """Train ``params`` for cfg.steps steps; returns the last balance arrays."""
    rng = np.random.default_rng(cfg.seed + 2)
    stream = image_stream(profile, sampler, cfg.seed + 3)
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    dump_at = set(np.linspace(0, cfg.steps, cfg.snapshots + 1).round().astype(int)[1:].tolist())
    predictor.train()
    arrays: Dict = {}
    for step in range(1, cfg.steps + 1):
        images = [next(stream) for _ in range(cfg.images_per_batch)]
        feats, labels = training_batch(profile, model, images, cfg, rng)
        logits, _ = predict(predictor, feats)
        logits = predictor.gradient_stats.observe(logits, labels)
        loss = sum(predictor.classifier.losses(logits, labels).values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step in dump_at:
            arrays = _dump(predictor, step, profile.stats, run_dir)
            logger.info("step %d/%d, loss %.4f", step, cfg.steps, float(loss))
    return arrays


def detect(
    predictor: LTBoxPredictor, feats: torch.Tensor, proposals: Instances, preselect: int = 1000
) -> Instances:
    """detectron2's ``fast_rcnn_inference_single_image`` (score threshold, per-class NMS, top
    ``test_topk_per_image``) on one image's ROIs, with the same result computed faster.

    Greedy per-class NMS decides on a detection from the higher-scoring detections of its
    class alone, so running it on the ``preselect`` highest (ROI, class) scores (the others
    zeroed, i.e. dropped by the threshold) keeps exactly the survivors of the full run that
    lie among them. When at least ``test_topk_per_image`` survive, the kept top ones are
    therefore the full run's; otherwise it is re-run on every score. (With 1203 classes the
    full run's per-class NMS loop dominates the benchmark's time otherwise.)
    """
    predictions = predict(predictor, feats)
    boxes = predictor.predict_boxes(predictions, [proposals])[0]
    scores = predictor.predict_probs(predictions, [proposals])[0]
    args = (proposals.image_size, predictor.test_score_thresh, predictor.test_nms_thresh)
    topk = predictor.test_topk_per_image
    fg = scores[:, :-1].flatten()
    if fg.numel() > preselect:
        keep = torch.zeros_like(fg).index_fill_(0, fg.topk(preselect).indices, 1.0)
        kept = torch.cat([(fg * keep).view(len(scores), -1), scores[:, -1:]], dim=1)
        instances, _ = fast_rcnn_inference_single_image(boxes, kept, *args, topk)
        if len(instances) >= topk:
            return instances
    return fast_rcnn_inference_single_image(boxes, scores, *args, topk)[0]


def evaluate(
    predictor: LTBoxPredictor, val: ValidationSet, dataset: str, stats: CategoryStats
) -> Dict[str, float]:
    """detectron2 inference of every validation image, then LTLVISEvaluator (lvis-api)."""
    predictor.eval()
    # no output_dir: the evaluator would write every detection as json (most of its time)
    evaluator = LTLVISEvaluator(dataset, ("bbox",), distributed=False, category_stats=stats)
    evaluator.reset()
    with torch.no_grad():
        for image_id, feats, proposals in zip(val.image_ids, val.features, val.proposals):
            instances = detect(predictor, feats, proposals)
            evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return dict(evaluator.evaluate()["bbox"])


# ------------------------------------------------------------------------- one run
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def run_variant(
    variant: Variant,
    ctx: Dict,
    base_state: Optional[Dict[str, torch.Tensor]],
) -> Tuple[Dict, LTBoxPredictor]:
    cfg, stats = ctx["cfg"], ctx["stats"]
    run_dir = os.path.join(ctx["out"], _slug(variant.name))
    os.makedirs(run_dir, exist_ok=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    predictor = build_predictor(variant.classifier, stats, cfg, lws=variant.decouple == "LWS")
    if variant.decouple:
        if base_state is None:
            raise RuntimeError(f"{variant.name} needs the {DECOUPLE_BASE} run first")
        predictor.load_state_dict(base_state, strict=False)
    if variant.decouple == "tau":
        predictor.tau_norm = TAU
        arrays = _dump(predictor, 0, stats, run_dir)  # the first stage's gradients
    else:
        if variant.decouple in ("cRT", "LWS"):
            holder = torch.nn.Module()
            holder.predictor = predictor
            freeze_all_but_classifier(holder, variant.decouple)
            if variant.decouple == "cRT":
                predictor.reset_classifier()
            predictor.gradient_stats.reset()  # the second stage's own gradients
            params = [p for p in predictor.parameters() if p.requires_grad]
        else:
            params = [*predictor.cls_score.parameters(), *predictor.box_head.parameters()]
        arrays = train(
            predictor, params, ctx["profile"], ctx["model"], variant.sampler, cfg, run_dir
        )
    train_s = time.perf_counter() - start
    torch.save(predictor.state_dict(), os.path.join(run_dir, "model_final.pth"))
    metrics = evaluate(predictor, ctx["val"], ctx["dataset"], stats)
    freq = stats.frequency_labels
    row = {
        "run": variant.name,
        **asdict(variant),
        **{k: metrics.get(k, float("nan")) for k in ("AP", "AP50", "APr", "APc", "APf")},
        **{f"AP{b}": metrics.get(f"AP{b}", float("nan")) for b in range(1, 5)},
        **{f"ratio_{g}": v for g, v in group_means(arrays["ratio"], freq).items()},
        **{f"wnorm_{g}": v for g, v in group_means(arrays["weight_norm"], freq).items()},
        "train_s": train_s,
        "total_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - start_cpu,
    }
    return {"row": row, "arrays": arrays}, predictor


# ------------------------------------------------------------------------- output
_COLUMNS = (
    ("run", "run", "{}"),
    ("AP", "AP", "{:.1f}"),
    ("APr", "APr", "{:.1f}"),
    ("APc", "APc", "{:.1f}"),
    ("APf", "APf", "{:.1f}"),
    ("AP1", "AP1", "{:.1f}"),
    ("AP2", "AP2", "{:.1f}"),
    ("AP3", "AP3", "{:.1f}"),
    ("AP4", "AP4", "{:.1f}"),
    ("ratio_r", "ratio r", "{:.3f}"),
    ("ratio_c", "ratio c", "{:.3f}"),
    ("ratio_f", "ratio f", "{:.3f}"),
    ("wnorm_r", "|w| r", "{:.2f}"),
    ("wnorm_c", "|w| c", "{:.2f}"),
    ("wnorm_f", "|w| f", "{:.2f}"),
    ("cpu_s", "CPU s", "{:.0f}"),
)


def markdown_table(rows: List[Dict]) -> str:
    lines = [
        "| " + " | ".join(h for _, h, _ in _COLUMNS) + " |",
        "|" + "|".join("---" if k == "run" else "--:" for k, _, _ in _COLUMNS) + "|",
    ]
    for row in rows:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _smoothed(values: np.ndarray, order: np.ndarray, width: int) -> np.ndarray:
    """Running mean of ``values`` along ``order`` (categories sorted by frequency), returned
    in category order."""
    sorted_values = values[order].astype(np.float64)
    width = max(1, min(width, len(order)))
    kernel = np.ones(width) / width
    padded = np.pad(sorted_values, (width // 2, width - 1 - width // 2), mode="edge")
    out = np.empty_like(sorted_values)
    out[order] = np.convolve(padded, kernel, mode="valid")
    return out


def write_figures(results: List[Dict], stats: CategoryStats, out: str) -> List[str]:
    """grad_ratio.png and weight_norm.png: one panel per run, categories sorted by training
    instances (frequent -> rare), raw values and a 51-category running mean."""
    order = stats.order_by_instances()
    counts = stats.instance_count_array
    written = []
    for key, ylabel, name in (
        ("ratio", "accumulated pos/neg gradient ratio", "grad_ratio.png"),
        ("weight_norm", "classifier weight norm", "weight_norm.png"),
    ):
        cols = 4
        rows = int(np.ceil(len(results) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False)
        for ax, result in zip(axes.flat, results):
            values = np.asarray(result["arrays"][key], dtype=np.float64)
            series = {"per category": values, "running mean": _smoothed(values, order, 51)}
            plot_sorted_curves(ax, series, counts, "")
            ax.set_title(result["row"]["run"], fontsize=8)
            ax.set_xlabel("")
            ax.tick_params(labelsize=6)
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        for ax in list(axes.flat)[len(results) :]:
            ax.axis("off")
        fig.suptitle(f"{ylabel}; x: 1203 categories sorted by training instances", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, dpi=70)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------- main
def prepare(out: str, cfg: SimConfig) -> Dict:
    """The categories, the simulated training set and generative model, and the validation
    set registered as an LVIS-format dataset: the context every run shares."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(cfg.seed)
    stats = CategoryStats.from_lvis_json(COUNTS_JSON)
    rng = np.random.default_rng(cfg.seed)
    profile = LVISProfile(stats, rng)
    model = GenerativeModel(stats.num_classes, cfg, rng)
    val = build_validation(profile, model, cfg, out)
    dataset = f"lvis_sim_v1_val_{_slug(os.path.abspath(out))}"
    register_lvis_format(dataset, val.json_file, out)
    ctx = {"cfg": cfg, "stats": stats, "profile": profile, "model": model, "val": val}
    ctx.update(dataset=dataset, out=out)
    return ctx


def run(
    out: str,
    cfg: SimConfig,
    names: Optional[Sequence[str]] = None,
    rfs: Sequence[str] = ("SoftmaxCE", "SigmoidBCE"),
    decoupled: bool = True,
) -> Dict:
    """The whole benchmark; returns {"rows": [...], "failures": {...}, "figures": [...]}."""
    t0, t0_cpu = time.perf_counter(), time.process_time()
    ctx = prepare(out, cfg)
    registered = sorted(name for name, _ in CLASSIFIER_REGISTRY)
    names = registered if names is None else list(names)
    unknown = sorted(set(names) - set(registered))
    if unknown:
        raise ValueError(f"unknown classifiers {unknown}; registered: {registered}")
    # the decoupled base first, so its layer is there for cRT / LWS / tau-norm
    names = sorted(names, key=lambda n: (n != DECOUPLE_BASE, n))
    stats = ctx["stats"]
    logger.info("setup (data, validation json) %.1f s", time.perf_counter() - t0)
    results, failures = [], {}
    base_state = None
    for variant in variants(names, [n for n in rfs if n in names], decoupled):
        try:
            result, predictor = run_variant(variant, ctx, base_state)
        except Exception as e:  # report the failure and go on with the other methods
            logger.exception("%s failed", variant.name)
            failures[variant.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        if variant.name == DECOUPLE_BASE:
            base_state = {k: v.clone() for k, v in predictor.state_dict().items()}
        results.append(result)
        logger.info("%s: %s", variant.name, json.dumps(result["row"]))
        _write_table(out, cfg, stats, results, failures, [], t0, t0_cpu)  # rows so far
    figures = write_figures(results, stats, out) if results else []
    return _write_table(out, cfg, stats, results, failures, figures, t0, t0_cpu)


def _write_table(out, cfg, stats, results, failures, figures, t0, t0_cpu) -> Dict:
    """results.json and results.md; returns the summary."""
    rows = [r["row"] for r in results]
    summary = {
        "config": asdict(cfg),
        "rows": rows,
        "failures": failures,
        "figures": figures,
        "total_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - t0_cpu,
        "epochs": cfg.steps * cfg.images_per_batch / stats.num_images,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = markdown_table(rows)
    if failures:
        text += "\n\nFailed: " + "; ".join(f"{k}: {v}" for k, v in failures.items())
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/lvis_scale_classifiers")
    parser.add_argument("--quick", action="store_true", help="a few steps, a small val set")
    parser.add_argument("--names", nargs="*", help="only these classifiers (default: all)")
    parser.add_argument("--rfs", nargs="*", default=["SoftmaxCE", "SigmoidBCE"])
    parser.add_argument("--steps", type=int, help="override the number of training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = SimConfig(seed=args.seed)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.steps:
        cfg = replace(cfg, steps=args.steps)
    summary = run(args.out, cfg, args.names, args.rfs)
    print(markdown_table(summary["rows"]))
    print(
        f"total {summary['total_s']:.0f} s wall, {summary['cpu_s']:.0f} s CPU, "
        f"{summary['epochs']:.2f} epochs of LVIS v1 train"
    )
    for name, error in summary["failures"].items():
        print(f"FAILED {name}: {error}")
    return summary


if __name__ == "__main__":
    main()
