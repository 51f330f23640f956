"""detx's config keys (``DETX.*``) on top of detectron2's, and building a checked config from a yaml.

``get_detx_cfg(config_file, opts)`` is the one way every tool builds its config: detectron2's defaults,
then :func:`add_detx_config`, then the yaml (with ``_BASE_``), then ``KEY VALUE`` overrides. A key that
does not exist fails with :class:`ConfigKeyError` naming the closest valid key.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator, Sequence

from detectron2.config import CfgNode, get_cfg

from detx.core.classes import MURA_BODY_PARTS
from detx.core.errors import DetxError, InputError, MissingFileError

logger = logging.getLogger(__name__)


class ConfigKeyError(DetxError, KeyError):
    """A config key that neither detectron2 nor detx defines; the message names the closest valid key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def add_detx_config(cfg: CfgNode) -> None:
    """Add the ``DETX.*`` keys (with their defaults) to a detectron2 config, in place.

    Keys:
        DETX.DATA_ROOT: a prepared dataset (``datasets/prepare_*.py --out``); when set and
            ``DATASETS.TRAIN``/``DATASETS.TEST`` are empty, they become the fold's registered names.
        DETX.IMAGE_SIZE: the longest side of the prepared PNGs the model is trained on; filled from
            ``DETX.DATA_ROOT`` by training (0: unknown), written to ``OUTPUT_DIR/config.yaml`` with the rest,
            and the size ``tools/predict.py`` decodes DICOMs to.
        DETX.FOLD: the cross-validation fold trained on (``train_fold{k}``) and validated on
            (``val_fold{k}``); -1 trains on ``all`` with no validation.
        DETX.VAL_PERIOD: iterations between validation-loss passes over the whole validation fold;
            it also runs after the last iteration (0: only then, negative: never).
        DETX.BEST_METRIC: the metric ``model_best.pth`` follows (higher is better).
        DETX.BOX_MASKS: give annotations without a ``segmentation`` a box-shaped polygon mask
            (Mask R-CNN on box-only data).
        DETX.CURVES: write ``OUTPUT_DIR/curves.png`` (train vs validation loss and mAP) at the end.
        DETX.EVAL.IOU_THR: IoU threshold of the challenge metric (VinBigData: 0.4).
        DETX.AUG.*: training augmentation (albumentations), applied before detectron2's resize;
            probabilities of 0 switch a transform off, ``DETX.AUG.ENABLED False`` all of them.
    """
    cfg.DETX = CfgNode()
    cfg.DETX.DATA_ROOT = ""
    cfg.DETX.FOLD = 0
    cfg.DETX.IMAGE_SIZE = 0
    cfg.DETX.VAL_PERIOD = 0
    cfg.DETX.BEST_METRIC = "vinbigdata/mAP40"
    cfg.DETX.BOX_MASKS = False
    cfg.DETX.CURVES = True
    # stop taking training steps once the training process has used this much CPU time (seconds, user + system, from
    # the first step; 0 = no limit): the remaining iterations are skipped, the final evaluation and checkpoints still
    # run. For comparing recipes at equal CPU cost (benchmarks/bench_classifier_recipes.py).
    cfg.DETX.CPU_BUDGET_S = 0.0

    cfg.DETX.EVAL = CfgNode()
    cfg.DETX.EVAL.IOU_THR = 0.4
    # bootstrap resamples for the classifier's 95% confidence intervals (0: none)
    cfg.DETX.EVAL.BOOTSTRAP = 1000

    # The image-level classifier (META_ARCHITECTURE "DetxClassifier"): a backbone from build_backbone, global
    # average pooling over the image (padding masked out), a linear head of one sigmoid per output.
    cfg.MODEL.CLASSIFIER = CfgNode()
    cfg.MODEL.CLASSIFIER.IN_FEATURE = "res5"  # the backbone output that is pooled
    # 0: normal/abnormal only; K > 0: also one output per finding class (multi-label, the dataset's K classes)
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 0
    # the targets of the class outputs: [] = the dataset's box classes (present when the image has a fused box of
    # it); a list of names = the image-level labels preparation recorded per image (PhysioNet VinDr-CXR's 22 local
    # and 6 global labels, ``image_labels`` in the COCO image entries); NUM_CLASSES must then be their count
    cfg.MODEL.CLASSIFIER.IMAGE_LABELS = []
    # BCE positive-class weight per output ("abnormal" first, then the classes); [] = 1 for all
    cfg.MODEL.CLASSIFIER.POS_WEIGHT = []
    cfg.MODEL.CLASSIFIER.DROPOUT = 0.0
    # how the feature map becomes one score per output: "avg" (global average pooling of the features, then the
    # head), or, with the linear head, the head applied at every cell of the map (a class activation map) pooled by
    # "max" or "lse" (log-sum-exp, (1/r) log mean exp(r s): r -> 0 is the average, r -> inf the maximum; Pinheiro &
    # Collobert CVPR 2015, Wang et al. ChestX-ray8 2017): a finding scores where it is, not diluted over the image,
    # and the map the score comes from is the localisation (docs/classifiers.md)
    cfg.MODEL.CLASSIFIER.POOL = "avg"
    cfg.MODEL.CLASSIFIER.LSE_R = 5.0
    # the head over the pooled feature: "linear" (one layer; checkpoint keys head.weight/bias), "mlgcn" (ML-GCN, Chen
    # et al. CVPR 2019: per-output classifiers from 2 graph convolutions over the training labels' co-occurrence
    # graph; detx/engine/mlgcn.py) or the name of a head registered in CLS_HEAD_REGISTRY (detx/engine/classifier.py)
    cfg.MODEL.CLASSIFIER.HEAD = "linear"
    cfg.MODEL.CLASSIFIER.MLGCN = CfgNode()
    cfg.MODEL.CLASSIFIER.MLGCN.TAU = 0.4  # binarize P(L_j | L_i) at tau
    cfg.MODEL.CLASSIFIER.MLGCN.P = 0.2  # re-weighting: neighbours share p, the node keeps 1 - p
    cfg.MODEL.CLASSIFIER.MLGCN.HIDDEN = 1024  # the first graph convolution's width
    cfg.MODEL.CLASSIFIER.MLGCN.EMBEDDINGS = ""  # .npy of (1 + K, D) label embeddings; "" = one-hot node features
    # MURA body parts (detx/engine/body_part.py): "" none; "parts" a softmax head over BODY_PARTS beside P(abnormal);
    # "joint" the 14-way model (BODY_PARTS x normal/abnormal), P(abnormal) its abnormal half. The part
    # probabilities follow the other outputs in cls_probs (p_part_<PART> in the classification CSV).
    cfg.MODEL.CLASSIFIER.BODY_PART_HEAD = ""
    cfg.MODEL.CLASSIFIER.BODY_PARTS = list(MURA_BODY_PARTS)
    # the training loss: "bce" (one sigmoid per output) or "supcon" (stage 1 of the two-stage recipe: the supervised
    # contrastive loss of Khosla et al. 2020 over two DETX.AUG views per image, on a projection head, with the
    # normal/abnormal label defining the positives; the linear head is trained beside it on detached features, an
    # online probe that gives cls/* metrics)
    cfg.MODEL.CLASSIFIER.LOSS = "bce"
    cfg.MODEL.CLASSIFIER.TEMPERATURE = 0.1  # SupCon temperature
    cfg.MODEL.CLASSIFIER.PROJ_HIDDEN = 256  # SupCon projection head: pooled -> PROJ_HIDDEN -> ReLU -> PROJ_DIM
    cfg.MODEL.CLASSIFIER.PROJ_DIM = 128
    # stage 2 / transfer learning: the backbone's parameters and batch-norm statistics stay as loaded (MODEL.WEIGHTS);
    # only the head learns
    cfg.MODEL.CLASSIFIER.FREEZE_BACKBONE = False
    # with FREEZE_BACKBONE: a file of the pooled backbone features of every training and validation image, computed
    # once (test-size resize, no augmentation) and reused by later runs; keyed by the backbone weights, the images'
    # files (path, size, mtime) and the preprocessing config; a file of another key is refused ("" = no cache)
    cfg.MODEL.CLASSIFIER.FEATURE_CACHE = ""
    # torchvision DenseNet backbones (BACKBONE.NAME "build_densenet_backbone"): depth 121/169/201 and an optional
    # ImageNet state dict the user downloaded (torchvision's densenet121-a639ec97.pth, ...)
    cfg.MODEL.DENSENET = CfgNode()
    cfg.MODEL.DENSENET.DEPTH = 121
    cfg.MODEL.DENSENET.WEIGHTS = ""
    # torchvision VGG backbones (BACKBONE.NAME "build_vgg_backbone"): depth 11/13/16/19, with batch norm or not, and an
    # optional ImageNet state dict the user downloaded (torchvision's vgg16-397923af.pth, ...)
    cfg.MODEL.VGG = CfgNode()
    cfg.MODEL.VGG.DEPTH = 16
    cfg.MODEL.VGG.BN = False
    cfg.MODEL.VGG.WEIGHTS = ""

    cfg.DETX.AUG = CfgNode()
    cfg.DETX.AUG.ENABLED = True
    cfg.DETX.AUG.HFLIP_PROB = 0.5
    cfg.DETX.AUG.VFLIP_PROB = 0.0
    # Affine (shift-scale-rotate): shift as a fraction of the image side, scale as +-fraction, degrees.
    cfg.DETX.AUG.AFFINE_PROB = 0.5
    cfg.DETX.AUG.SHIFT_LIMIT = 0.0625
    cfg.DETX.AUG.SCALE_LIMIT = 0.1
    cfg.DETX.AUG.ROTATE_LIMIT = 10.0
    cfg.DETX.AUG.BRIGHTNESS_CONTRAST_PROB = 0.5
    cfg.DETX.AUG.BRIGHTNESS_LIMIT = 0.2
    cfg.DETX.AUG.CONTRAST_LIMIT = 0.2
    cfg.DETX.AUG.CLAHE_PROB = 0.0
    cfg.DETX.AUG.CLAHE_CLIP_LIMIT = 2.0
    cfg.DETX.AUG.CLAHE_TILE_GRID = 8
    # A box keeping less than this fraction of its area inside the transformed image is dropped.
    cfg.DETX.AUG.MIN_VISIBILITY = 0.3


def _flat_keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    for k, v in node.items():
        full = f"{prefix}{k}"
        if isinstance(v, CfgNode):
            yield full
            yield from _flat_keys(v, full + ".")
        else:
            yield full


def closest_key(cfg: CfgNode, key: str) -> str | None:
    """The existing config key most similar to ``key`` (difflib), or None when nothing is close."""
    keys = list(_flat_keys(cfg))
    upper = {k.upper(): k for k in keys}
    if key.upper() in upper:  # a case slip
        return upper[key.upper()]
    best = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if best:
        return best[0]
    # same parent, similar leaf (e.g. DETX.AUG.HFLIP -> DETX.AUG.HFLIP_PROB)
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    best = difflib.get_close_matches(key, siblings, n=1, cutoff=0.4)
    if best:
        return best[0]
    return None


_MISSING = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _unknown_key_error(cfg: CfgNode, exc: BaseException, where: str) -> ConfigKeyError | None:
    m = _MISSING.search(str(exc))
    if m is None:
        return None
    key = m.group(1).strip("'\"")
    near = closest_key(cfg, key)
    hint = f"; did you mean {near}?" if near else ""
    return ConfigKeyError(f"unknown config key {key} in {where}{hint}")


def get_detx_cfg(config_file: str | None = None, opts: Sequence[str] | None = None,
                 freeze: bool = True) -> CfgNode:
    """Build detectron2's config with the detx keys, merged from a yaml and ``KEY VALUE`` overrides.

    A CUDA device that is not available falls back to the CPU (with AMP off), so the same config runs
    on a laptop and on a GPU server.

    Args:
        config_file: a yaml (may use ``_BASE_``); None gives the defaults.
        opts: a flat list ``[KEY, VALUE, KEY, VALUE, ...]`` as on detectron2's command line.
        freeze: freeze the result (tools mutate it only through ``opts``).

    Raises:
        ConfigKeyError: a key in the yaml or in ``opts`` does not exist (the closest valid key is named).
        MissingFileError: the yaml does not exist.
    """
    cfg = get_cfg()
    add_detx_config(cfg)
    if config_file:
        from pathlib import Path

        if not Path(config_file).is_file():
            raise MissingFileError(f"config file {config_file} does not exist")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError) as e:
            err = _unknown_key_error(cfg, e, config_file)
            if err is None:
                raise
            raise err from None
    if opts:
        opts = list(opts)
        if len(opts) % 2:
            raise InputError(f"config overrides must be KEY VALUE pairs, got an odd number: {opts}")
        opts = _floats_for_float_keys(cfg, opts)
        try:
            cfg.merge_from_list(opts)
        except (KeyError, AssertionError) as e:
            err = _unknown_key_error(cfg, e, "the command-line overrides")
            if err is None:
                raise
            raise err from None
    fit_device(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _floats_for_float_keys(cfg: CfgNode, opts: list) -> list:
    # yacs refuses "0" for a float key (int vs float); "DETX.AUG.HFLIP_PROB 0" should just work.
    out = list(opts)
    for i in range(0, len(out), 2):
        node: object = cfg
        for part in str(out[i]).split("."):
            node = node.get(part) if isinstance(node, CfgNode) else None
        if isinstance(node, float) and isinstance(out[i + 1], str) and re.fullmatch(r"[-+]?\d+", out[i + 1]):
            out[i + 1] += ".0"
    return out


def fit_device(cfg: CfgNode) -> None:
    """Run on the CPU when the config asks for CUDA but none is available; AMP only on CUDA (in place)."""
    import torch

    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        logger.info("CUDA is not available: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        logger.info("SOLVER.AMP.ENABLED needs CUDA: training in float32 on %s", cfg.MODEL.DEVICE)
        cfg.SOLVER.AMP.ENABLED = False
    if was_frozen:
        cfg.freeze()


#: the meta-architecture of detx's image-level classifier (detx/engine/classifier.py)
CLASSIFIER_ARCH = "DetxClassifier"


def is_classifier(cfg: CfgNode) -> bool:
    """Whether ``cfg`` builds the image-level classifier rather than a detector."""
    return cfg.MODEL.META_ARCHITECTURE == CLASSIFIER_ARCH


def num_classes_key(cfg: CfgNode) -> str:
    """The config key that holds a model's number of finding classes, by meta-architecture (the one place
    that knows it: training checks, checkpoints and prediction all ask here)."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES"
    if is_classifier(cfg):
        return "MODEL.CLASSIFIER.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def num_classes(cfg: CfgNode) -> int:
    """The model's number of finding classes ("No finding" excluded), read from :func:`num_classes_key`."""
    node: object = cfg
    for part in num_classes_key(cfg).split("."):
        node = node[part]
    return int(node)
