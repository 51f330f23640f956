"""``tools/predict.py``'s whole job as one call: models -> TTA -> WBF -> P(abnormal) -> 2-class filter -> CSVs.

:func:`run_predict` loads the configs and checkpoints, predicts every input image with every model and
TTA view (:mod:`detx.inference.predictor`), fuses them with WBF (:mod:`detx.inference.ensemble`), scores
each image's P(abnormal) (a rule, a fitted classifier JSON or an external CSV), writes the submission
(class ``len(classes)`` entry ``p 0 0 1 1`` with p = 1 - P(abnormal) in every row, after the 2-class
filter) and ``classification.csv``, and optionally overlays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.config import CfgNode

from detx.core.classes import SPINEXR_CLASSES, VINDR_CXR_CLASSES
from detx.core.classification_csv import write_classification_csv
from detx.core.errors import InputError
from detx.core.image_scores import RULES, class_max_scores
from detx.core.io import write_png
from detx.core.predictions import Predictions, no_finding_entry
from detx.core.submission import write_submission
from detx.engine.config import get_detx_cfg, num_classes_key
from detx.engine.config import num_classes as model_num_classes
from detx.inference.classifier import ImageClassifier, apply_nofinding_filter, read_probability_csv
from detx.inference.ensemble import CONF_TYPES, ensemble_predictions
from detx.inference.predictor import (
    BatchedClassifier,
    BatchedPredictor,
    InputSet,
    collect_inputs,
    load_image,
    predict_all,
)
from detx.inference.tta import parse_tta
from detx.viz.overlay import draw_overlay

logger = logging.getLogger(__name__)


#: the image classifier's operating point for the ``label`` column (its P(abnormal) is what drives the submission)
CNN_THRESHOLD = 0.5


@dataclass
class PredictOptions:
    """What ``tools/predict.py`` takes (see its ``--help`` for each option)."""

    config_files: list[str]
    weights: list[str]
    input: str
    out: str | None
    opts: list[str] = field(default_factory=list)
    batch_size: int = 4
    tta: list[str] = field(default_factory=list)
    model_weights: list[float] | None = None
    ensemble_iou: float = 0.55
    ensemble_skip: float = 0.0
    conf_type: str = "avg"
    max_dets: int | None = None
    classifier: str | None = None
    rule: str = "max"
    classifier_csv: str | None = None
    nofinding_low: float = 0.0
    nofinding_high: float | None = None
    classification_out: str | None = None
    vis_dir: str | None = None
    vis_num: int = 16
    vis_score: float = 0.3
    dicom_size: int | None = None
    num_workers: int | None = None
    amp: bool = True
    strict: bool = False
    progress: bool = True
    cache_dir: str | None = None
    classifier_configs: list[str] = field(default_factory=list)
    classifier_weights: list[str] = field(default_factory=list)
    score_scaling: bool = False


def class_names_for(num_classes: int, from_input: tuple[str, ...] | None) -> tuple[str, ...]:
    """Class names of a model with ``num_classes`` finding classes (the input JSON's, else the known datasets')."""
    if from_input is not None and len(from_input) == num_classes:
        return tuple(from_input)
    for classes in (VINDR_CXR_CLASSES, SPINEXR_CLASSES):
        if len(classes) == num_classes:
            return classes
    return tuple(f"class_{k}" for k in range(num_classes))


def _load_cfgs(config_files: list[str], weights: list[str], opts: list[str], what: str = "--config-file",
               weights_flag: str = "--weights") -> list[CfgNode]:
    n = len(weights)
    if not n:
        raise InputError(f"give at least one {weights_flag} file")
    if len(config_files) not in (1, n):
        raise InputError(f"give one {what} for all weights or one per weights file; got "
                         f"{len(config_files)} configs for {n} weights")
    files = config_files * n if len(config_files) == 1 else config_files
    cfgs = [get_detx_cfg(f, opts) for f in files]
    counts = {model_num_classes(c) for c in cfgs}
    if len(counts) != 1:
        raise InputError(f"the configs disagree on the number of classes ({', '.join(num_classes_key(c) for c in cfgs)}):"
                         f" {sorted(counts)}")
    return cfgs


def decode_size(cfgs: Sequence[CfgNode], requested: int | None, inputs: InputSet) -> int:
    """The longest side DICOMs are decoded to: ``requested`` (``--dicom-size``), else the size the model was
    trained on (``DETX.IMAGE_SIZE``, recorded from the prepared dataset), else, for a config that does not
    record one, the test resize's longest side. Warns when the models, the request or a prepared input
    disagree with it, since a model fed images at another scale than it learnt loses accuracy silently."""
    trained = sorted({int(c.DETX.IMAGE_SIZE) for c in cfgs if int(c.DETX.IMAGE_SIZE) > 0})
    if len(trained) > 1:
        logger.warning("the models were trained on images of different sizes %s; DICOMs are decoded once, at %d",
                       trained, requested or trained[0])
    if requested:
        if trained and requested != trained[0]:
            logger.warning("--dicom-size %d but the model was trained on %d px images (DETX.IMAGE_SIZE)",
                           requested, trained[0])
        size = int(requested)
    elif trained:
        size = trained[0]
    else:
        size = int(max(cfgs[0].INPUT.MAX_SIZE_TEST, cfgs[0].INPUT.MIN_SIZE_TEST))
        logger.warning("the config records no DETX.IMAGE_SIZE (trained before detx recorded it?): DICOMs are "
                       "decoded to %d px (INPUT.MAX_SIZE_TEST); pass --dicom-size to choose", size)
    if inputs.size is not None and trained and inputs.size != trained[0]:
        logger.warning("input %s was prepared at --size %d but the model was trained on %d px images",
                       inputs.source, inputs.size, trained[0])
    return size


def _check_options(o: PredictOptions) -> None:
    if o.conf_type not in CONF_TYPES:
        raise InputError(f"--conf-type {o.conf_type!r}: expected one of {CONF_TYPES}")
    if o.rule not in RULES:
        raise InputError(f"--rule {o.rule!r}: expected one of {RULES}")
    if o.classifier and o.classifier_csv:
        raise InputError("give --classifier or --classifier-csv, not both")
    high = o.nofinding_low if o.nofinding_high is None else o.nofinding_high
    if not 0.0 <= o.nofinding_low <= high <= 1.0:
        raise InputError(f"--nofinding-low/--nofinding-high need 0 <= low <= high <= 1, got {o.nofinding_low}, {high}")
    if o.model_weights is not None and len(o.model_weights) != len(o.weights):
        raise InputError(f"{len(o.model_weights)} --model-weights for {len(o.weights)} --weights")
    if bool(o.weights) != bool(o.config_files):
        raise InputError("a detector needs both --config-file and --weights")
    if bool(o.classifier_weights) != bool(o.classifier_configs):
        raise InputError("an image classifier needs both --classifier-config and --classifier-weights")
    if not o.weights and not o.classifier_weights:
        raise InputError("nothing to predict with: give a detector (--config-file, --weights), an image classifier "
                         "(--classifier-config, --classifier-weights) or both")
    if o.classifier_weights and (o.classifier or o.classifier_csv):
        raise InputError("one source of P(abnormal): --classifier-config/--classifier-weights, --classifier or "
                         "--classifier-csv, not several")
    if o.score_scaling and not (o.weights and o.classifier_weights):
        raise InputError("--score-scaling multiplies a detector's box confidences by an image classifier's class "
                         "probabilities: it needs both")
    if not o.weights and not o.classification_out:
        raise InputError("without a detector only the classification CSV is written: give --classification-out")
    if o.weights and not o.out:
        raise InputError("give --out, the submission CSV to write")


def run_predict(options: PredictOptions) -> dict[str, Any]:
    """Predict, fuse, classify and write the submission, ``classification.csv`` and overlays.

    Detectors (``config_files``/``weights``) give the boxes, fused with WBF over models and views. P(abnormal) of
    each image comes from the image classifiers when given (``classifier_configs``/``classifier_weights``, their
    probabilities averaged over checkpoints and views), else from ``classifier`` (a fitted JSON),
    ``classifier_csv`` or the ``rule`` on the detections; it gives the No-finding entry and drives the 2-class
    filter. With ``score_scaling`` each box's confidence is multiplied by the classifiers' probability of its class.
    Without a detector only the classification CSV is written.

    Returns:
        A summary: ``num_images``, ``failed`` (image_id -> reason), ``out`` (None without a detector),
        ``classification``, ``sets`` (the detector/view names fused), ``classifiers`` (how many), ``vis``.

    Raises:
        DetxError (InputError, PredictionInputError, CheckpointError, ...): bad input, named in the message;
        nothing is written then. UnreadableImageError in strict mode.
    """
    _check_options(options)
    det_cfgs = _load_cfgs(options.config_files, options.weights, options.opts) if options.weights else []
    cls_cfgs = _load_cfgs(options.classifier_configs, options.classifier_weights, options.opts,
                          "--classifier-config", "--classifier-weights") if options.classifier_weights else []
    cls_k = model_num_classes(cls_cfgs[0]) if cls_cfgs else 0
    cls_labels = list(cls_cfgs[0].MODEL.CLASSIFIER.IMAGE_LABELS) if cls_cfgs else []
    num_classes = model_num_classes(det_cfgs[0]) if det_cfgs else (0 if cls_labels else cls_k)
    if det_cfgs and cls_k and not cls_labels and cls_k != num_classes:
        raise InputError(f"the image classifier has {cls_k} class outputs (MODEL.CLASSIFIER.NUM_CLASSES) but the "
                         f"detector {num_classes} classes ({num_classes_key(det_cfgs[0])})")
    if options.score_scaling and (not cls_k or cls_labels):
        raise InputError("--score-scaling needs an image classifier with one output per class "
                         "(MODEL.CLASSIFIER.NUM_CLASSES > 0); this one only predicts normal/abnormal")
    nf_id = num_classes
    inputs = collect_inputs(options.input)
    if inputs.classes is not None and num_classes and len(inputs.classes) != num_classes:
        key = num_classes_key(det_cfgs[0] if det_cfgs else cls_cfgs[0])
        raise InputError(f"input {inputs.source} has {len(inputs.classes)} classes but the config {key} is "
                         f"{num_classes}")
    classes = class_names_for(num_classes, inputs.classes)
    image_ids = [r.image_id for r in inputs.images]

    external = read_probability_csv(options.classifier_csv, image_ids) if options.classifier_csv else None
    clf = ImageClassifier(kind=options.rule, num_classes=max(num_classes, 1))
    if options.classifier:
        clf = ImageClassifier.load(options.classifier)
        if clf.num_classes != num_classes:
            raise InputError(f"classifier {options.classifier} was fitted for {clf.num_classes} classes, the model "
                             f"has {num_classes}")

    predictors = [BatchedPredictor(cfg, w, amp=options.amp) for cfg, w in zip(det_cfgs, options.weights)]
    cnns = [BatchedClassifier(cfg, w, amp=options.amp) for cfg, w in zip(cls_cfgs, options.classifier_weights)]
    views = parse_tta(options.tta)
    cfg = (det_cfgs or cls_cfgs)[0]
    dicom_size = decode_size(det_cfgs + cls_cfgs, options.dicom_size, inputs)
    workers = cfg.DATALOADER.NUM_WORKERS if options.num_workers is None else options.num_workers
    run = predict_all(predictors, inputs.images, views, options.batch_size, options.model_weights, dicom_size,
                      workers, options.strict, options.progress, options.cache_dir, classifiers=cnns)
    cnn = run.cls_probs()
    fused: dict[str, Predictions] = {}
    if predictors:
        max_dets = options.max_dets or int(cfg.TEST.DETECTIONS_PER_IMAGE)
        if len(run.sets) == 1:
            fused = {i: p.select(np.argsort(-p.scores, kind="stable")[:max_dets]) for i, p in run.sets[0].items()}
        else:
            logger.info("fusing %d prediction sets with WBF (iou %.2f, skip %.3f, %s): %s", len(run.sets),
                        options.ensemble_iou, options.ensemble_skip, options.conf_type, ", ".join(run.names))
            fused = ensemble_predictions(run.sets, run.orig_sizes, run.set_weights, options.ensemble_iou,
                                         options.ensemble_skip, options.conf_type, max_dets)
        if options.score_scaling:
            fused = {i: scale_scores(p, cnn[i]) for i, p in fused.items()}

    ok_ids = [i for i in image_ids if i not in run.failures]
    threshold = clf.threshold
    if cnns:
        p_abn = {i: float(cnn[i][0]) for i in ok_ids}
        threshold = CNN_THRESHOLD
    elif external is not None:
        p_abn = {i: external[i] for i in ok_ids}
    else:
        p_abn = dict(zip(ok_ids, clf.predict_proba([fused[i] for i in ok_ids]).tolist()))
    if predictors:
        rows: dict[str, Predictions] = {}
        for i in image_ids:
            if i in run.failures:
                rows[i] = no_finding_entry(1.0, nf_id)
            else:
                rows[i] = apply_nofinding_filter(fused[i], p_abn[i], nf_id, options.nofinding_low,
                                                 options.nofinding_high)
        write_submission(options.out, rows)
    cls_path = Path(options.classification_out or Path(options.out).parent / "classification.csv")
    per_class = {i: cnn[i][1:] for i in ok_ids} if cls_k else \
        {i: class_max_scores(fused[i], num_classes) for i in ok_ids} if predictors else {}
    columns = cls_labels[:cls_k] if cls_labels else classes
    write_classification_csv(cls_path, image_ids, p_abn, per_class, columns if per_class else (), threshold,
                             run.failures)
    vis = []
    if options.vis_dir and predictors:
        vis = write_overlays(options.vis_dir, inputs, fused, classes, run.failures, options.vis_num,
                             options.vis_score, dicom_size)
    if run.failures:
        logger.warning("%d of %d image(s) could not be read and were written as '%d 1 0 0 1 1': %s",
                       len(run.failures), len(image_ids), nf_id, list(run.failures)[:5])
    return {"num_images": len(image_ids), "failed": dict(run.failures),
            "out": str(options.out) if predictors else None, "classification": str(cls_path), "sets": run.names,
            "classifiers": len(cnns), "vis": [str(v) for v in vis]}


def scale_scores(pred: Predictions, probs: np.ndarray) -> Predictions:
    """Score scaling by an image classifier (the VinBigData 3rd place): each box's confidence times the
    classifier's probability that the image has the box's class, ``s' = s * P(class c | image)`` with
    ``P = probs[1 + c]``; entries of other classes (No finding) are unchanged."""
    k = len(probs) - 1
    factor = np.ones(len(pred), np.float64)
    own = (pred.classes >= 0) & (pred.classes < k)
    factor[own] = np.asarray(probs, np.float64)[1 + pred.classes[own]]
    return Predictions(pred.boxes, pred.scores * factor, pred.classes)


def write_overlays(
    out_dir: str | os.PathLike,
    inputs: InputSet,
    preds: Mapping[str, Predictions],
    classes: Sequence[str],
    failed: Mapping[str, str] | None = None,
    num: int = 16,
    score_thr: float = 0.3,
    dicom_size: int = 1024,
) -> list[Path]:
    """Overlays ``<out_dir>/<image_id>.png`` for ``num`` images spread evenly over the input.

    Args:
        inputs: the input set (its ground truth is drawn when present).
        preds: image_id -> detections in original pixels.
    """
    failed = failed or {}
    records = [r for r in inputs.images if r.image_id not in failed and r.image_id in preds]
    if num <= 0 or not records:
        return []
    pick = np.unique(np.linspace(0, len(records) - 1, min(num, len(records))).round().astype(int))
    out_dir = Path(out_dir)
    written = []
    for k in pick:
        rec = records[int(k)]
        loaded = load_image(rec, "BGR", dicom_size)
        if loaded.error is not None:
            logger.warning("overlay of %s skipped: %s", rec.image_id, loaded.error)
            continue
        gt = inputs.gt.get(rec.image_id) if inputs.gt is not None else None
        img = draw_overlay(loaded.image, preds[rec.image_id], classes, loaded.orig_size, gt, score_thr)
        path = out_dir / f"{rec.image_id.replace('/', '_')}.png"
        write_png(path, img)
        written.append(path)
    return written
