"""Every config key lt_d2 adds to detectron2's, with the papers' defaults.

Paper abbreviations: [EQLv2] Tan et al. 2021, [EFL] Li et al. 2022, [BAGS] Li et al. 2020,
[Libra] Pang et al. (journal version), [DropLoss] Hsieh et al. 2021.

Classifier sections, one rule for all: the keys of a classifier registered as ``FooBarCE``
live in ``MODEL.CLASSIFIER.FOO_BAR_CE`` (two-stage) or ``MODEL.DENSE_CLASSIFIER.FOO_BAR_CE``
(dense): its class name in upper snake case, a new word starting at each capital that follows
a lower-case letter and at each capitalised word (a capital and two or more lower-case
letters): ``EqualizedFocalLoss`` -> ``EQUALIZED_FOCAL_LOSS``, ``LGRSoftmaxCE`` ->
``LGR_SOFTMAX_CE``, ``EQLv2Softmax2C`` -> ``EQLV2_SOFTMAX2C``.

A classifier reads its own section and the sections of the registered classifiers it
subclasses, and no other: ``DropLoss(EQL(SigmoidBCE))`` reads ``DROP_LOSS``, ``EQL`` and
``SIGMOID_BCE``, so a key is set in one place for the whole family. A subclass that gives a
key another default has the key in its own section and does not read the base's
(``FEDERATED_SIGMOID_BCE.PRIOR``: CenterNet2's 0.01). A class without keys of its own
(``SoftmaxCE``, ``EQLv2Softmax2C``) has no section. tests/config/test_classifier_sections.py
checks the rule for every registered classifier.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_lt_config"]


def add_lt_config(cfg: CN) -> None:
    """Add lt_d2's keys to a detectron2 config in place (call before merging YAML files)."""
    _add_data_config(cfg)
    _add_classifier_config(cfg)
    _add_decoupled_config(cfg)
    _add_dense_config(cfg)
    _add_cascade_config(cfg)
    _add_libra_config(cfg)
    _add_diagnostics_config(cfg)


def _add_data_config(cfg: CN) -> None:
    # Directory for the JSON cache of category statistics ("" = OUTPUT_DIR).
    cfg.DATASETS.CATEGORY_STATS_CACHE_DIR = ""


def _add_classifier_config(cfg: CN) -> None:
    # Run every classifier's loss function (and GradientStats's reduction) under
    # torch.compile with dynamic shapes: fused C++ kernels on the CPU, Triton on a GPU, the
    # same numbers as eager. Compiling costs seconds per function on the first iteration;
    # where it is unavailable or fails, lt_d2 says why once and runs eagerly. False: eager.
    cfg.MODEL.COMPILE_LOSSES = True
    # Two-stage (ROI box head) classifier, by its name in CLASSIFIER_REGISTRY.
    cfg.MODEL.CLASSIFIER = CN()
    cfg.MODEL.CLASSIFIER.NAME = "SoftmaxCE"
    # -- sections of SigmoidBCE and its subclasses, LGRSoftmaxCE (see the module docstring)
    # SigmoidBCE: C-sigmoid classifiers [EQLv2] Table 1(b); also read by EQL, BackgroundEQL,
    # DropLoss and BucketedSigmoidBCE, which subclass it.
    cfg.MODEL.CLASSIFIER.SIGMOID_BCE = CN()
    # Prior probability every sigmoid starts at: fc-cls bias log(p / (1 - p)) ([EQLv2] sec.
    # 4.2: 0.001).
    cfg.MODEL.CLASSIFIER.SIGMOID_BCE.PRIOR = 0.001
    # EQL: equalization loss [DropLoss] eq. 2 (Tan et al. 2020); also read by its subclasses
    # BackgroundEQL and DropLoss.
    cfg.MODEL.CLASSIFIER.EQL = CN()
    # lambda: categories with training image frequency f_j < lambda are "tail" (T_lambda = 1).
    # 1.76e-3 for LVIS v0.5 (original EQL); [EQLv2] sec. 4.5 uses 1.1e-3 for LVIS v1.
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = 1.76e-3
    # The tail by LVIS frequency group instead of lambda: a subset of ["r", "c", "f"] (rare:
    # 1-10 training images, common: 11-100, frequent: > 100); [] uses LAMBDA. [DropLoss] eq. 7
    # names the tail "rare + common", ["r", "c"] (configs/droploss). A tail that holds no
    # category is refused (the method would be SigmoidBCE).
    cfg.MODEL.CLASSIFIER.EQL.TAIL_GROUPS = []
    # BackgroundEQL: background equalization loss [DropLoss] eq. 4.
    cfg.MODEL.CLASSIFIER.BACKGROUND_EQL = CN()
    # b: logarithm base of the background weight 1 - T min{-log_b p, 1} (Table 3: b = 4).
    cfg.MODEL.CLASSIFIER.BACKGROUND_EQL.B = 4.0
    # DropLoss: [DropLoss] eqs. 5-7.
    cfg.MODEL.CLASSIFIER.DROP_LOSS = CN()
    # False: frequent categories keep their background terms (the authors' code, whose numbers
    # the paper reports); True: drop them with mu = n_frequent / n_all as eq. 7 is printed.
    cfg.MODEL.CLASSIFIER.DROP_LOSS.FREQUENT_BERNOULLI = False
    # LGRSoftmaxCE: logarithmic gradient re-weighting of softmax CE [Libra] eqs. 15-19.
    cfg.MODEL.CLASSIFIER.LGR_SOFTMAX_CE = CN()
    # alpha of rho = alpha ln(b |p - t| + 1) / |p - t| (eq. 18; Table 7: 0.8).
    cfg.MODEL.CLASSIFIER.LGR_SOFTMAX_CE.ALPHA = 0.8
    # gamma: the gradient bound, fixing b by alpha ln(b + 1) = gamma (eq. 10; Table 7: 1.0).
    cfg.MODEL.CLASSIFIER.LGR_SOFTMAX_CE.GAMMA = 1.0
    # BucketedSigmoidBCE: bucketed class re-weighting of sigmoid BCE [Libra] eqs. 20-23.
    cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE = CN()
    # S: number of equal-width buckets of ln(frequency) (eq. 22; sec. 3.3.3: 10).
    cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE.S = 10
    # a: turning point of w = sigmoid((x - a) / t) (eq. 23; sec. 3.3.3: 0.5).
    cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE.A = 0.5
    # t: temperature of eq. 23 (sec. 3.3.3: 0.025).
    cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE.T = 0.025
    # Which "frequency" f_j of eq. 21: "image" (fraction of training images, LVIS's notion of
    # frequency) or "instance" (annotation count). The paper does not say; only ratios matter.
    cfg.MODEL.CLASSIFIER.BUCKETED_SIGMOID_BCE.FREQUENCY = "image"
    # FederatedSigmoidBCE: federated sigmoid loss (Zhou et al. 2021, CenterNet2; detectron2
    # main's USE_FED_LOSS): the BCE of each batch is kept on its ground-truth classes plus
    # classes drawn with probability proportional to image_count ^ FREQ_WEIGHT_POWER.
    cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE = CN()
    # Size of the class subset per batch, background label included (official: 50).
    cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.NUM_CLASSES = 50
    # Power of the training image count in the sampling weights (official: 0.5).
    cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.FREQ_WEIGHT_POWER = 0.5
    # Prior probability every sigmoid starts at (CenterNet2 ROI_BOX_HEAD.PRIOR_PROB: 0.01); read
    # instead of SIGMOID_BCE.PRIOR.
    cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.PRIOR = 0.01
    # -- sections of EQLv2 (and its subclass EQLv2Softmax2C), BAGS, Seesaw
    # EQLv2: EQL v2 [EQLv2]; also read by EQLv2Softmax2C (sec. 4.8), which subclasses it.
    cfg.MODEL.CLASSIFIER.EQLV2 = CN()
    # gamma of the mapping f(x) = 1 / (1 + exp(-gamma (x - mu))) (eq. 6; sec. 4.2: 12).
    cfg.MODEL.CLASSIFIER.EQLV2.GAMMA = 12.0
    # mu of the mapping function (eq. 6; sec. 4.2: 0.8).
    cfg.MODEL.CLASSIFIER.EQLV2.MU = 0.8
    # alpha: positive up-weighting q = 1 + alpha (1 - f(g)) (eq. 5; sec. 4.2: 4).
    cfg.MODEL.CLASSIFIER.EQLV2.ALPHA = 4.0
    # Prior probability of the fc-cls bias initialisation (sec. 4.2: 0.001).
    cfg.MODEL.CLASSIFIER.EQLV2.PRIOR = 0.001
    # BAGS: Balanced Group Softmax [BAGS].
    cfg.MODEL.CLASSIFIER.BAGS = CN()
    # Lower instance-count bounds s^l of the groups G1..GN (eq. 3; sec. 4.1: 0, 10, 100, 1000).
    cfg.MODEL.CLASSIFIER.BAGS.GROUP_BOUNDS = [0, 10, 100, 1000]
    # beta: sampled "others" per foreground ROI of a group (sec. 4.3: 8).
    cfg.MODEL.CLASSIFIER.BAGS.BETA = 8.0
    # Seesaw: seesaw loss (Wang et al. 2021; not one of the five papers).
    cfg.MODEL.CLASSIFIER.SEESAW = CN()
    # p: exponent of the mitigation factor min(1, (N_j / N_i)^p) (paper: 0.8).
    cfg.MODEL.CLASSIFIER.SEESAW.P = 0.8
    # q: exponent of the compensation factor max(1, (sigma_j / sigma_i)^q) (paper: 2.0).
    cfg.MODEL.CLASSIFIER.SEESAW.Q = 2.0
    # Lower bound of sigma_i in the compensation ratio (authors' released code: 0.01).
    cfg.MODEL.CLASSIFIER.SEESAW.EPS = 0.01


def _add_decoupled_config(cfg: CN) -> None:
    # Decoupled training, second stage ([EQLv2] Table 1 (e)-(g), [BAGS] sec. 4): start from a
    # first-stage checkpoint (MODEL.WEIGHTS) and train only the box classifier's final layer.
    cfg.MODEL.DECOUPLE = CN()
    cfg.MODEL.DECOUPLE.ENABLED = False
    # "cRT": re-initialise and train the final classification layer (Kang et al. 2020; also
    # BAGS's recipe, whose layer shape differs from the softmax one anyway); "LWS": keep it and
    # learn one scale per logit only.
    cfg.MODEL.DECOUPLE.MODE = "cRT"
    # tau-normalisation at inference: classifier weight rows w_j / ||w_j||^tau (Kang et al.
    # 2020); 0 disables it. Needs no training.
    cfg.MODEL.CLASSIFIER.TAU_NORM = 0.0


def _add_dense_config(cfg: CN) -> None:
    # One-stage (RetinaNet / ATSS) classifier, by its name in DENSE_CLASSIFIER_REGISTRY.
    cfg.MODEL.DENSE_CLASSIFIER = CN()
    cfg.MODEL.DENSE_CLASSIFIER.NAME = "FocalLoss"
    # -- sections of FocalLoss, EqualizedFocalLoss, EQLv2Focal
    # FocalLoss: sigmoid focal loss, the RetinaNet baseline ([EFL] eq. 1).
    cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS = CN()
    # alpha_t of positives (1 - alpha of negatives) (RetinaNet, [EFL] sec. 4.1: 0.25).
    cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.ALPHA = 0.25
    # Focusing parameter gamma of (1 - p_t)^gamma (RetinaNet, [EFL] sec. 4.1: 2).
    cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.GAMMA = 2.0
    # Prior probability of the classification bias initialisation (RetinaNet: 0.01).
    cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.PRIOR = 0.01
    # EqualizedFocalLoss: [EFL] eq. 4.
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS = CN()
    # alpha_t of positives (1 - alpha of negatives) ([EFL] sec. 4.1: 0.25).
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.ALPHA = 0.25
    # Category-agnostic focusing factor gamma_b (eq. 3; [EFL] sec. 4.1: 2).
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.GAMMA_B = 2.0
    # Scale s of the category-specific focusing factor s (1 - g_j) (eq. 3; sec. 4.1: 8).
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.SCALE = 8.0
    # Prior probability of the classification bias initialisation ([EFL] sec. 4.1: 0.001).
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.PRIOR = 0.001
    # The weighting factor gamma_j / gamma_b of eq. 4 (False: weight 1; [EFL] Table 3 "FF" only).
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.WEIGHTING_FACTOR = True
    # The category-specific focusing factor gamma_j of eq. 3 (False: gamma_b for every category,
    # the weight still gamma_j / gamma_b; [EFL] Table 3 "WF" only, sec. 4.3).
    cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.FOCUSING_FACTOR = True
    # EQLv2Focal: EQL v2 reweighting on focal loss ([EFL] Table 1, "EQLv2&Focal").
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL = CN()
    # Focal loss alpha_t of positives ([EFL] sec. 4.1: 0.25).
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL.ALPHA = 0.25
    # Focal loss focusing parameter gamma ([EFL] sec. 4.1: 2).
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL.GAMMA = 2.0
    # gamma of EQL v2's mapping f(x) = 1 / (1 + exp(-gamma (x - mu))) ([EQLv2] eq. 6: 12).
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL.EQLV2_GAMMA = 12.0
    # mu of EQL v2's mapping function ([EQLv2] eq. 6, sec. 4.1: 0.8).
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL.EQLV2_MU = 0.8
    # alpha of EQL v2's positive up-weighting q = 1 + alpha (1 - f(g)) ([EQLv2] eq. 5: 4).
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL.EQLV2_ALPHA = 4.0
    # Prior probability of the classification bias initialisation ([EFL], [EQLv2]: 0.001).
    cfg.MODEL.DENSE_CLASSIFIER.EQLV2_FOCAL.PRIOR = 0.001
    # -- keys of the ATSS meta-architecture and the RetinaNet integration
    # ATSS (META_ARCHITECTURE "ATSS"); anchors come from MODEL.ANCHOR_GENERATOR: [EFL] uses
    # octave scale {8} x stride (SIZES [[64], [128], [256], [512], [1024]], one aspect ratio),
    # {6, 8} in its improved baseline.
    cfg.MODEL.ATSS = CN()
    # Number of foreground categories (LVIS v1: 1203).
    cfg.MODEL.ATSS.NUM_CLASSES = 80
    # Backbone features the head runs on, highest resolution first.
    cfg.MODEL.ATSS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Candidates per GT and pyramid level, nearest by centre distance (ATSS: k=9; [EFL]
    # improved baseline with two anchor scales: 18).
    cfg.MODEL.ATSS.TOPK = 9
    # Localisation-quality branch: "centerness" (ATSS) or "iou" ([EFL] improved baseline:
    # predicts the IoU of the regressed box with its GT).
    cfg.MODEL.ATSS.QUALITY_BRANCH = "centerness"
    # 3x3 convs in each of the classification and box towers (ATSS: 4).
    cfg.MODEL.ATSS.NUM_CONVS = 4
    # Normalisation in the towers (ATSS: GroupNorm, 32 groups).
    cfg.MODEL.ATSS.NORM = "GN"
    # Weights (wx, wy, ww, wh) of the anchor-to-box delta encoding (ATSS: 10, 10, 5, 5).
    cfg.MODEL.ATSS.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Weight of the GIoU box loss (ATSS: 2.0; [EFL] official improved-baseline config: 1.0).
    # Weighted per anchor by the quality targets, normalised by their sum (centerness: ATSS;
    # IoU: the [EFL] official code).
    cfg.MODEL.ATSS.BOX_LOSS_WEIGHT = 2.0
    # Weight of the quality-branch BCE loss (ATSS: 1.0).
    cfg.MODEL.ATSS.QUALITY_LOSS_WEIGHT = 1.0
    # Anchors whose score is below this are dropped before NMS (ATSS: 0.05; [EFL]: 0).
    cfg.MODEL.ATSS.SCORE_THRESH_TEST = 0.05
    # Highest-scoring candidates kept per level before NMS (ATSS: 1000; [EFL] official
    # improved-baseline config: 6000).
    cfg.MODEL.ATSS.TOPK_CANDIDATES_TEST = 1000
    # Per-class NMS IoU threshold (ATSS: 0.6; [EFL] official improved-baseline config: 0.5).
    cfg.MODEL.ATSS.NMS_THRESH_TEST = 0.6


def _add_cascade_config(cfg: CN) -> None:
    # How LTCascadeROIHeads combines its stages' scores at inference: "logits" (average the
    # stages' logits, then the classifier's activation: the official EQL v2 and BAGS cascade
    # code, mmdetection's cascade test; the papers are silent) or "probs" (average the
    # stages' probabilities: detectron2's CascadeROIHeads).
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCORE_AVERAGING = "logits"


def _add_libra_config(cfg: CN) -> None:
    # -- keys of Libra R-CNN: IoU-balanced sampling, balanced feature pyramid, balanced L1
    # ROI-head proposal sampler: "Random" (detectron2's) or "IoUBalanced" ([Libra] sec. 3.1).
    cfg.MODEL.ROI_HEADS.SAMPLER = "Random"
    cfg.MODEL.ROI_HEADS.IOU_BALANCED = CN()
    # K, the number of equal IoU bins the negatives are drawn from ([Libra] eq. 2: K=3).
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS = 3
    # Lower end of the binned IoU interval; negatives below it only fill the remaining
    # quota at random ([Libra] bins the whole interval from IoU 0: 0.0).
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.FLOOR_THRESH = 0.0
    # Positive sampling: "none" (random), "per_gt" (equal per ground truth) or "per_class"
    # (equal per class, then per ground truth) ([Libra] sec. 3.1; "none" keeps detectron2's
    # random positives; Table 4's "Pos Balance" and the COCO configs/libra use "per_gt", the
    # LVIS ones "per_class", which sec. 3.1 prescribes under class imbalance).
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.POSITIVE_BALANCE = "none"
    # Balanced feature pyramid ([Libra] sec. 3.2), used by the backbones
    # build_resnet_bfp_backbone / build_retinanet_resnet_bfp_backbone.
    cfg.MODEL.BFP = CN()
    # FPN output the levels are integrated at (the C4-sized level: "p4").
    cfg.MODEL.BFP.REFINE_LEVEL = "p4"
    # Refinement of the integrated feature: "non_local" (embedded Gaussian, eq. 4; the
    # paper's default), "conv" (3x3 convolution) or "none" (integration only, Table 5).
    cfg.MODEL.BFP.REFINE_TYPE = "non_local"
    # Balanced L1 loss ([Libra] eqs. 8-10), also the parameters of LGR-L1's ratio rho
    # (eq. 13); selected by BBOX_REG_LOSS_TYPE = "balanced_l1" / "lgr_l1".
    cfg.MODEL.BALANCED_L1 = CN()
    # alpha: promotion of inlier gradients (0.5).
    cfg.MODEL.BALANCED_L1.ALPHA = 0.5
    # gamma: bound of outlier gradients (1.5).
    cfg.MODEL.BALANCED_L1.GAMMA = 1.5
    # Transition point |x| between inliers and outliers, in box-delta units (1.0; the official
    # Libra RetinaNet config: 0.11).
    cfg.MODEL.BALANCED_L1.BETA = 1.0
    # Balanced L1 at BETA != 1, where the paper states eq. 9 at beta = 1 only: "official" (the
    # authors' implementation, mmdetection's balanced_l1_loss) or "rescaled"
    # (beta * L_b(x / beta), continuous at |x| = beta). Equal at beta = 1.
    cfg.MODEL.BALANCED_L1.FORM = "official"


def _add_diagnostics_config(cfg: CN) -> None:
    # -- keys of GradientStats, its hook and the binned LVIS evaluator
    # Per-category positive/negative logit gradients ([EQLv2] eqs. 3-4, 9; Fig. 1/2), measured
    # by every head for any classifier (a tensor hook; no extra backward).
    cfg.MODEL.GRADIENT_STATS = CN()
    # Measure them (heads own a GradientStats); False for classifiers whose logits cannot be
    # attributed to categories.
    cfg.MODEL.GRADIENT_STATS.ENABLED = True
    # The GradientBalanceHook: logs ratios / weight norms to EventStorage and dumps arrays.
    cfg.DIAGNOSTICS = CN()
    # Iterations between syncs + logs + dumps (<OUTPUT_DIR>/balance/iter_*.npz); also runs at
    # the last iteration. 0 disables the hook. Choose a divisor of SOLVER.CHECKPOINT_PERIOD so
    # checkpoints hold every worker's share ([EQLv2] Fig. 2 plots a handful of points / run).
    cfg.DIAGNOSTICS.PERIOD = 1000
    # Instance-count bin bounds of the evaluation's AP1..AP4 ([BAGS] Table 1: 0, 10, 100, 1000).
    cfg.DIAGNOSTICS.INSTANCE_BINS = [0, 10, 100, 1000]
    # Fixed AP of the LVIS evaluator (Dave et al. 2021, "Evaluating large-vocabulary object
    # detectors: the devil is in the details"): AP of the top DETS_PER_CATEGORY detections of
    # each category over the whole set, no per-image limit, reported as bbox/AP-fixed,
    # APr-fixed, ... beside the standard AP. The detector must output enough detections: raise
    # TEST.DETECTIONS_PER_IMAGE and lower MODEL.ROI_HEADS.SCORE_THRESH_TEST (the standard AP
    # then still keeps each image's 300 best).
    cfg.TEST.FIXED_AP = CN()
    # Report Fixed AP too (off: the standard LVIS protocol only).
    cfg.TEST.FIXED_AP.ENABLED = False
    # K, detections kept per category (the paper and its code: 10000 for LVIS).
    cfg.TEST.FIXED_AP.DETS_PER_CATEGORY = 10000
