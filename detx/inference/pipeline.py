"""``tools/predict.py``'s whole job as one call: models -> TTA -> WBF -> P(abnormal) -> 2-class filter -> CSVs.

:func:`run_predict` loads the configs and checkpoints, predicts every input image with every model and
TTA view (:mod:`detx.inference.predictor`), fuses them with WBF (:mod:`detx.inference.ensemble`), scores
each image's P(abnormal) (a rule, a fitted classifier JSON or an external CSV), writes the submission
(class ``len(classes)`` entry ``p 0 0 1 1`` with p = 1 - P(abnormal) in every row, after the 2-class
filter) and ``classification.csv``, and optionally overlays.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detx.data.classes import SPINEXR_CLASSES, VINDR_CXR_CLASSES
from detx.data.submission import Predictions, write_submission
from detx.inference.classifier import (
    RULES,
    ImageClassifier,
    apply_nofinding_filter,
    class_max_scores,
    read_probability_csv,
)
from detx.inference.ensemble import CONF_TYPES, ensemble_predictions
from detx.inference.predictor import BatchedPredictor, collect_inputs, predict_all
from detx.inference.tta import parse_tta
from detx.utils.io import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """What ``tools/predict.py`` takes (see its ``--help`` for each option)."""

    config_files: list[str]
    weights: list[str]
    input: str
    out: str
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


def class_names_for(num_classes: int, from_input: tuple[str, ...] | None) -> tuple[str, ...]:
    """Class names of a model with ``num_classes`` finding classes (the input JSON's, else the known datasets')."""
    if from_input is not None and len(from_input) == num_classes:
        return tuple(from_input)
    for classes in (VINDR_CXR_CLASSES, SPINEXR_CLASSES):
        if len(classes) == num_classes:
            return classes
    return tuple(f"class_{k}" for k in range(num_classes))


def _load_cfgs(options: PredictOptions):
    from detx.engine.config import get_detx_cfg

    n = len(options.weights)
    if not n:
        raise ValueError("give at least one --weights file")
    if len(options.config_files) not in (1, n):
        raise ValueError(f"give one --config-file for all weights or one per weights file; got "
                         f"{len(options.config_files)} configs for {n} weights")
    files = options.config_files * n if len(options.config_files) == 1 else options.config_files
    cfgs = [get_detx_cfg(f, options.opts) for f in files]
    num_classes = {c.MODEL.ROI_HEADS.NUM_CLASSES for c in cfgs}
    if len(num_classes) != 1:
        raise ValueError(f"the configs disagree on MODEL.ROI_HEADS.NUM_CLASSES: {sorted(num_classes)}")
    formats = {c.INPUT.FORMAT for c in cfgs}
    if len(formats) != 1:
        raise ValueError(f"the configs disagree on INPUT.FORMAT: {sorted(formats)}")
    return cfgs


def _check_options(o: PredictOptions) -> None:
    if o.conf_type not in CONF_TYPES:
        raise ValueError(f"--conf-type {o.conf_type!r}: expected one of {CONF_TYPES}")
    if o.rule not in RULES:
        raise ValueError(f"--rule {o.rule!r}: expected one of {RULES}")
    if o.classifier and o.classifier_csv:
        raise ValueError("give --classifier or --classifier-csv, not both")
    high = o.nofinding_low if o.nofinding_high is None else o.nofinding_high
    if not 0.0 <= o.nofinding_low <= high <= 1.0:
        raise ValueError(f"--nofinding-low/--nofinding-high need 0 <= low <= high <= 1, got {o.nofinding_low}, {high}")
    if o.model_weights is not None and len(o.model_weights) != len(o.weights):
        raise ValueError(f"{len(o.model_weights)} --model-weights for {len(o.weights)} --weights")


def run_predict(options: PredictOptions) -> dict[str, Any]:
    """Predict, fuse, classify and write the submission, ``classification.csv`` and overlays.

    Returns:
        A summary: ``num_images``, ``failed`` (image_id -> reason), ``out``, ``classification``,
        ``sets`` (the model/view names fused), ``vis`` (overlay files).

    Raises:
        ValueError (its subclasses PredictionInputError, CheckpointError), FileNotFoundError: bad input,
        named in the message; nothing is written then.
    """
    _check_options(options)
    cfgs = _load_cfgs(options)
    num_classes = int(cfgs[0].MODEL.ROI_HEADS.NUM_CLASSES)
    nf_id = num_classes
    inputs = collect_inputs(options.input)
    if inputs.classes is not None and len(inputs.classes) != num_classes:
        raise ValueError(f"input {inputs.source} has {len(inputs.classes)} classes but the config "
                         f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}")
    classes = class_names_for(num_classes, inputs.classes)
    image_ids = [r.image_id for r in inputs.images]

    external = read_probability_csv(options.classifier_csv, image_ids) if options.classifier_csv else None
    clf = ImageClassifier(kind=options.rule, num_classes=num_classes)
    if options.classifier:
        clf = ImageClassifier.load(options.classifier)
        if clf.num_classes != num_classes:
            raise ValueError(f"classifier {options.classifier} was fitted for {clf.num_classes} classes, the model "
                             f"has {num_classes}")

    predictors = [BatchedPredictor(cfg, w, amp=options.amp) for cfg, w in zip(cfgs, options.weights)]
    views = parse_tta(options.tta)
    cfg = cfgs[0]
    dicom_size = options.dicom_size or max(cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    workers = cfg.DATALOADER.NUM_WORKERS if options.num_workers is None else options.num_workers
    run = predict_all(predictors, inputs.images, views, options.batch_size, options.model_weights, dicom_size,
                      workers, options.strict, options.progress, options.cache_dir)
    max_dets = options.max_dets or int(cfg.TEST.DETECTIONS_PER_IMAGE)
    if len(run.sets) == 1:
        fused = {i: p.select(np.argsort(-p.scores, kind="stable")[:max_dets]) for i, p in run.sets[0].items()}
    else:
        logger.info("fusing %d prediction sets with WBF (iou %.2f, skip %.3f, %s): %s", len(run.sets),
                    options.ensemble_iou, options.ensemble_skip, options.conf_type, ", ".join(run.names))
        fused = ensemble_predictions(run.sets, run.orig_sizes, run.set_weights, options.ensemble_iou,
                                     options.ensemble_skip, options.conf_type, max_dets)

    ok_ids = [i for i in image_ids if i not in run.failures]
    if external is not None:
        p_abn = {i: external[i] for i in ok_ids}
    else:
        p_abn = dict(zip(ok_ids, clf.predict_proba([fused[i] for i in ok_ids]).tolist()))
    rows: dict[str, Predictions] = {}
    whole = np.array([[0.0, 0.0, 1.0, 1.0]])
    for i in image_ids:
        if i in run.failures:
            rows[i] = Predictions(whole, [1.0], [nf_id])
        else:
            rows[i] = apply_nofinding_filter(fused[i], p_abn[i], nf_id, options.nofinding_low, options.nofinding_high)
    write_submission(options.out, rows)
    cls_path = Path(options.classification_out or Path(options.out).parent / "classification.csv")
    write_classification_csv(cls_path, image_ids, fused, p_abn, classes, clf.threshold, run.failures)
    vis = []
    if options.vis_dir:
        from detx.viz.overlay import write_overlays

        vis = write_overlays(options.vis_dir, inputs, fused, classes, run.failures, options.vis_num,
                             options.vis_score, dicom_size)
    if run.failures:
        logger.warning("%d of %d image(s) could not be read and were written as '%d 1 0 0 1 1': %s",
                       len(run.failures), len(image_ids), nf_id, list(run.failures)[:5])
    return {"num_images": len(image_ids), "failed": dict(run.failures), "out": str(options.out),
            "classification": str(cls_path), "sets": run.names, "vis": [str(v) for v in vis]}


def write_classification_csv(path: str | os.PathLike, image_ids: list[str], preds: dict[str, Predictions],
                             p_abnormal: dict[str, float], classes: tuple[str, ...], threshold: float,
                             failed: dict[str, str] | None = None) -> None:
    """``image_id, p_abnormal, label, <one column per class>`` (atomically).

    ``label`` is 1 (abnormal) when ``p_abnormal >= threshold``; the class columns hold the highest
    detection confidence of each class. Unreadable images get p_abnormal 0, label 0 and empty classes.
    """
    failed = failed or {}
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image_id", "p_abnormal", "label", *classes])
        for i in image_ids:
            if i in failed:
                w.writerow([i, 0.0, 0, *([""] * len(classes))])
                continue
            per_class = class_max_scores(preds[i], len(classes))
            p = p_abnormal[i]
            w.writerow([i, f"{p:.6g}", int(p >= threshold), *(f"{s:.6g}" for s in per_class)])
