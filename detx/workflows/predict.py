"""``tools/predict.py``'s whole job as one call: models -> TTA -> WBF -> P(abnormal) -> 2-class filter -> CSVs.

:func:`run_predict` loads the configs and checkpoints (or exported files, :mod:`detx.inference.exported`),
predicts every input image with every model and TTA view (:mod:`detx.inference.predictor`), fuses them with WBF
(:mod:`detx.inference.ensemble`), scores each image's P(abnormal) (a rule, a fitted classifier JSON or an external
CSV), writes the submission (class ``len(classes)`` entry ``p 0 0 1 1`` with p = 1 - P(abnormal) in every row,
after the 2-class filter) and ``classification.csv``, and optionally overlays. With several processes
(:class:`LaunchOptions`, detectron2's ``launch``) the images are shared out and gathered on the main process.
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
from detx.core.errors import DetxError, InputError
from detx.core.image_scores import RULES, class_max_scores
from detx.core.io import write_png
from detx.core.predictions import Predictions, no_finding_entry
from detx.core.submission import write_submission
from detx.engine.body_part import body_part_names
from detx.engine.checkpoint import check_checkpoint
from detx.engine.config import get_detx_cfg, num_classes_key
from detx.engine.config import num_classes as model_num_classes
from detx.inference.answer import ImageAnswer
from detx.inference.classifier import ImageClassifier, apply_nofinding_filter, read_probability_csv
from detx.inference.ensemble import CONF_TYPES, ensemble_predictions
from detx.inference.export import ExportedModelInfo, read_exported_info
from detx.inference.exported import ExportedClassifier, ExportedPredictor
from detx.inference.predictor import (
    BatchedClassifier,
    BatchedPredictor,
    ImageModel,
    InputSet,
    PredictionRun,
    collect_inputs,
    is_single_image,
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
    exported: list[str] = field(default_factory=list)
    png_frame: bool = False  # PNGs without a known original size: write their boxes in PNG pixels (marked)


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


def decode_size(cfgs: Sequence[CfgNode], requested: int | None, inputs: InputSet,
                exported: Sequence[ExportedModelInfo] = ()) -> int:
    """The longest side DICOMs are decoded to: ``requested`` (``--dicom-size``), else the size the model was
    trained on (``DETX.IMAGE_SIZE``, recorded from the prepared dataset; an exported file carries it as
    ``image_size``), else, for a config that does not record one, the test resize's longest side. Warns when the
    models, the request or a prepared input disagree with it, since a model fed images at another scale than it
    learnt loses accuracy silently."""
    trained = sorted({int(c.DETX.IMAGE_SIZE) for c in cfgs if int(c.DETX.IMAGE_SIZE) > 0}
                     | {int(i.image_size) for i in exported if int(i.image_size) > 0})
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
    elif cfgs:
        size = int(max(cfgs[0].INPUT.MAX_SIZE_TEST, cfgs[0].INPUT.MIN_SIZE_TEST))
        logger.warning("the config records no DETX.IMAGE_SIZE (trained before detx recorded it?): DICOMs are "
                       "decoded to %d px (INPUT.MAX_SIZE_TEST); pass --dicom-size to choose", size)
    else:
        size = int(max(exported[0].max_size_test, exported[0].min_size_test))
        logger.warning("the exported file records no image size (DETX.IMAGE_SIZE): DICOMs are decoded to %d px "
                       "(its MAX_SIZE_TEST); pass --dicom-size to choose", size)
    if inputs.size is not None and trained and inputs.size != trained[0]:
        logger.warning("input %s was prepared at --size %d but the model was trained on %d px images",
                       inputs.source, inputs.size, trained[0])
    return size


def unsized_pngs(inputs: InputSet) -> list[str]:
    """The PNG inputs whose original (DICOM) size is unknown: their boxes can only be given in PNG pixels."""
    return [r.image_id for r in inputs.images if r.kind == "png" and r.orig_width is None]


def check_png_frame(inputs: InputSet, png_frame: bool) -> None:
    """Refuse a detector run on PNGs of unknown original size unless ``png_frame`` (``--png-frame``) accepts boxes in
    PNG pixels: a submission must hold original-DICOM pixels, and a PNG of a prepared dataset is smaller."""
    unsized = unsized_pngs(inputs)
    if not unsized:
        return
    if not png_frame:
        raise InputError(
            f"input {inputs.source}: {len(unsized)} of {len(inputs.images)} PNG(s) have no original size (no meta.csv "
            f"beside the folder, or not listed in it; e.g. {unsized[0]}), so their boxes would be in PNG pixels, not "
            "the original DICOM's. Give the prepared images/ folder with its meta.csv (image_id, orig_width, "
            "orig_height), the prepared JSON or the DICOMs; or pass --png-frame to write boxes in PNG pixels")
    logger.warning("--png-frame: the boxes of %d PNG(s) without an original size are in PNG pixels (e.g. %s)",
                   len(unsized), unsized[0])


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
    if o.model_weights is not None and not o.exported and len(o.model_weights) != len(o.weights):
        raise InputError(f"{len(o.model_weights)} --model-weights for {len(o.weights)} --weights")
    if bool(o.weights) != bool(o.config_files):
        raise InputError("a detector needs both --config-file and --weights")
    if bool(o.classifier_weights) != bool(o.classifier_configs):
        raise InputError("an image classifier needs both --classifier-config and --classifier-weights")
    if not o.weights and not o.classifier_weights and not o.exported:
        raise InputError("nothing to predict with: give a detector (--config-file, --weights), an image classifier "
                         "(--classifier-config, --classifier-weights), exported files (--exported) or several")


def _check_models(o: PredictOptions, n_det: int, n_cls: int, single: bool = False) -> None:
    """The checks that depend on what the models are (an exported file's kind is known once its metadata is read).
    ``single``: one image, answered in a sentence; the CSVs are then optional."""
    if o.model_weights is not None and len(o.model_weights) != n_det:
        raise InputError(f"{len(o.model_weights)} --model-weights for {n_det} detectors (--weights, then the "
                         "exported detectors)")
    if not n_det and not n_cls:
        raise InputError("nothing to predict with")
    if n_cls and (o.classifier or o.classifier_csv):
        raise InputError("one source of P(abnormal): an image classifier (--classifier-config/--classifier-weights "
                         "or an exported one), --classifier or --classifier-csv, not several")
    if o.score_scaling and not (n_det and n_cls):
        raise InputError("--score-scaling multiplies a detector's box confidences by an image classifier's class "
                         "probabilities: it needs both")
    if single:
        return
    if not n_det and not o.classification_out:
        raise InputError("without a detector only the classification CSV is written: give --classification-out")
    if n_det and not o.out:
        raise InputError("give --out, the submission CSV to write")


@dataclass
class LaunchOptions:
    """How many prediction processes (detectron2's ``launch``): ``num_gpus`` per machine (processes on the CPU),
    ``num_machines``, this machine's rank, and the rendezvous URL (``auto``: a free local port, one machine only)."""

    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"

    @property
    def world_size(self) -> int:
        return self.num_gpus * self.num_machines


@dataclass
class _Plan:
    """Everything decided before a model runs: configs, exported files, inputs, classes, decode size."""

    det_cfgs: list[CfgNode]
    cls_cfgs: list[CfgNode]
    det_files: list[str]
    cls_files: list[str]
    num_classes: int
    cls_k: int
    inputs: InputSet
    classes: tuple[str, ...]
    external: dict[str, float] | None
    clf: ImageClassifier
    dicom_size: int
    workers: int
    max_dets: int
    cls_labels: list[str] = field(default_factory=list)  # MODEL.CLASSIFIER.IMAGE_LABELS of the classifier
    part_names: list[str] = field(default_factory=list)  # the classifier's body parts (a body-part head), in order
    orig_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # after prediction: original sizes

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.inputs.images]

    @property
    def n_det(self) -> int:
        return len(self.det_cfgs) + len(self.det_files)


def _plan(options: PredictOptions, inputs: InputSet | None = None) -> _Plan:
    """Read and check everything but the weights themselves (cheap: run once more in each process); ``inputs``
    instead of ``options.input`` (the one-image API gives its images one at a time)."""
    _check_options(options)
    det_cfgs = _load_cfgs(options.config_files, options.weights, options.opts) if options.weights else []
    cls_cfgs = _load_cfgs(options.classifier_configs, options.classifier_weights, options.opts,
                          "--classifier-config", "--classifier-weights") if options.classifier_weights else []
    infos = {f: read_exported_info(f) for f in options.exported}
    det_files = [f for f in options.exported if infos[f].is_detector]
    cls_files = [f for f in options.exported if not infos[f].is_detector]
    single = inputs is not None or is_single_image(options.input)
    _check_models(options, len(det_cfgs) + len(det_files), len(cls_cfgs) + len(cls_files), single)
    # each model's class count, named as the user gave it
    det_counts = {f"{num_classes_key(c)} of {f}": model_num_classes(c)
                  for c, f in zip(det_cfgs, options.config_files * len(det_cfgs))}
    det_counts.update({f"the exported {f}": infos[f].num_classes for f in det_files})
    cls_counts = {f"{num_classes_key(c)} of {f}": model_num_classes(c)
                  for c, f in zip(cls_cfgs, options.classifier_configs * len(cls_cfgs))}
    cls_counts.update({f"the exported {f}": infos[f].num_classes for f in cls_files})
    for what, counts in (("detectors", det_counts), ("image classifiers", cls_counts)):
        if len(set(counts.values())) > 1:
            raise InputError(f"the {what} disagree on the number of classes: "
                             + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    cls_k = next(iter(cls_counts.values()), 0)
    # the body parts whose probabilities follow the classes in a classifier's output (MODEL.CLASSIFIER.BODY_PART_HEAD)
    parts = {f"{f}": body_part_names(c) for c, f in zip(cls_cfgs, options.classifier_configs * len(cls_cfgs))}
    parts.update({f"the exported {f}": infos[f].body_parts for f in cls_files})
    if len({tuple(v) for v in parts.values()}) > 1:
        raise InputError("the image classifiers disagree on their body-part head (MODEL.CLASSIFIER.BODY_PART_HEAD / "
                         "BODY_PARTS): " + ", ".join(f"{k}: {v or 'none'}" for k, v in parts.items()))
    part_names = next(iter(parts.values()), [])
    # a classifier of image-level labels (MODEL.CLASSIFIER.IMAGE_LABELS) has no box classes to agree with
    cls_labels = list(cls_cfgs[0].MODEL.CLASSIFIER.IMAGE_LABELS) if cls_cfgs else []
    num_classes = next(iter(det_counts.values()), 0 if cls_labels else cls_k)
    if det_counts and cls_k and not cls_labels and cls_k != num_classes:
        raise InputError(f"the image classifier has {cls_k} class outputs (MODEL.CLASSIFIER.NUM_CLASSES) but the "
                         f"detector {num_classes} classes ({next(iter(det_counts))})")
    if options.score_scaling and (not cls_k or cls_labels):
        raise InputError("--score-scaling needs an image classifier with one output per class "
                         "(MODEL.CLASSIFIER.NUM_CLASSES > 0); this one only predicts normal/abnormal")
    inputs = collect_inputs(options.input) if inputs is None else inputs
    if det_counts:
        check_png_frame(inputs, options.png_frame)
    if inputs.classes is not None and num_classes and len(inputs.classes) != num_classes:
        raise InputError(f"input {inputs.source} has {len(inputs.classes)} classes but the model "
                         f"({next(iter(det_counts or cls_counts))}) has {num_classes}")
    classes = class_names_for(num_classes, inputs.classes)
    exported_names = [tuple(infos[f].class_names) for f in det_files + cls_files]
    if exported_names and not (inputs.classes is not None and len(inputs.classes) == num_classes):
        classes = exported_names[0]  # the names the exported file carries
    elif exported_names and exported_names[0] != tuple(classes):
        logger.warning("the exported file's class names %s differ from the input's %s: the input's are used",
                       list(exported_names[0]), list(classes))
    image_ids = [r.image_id for r in inputs.images]
    external = read_probability_csv(options.classifier_csv, image_ids) if options.classifier_csv else None
    clf = ImageClassifier(kind=options.rule, num_classes=max(num_classes, 1))
    if options.classifier:
        clf = ImageClassifier.load(options.classifier)
        if clf.num_classes != num_classes:
            raise InputError(f"classifier {options.classifier} was fitted for {clf.num_classes} classes, the model "
                             f"has {num_classes}")
    dicom_size = decode_size(det_cfgs + cls_cfgs, options.dicom_size, inputs, [infos[f] for f in options.exported])
    cfg = (det_cfgs or cls_cfgs or [None])[0]
    workers = options.num_workers if options.num_workers is not None else \
        int(cfg.DATALOADER.NUM_WORKERS) if cfg is not None else 0
    if options.max_dets:
        max_dets = options.max_dets
    elif det_cfgs:
        max_dets = int(det_cfgs[0].TEST.DETECTIONS_PER_IMAGE)
    else:
        max_dets = int(infos[det_files[0]].detections_per_image or 100) if det_files else 100
    return _Plan(det_cfgs, cls_cfgs, det_files, cls_files, num_classes, cls_k, inputs, classes, external, clf,
                 dicom_size, workers, max_dets, cls_labels, part_names)


def _build_models(plan: _Plan, options: PredictOptions) -> tuple[list[ImageModel], list[ImageModel]]:
    """The detectors (eager checkpoints, then exported files) and the image classifiers (likewise)."""
    predictors: list[ImageModel] = [BatchedPredictor(c, w, amp=options.amp)
                                    for c, w in zip(plan.det_cfgs, options.weights)]
    predictors += [ExportedPredictor(f) for f in plan.det_files]
    cnns: list[ImageModel] = [BatchedClassifier(c, w, amp=options.amp)
                              for c, w in zip(plan.cls_cfgs, options.classifier_weights)]
    cnns += [ExportedClassifier(f) for f in plan.cls_files]
    return predictors, cnns


def run_predict(options: PredictOptions, launch: LaunchOptions | None = None) -> dict[str, Any]:
    """Predict, fuse, classify and write the submission, ``classification.csv`` and overlays.

    Detectors (``config_files``/``weights``, and exported detectors among ``exported``) give the boxes, fused with
    WBF over models and views. P(abnormal) of each image comes from the image classifiers when given
    (``classifier_configs``/``classifier_weights`` and exported classifiers, their probabilities averaged over
    models and views), else from ``classifier`` (a fitted JSON), ``classifier_csv`` or the ``rule`` on the
    detections; it gives the No-finding entry and drives the 2-class filter. With ``score_scaling`` each box's
    confidence is multiplied by the classifiers' probability of its class. Without a detector only the
    classification CSV is written.

    With ``launch`` of more than one process (detectron2's ``launch``: gloo on the CPU, NCCL on GPUs) the images are
    dealt out by rank (image k to process k mod N), each process predicts its share (with its own entries in
    ``cache_dir``), and the main process gathers them and does the rest: the same files as one process writes.

    Returns:
        A summary: ``num_images``, ``failed`` (image_id -> reason), ``out`` (None without a detector),
        ``classification``, ``sets`` (the detector/view names fused), ``classifiers`` (how many), ``vis``,
        ``processes``. On a machine other than the main one: ``out`` and ``classification`` are None.

    Raises:
        DetxError (InputError, PredictionInputError, CheckpointError, ...): bad input, named in the message;
        nothing is written then. UnreadableImageError in strict mode.
    """
    if launch is None or launch.world_size <= 1:
        return _predict(options)
    return _predict_launched(options, launch)


def _predict(options: PredictOptions, rank: int = 0, world: int = 1) -> dict[str, Any] | None:
    """One process's part: all of it (``world`` 1), or the share ``images[rank::world]``, gathered on rank 0 (which
    returns the summary; the others return None)."""
    plan = _plan(options)
    predictors, cnns = _build_models(plan, options)
    records = plan.inputs.images if world == 1 else plan.inputs.images[rank::world]
    run = predict_all(predictors, records, parse_tta(options.tta), options.batch_size, options.model_weights,
                      plan.dicom_size, plan.workers, options.strict, options.progress and rank == 0,
                      options.cache_dir, classifiers=cnns)
    if world > 1:
        from detectron2.utils import comm

        runs = comm.gather(run, dst=0)
        if rank != 0:
            return None
        run = PredictionRun.merge(runs, plan.image_ids)
    summary = _write_outputs(plan, run, options, len(cnns), bool(predictors))
    summary["processes"] = world
    return summary


@dataclass
class _Scored:
    """Fused boxes, P(abnormal), the submission rows and the per-class probabilities of every image."""

    fused: dict[str, Predictions]
    rows: dict[str, Predictions]
    p_abn: dict[str, float]
    per_class: dict[str, np.ndarray]
    columns: Sequence[str]
    threshold: float
    cnn: dict[str, np.ndarray]
    part_probs: dict[str, np.ndarray] = field(default_factory=dict)  # image -> the body-part head's probabilities


def _score(plan: _Plan, run: PredictionRun, options: PredictOptions, n_cnns: int, has_detector: bool) -> _Scored:
    """Fusion, P(abnormal) and the 2-class filter, from every image's raw predictions (what the CSVs and the
    one-image answers are made of)."""
    image_ids, nf_id, num_classes = plan.image_ids, plan.num_classes, plan.num_classes
    cnn = run.cls_probs()
    fused: dict[str, Predictions] = {}
    if has_detector:
        max_dets = plan.max_dets
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
    clf = plan.clf
    threshold = clf.threshold
    if n_cnns:
        p_abn = {i: float(cnn[i][0]) for i in ok_ids}
        threshold = CNN_THRESHOLD
    elif plan.external is not None:
        p_abn = {i: plan.external[i] for i in ok_ids}
    else:
        p_abn = dict(zip(ok_ids, clf.predict_proba([fused[i] for i in ok_ids]).tolist()))
    rows: dict[str, Predictions] = {}
    if has_detector:
        for i in image_ids:
            if i in run.failures:
                rows[i] = no_finding_entry(1.0, nf_id)
            else:
                rows[i] = apply_nofinding_filter(fused[i], p_abn[i], nf_id, options.nofinding_low,
                                                 options.nofinding_high)
    per_class = {i: cnn[i][1:1 + plan.cls_k] for i in ok_ids} if plan.cls_k else \
        {i: class_max_scores(fused[i], num_classes) for i in ok_ids} if has_detector else {}
    columns = plan.cls_labels[:plan.cls_k] if plan.cls_labels else plan.classes
    n_parts = len(plan.part_names)
    part_probs = {i: cnn[i][1 + plan.cls_k:1 + plan.cls_k + n_parts] for i in ok_ids} if n_parts and n_cnns else {}
    return _Scored(fused, rows, p_abn, per_class, columns if per_class else (), threshold, cnn, part_probs)


def image_answer(plan: _Plan, scored: _Scored, image_id: str, body_part: str | None = None) -> ImageAnswer:
    """The one-image answer of ``image_id`` from the scored predictions (the same numbers as the CSVs)."""
    w, h = plan.orig_sizes[image_id]
    row = scored.rows.get(image_id)
    findings, p_nf = [], None
    if row is not None:
        findings = ImageAnswer.findings_from(row.boxes, row.scores, row.classes, plan.classes)
        nf = row.classes == plan.num_classes
        p_nf = float(row.scores[nf][0]) if nf.any() else None
    probs = scored.per_class.get(image_id, ())
    record = next(r for r in plan.inputs.images if r.image_id == image_id)
    part_probs = {n: float(v) for n, v in zip(plan.part_names, scored.part_probs.get(image_id, ()))}
    predicted_part = max(part_probs, key=part_probs.get) if part_probs else None
    return ImageAnswer(image_id=image_id, width=int(w), height=int(h), p_abnormal=float(scored.p_abn[image_id]),
                       threshold=float(scored.threshold),
                       class_probs={str(c): float(p) for c, p in zip(scored.columns, probs)},
                       findings=findings, p_no_finding=p_nf,
                       body_part=body_part or predicted_part or mura_body_part(record.path),
                       body_part_probs=part_probs,
                       source="<array>" if record.pixels is not None else str(record.path))


def mura_body_part(path: str | os.PathLike) -> str | None:
    """The MURA body part a path names (``.../XR_HUMERUS/patient.../image1.png`` -> ``XR_HUMERUS``), else None."""
    import re

    m = re.search(r"(?:^|[/\\_])(XR_[A-Z]+)(?:[/\\_]|$)", str(path))
    return m.group(1) if m else None


def _write_outputs(plan: _Plan, run: PredictionRun, options: PredictOptions, n_cnns: int, has_detector: bool
                   ) -> dict[str, Any]:
    """Fusion, P(abnormal), the 2-class filter and the files, from every image's raw predictions. For one image
    file (``--input FILE``) the CSVs are written only when asked for, and the summary carries its answer."""
    scored = _score(plan, run, options, n_cnns, has_detector)
    image_ids, nf_id = plan.image_ids, plan.num_classes
    single = is_single_image(options.input)
    if has_detector and options.out:
        write_submission(options.out, scored.rows)
    cls_path = None
    if options.classification_out or (options.out and (not single or has_detector)):
        cls_path = classification_path(options.out, options.classification_out)
        write_classification_csv(cls_path, image_ids, scored.p_abn, scored.per_class, scored.columns,
                                 scored.threshold, run.failures,
                                 body_parts=plan.part_names if scored.part_probs else (), part_probs=scored.part_probs)
    vis: list[Path] = []
    vis_empty = 0
    if options.vis_dir and has_detector:
        vis, vis_empty = write_overlays(options.vis_dir, plan.inputs, scored.fused, plan.classes, run.failures,
                                        options.vis_num, options.vis_score, plan.dicom_size)
    if run.failures:
        logger.warning("%d of %d image(s) could not be read and were written as '%d 1 0 0 1 1': %s",
                       len(run.failures), len(image_ids), nf_id, list(run.failures)[:5])
    png_frame = unsized_pngs(plan.inputs) if has_detector else []
    sidecar = (options.out if has_detector and options.out else None) or cls_path
    problems = write_problems(problems_path(sidecar), run.failures, png_frame) if sidecar else None
    summary = {"num_images": len(image_ids), "failed": dict(run.failures),
               "out": str(options.out) if has_detector and options.out else None,
               "classification": str(cls_path) if cls_path else None, "sets": run.names,
               "classifiers": n_cnns, "vis": [str(v) for v in vis], "vis_empty": vis_empty,
               "vis_score": options.vis_score, "png_frame": len(png_frame),
               "problems": str(problems) if problems else None}
    if single:
        plan.orig_sizes = run.orig_sizes
        summary["answers"] = [image_answer(plan, scored, i).to_dict() for i in image_ids if i not in run.failures]
    return summary


def classification_path(out: str | os.PathLike | None, classification_out: str | os.PathLike | None) -> Path:
    """Where the classification CSV goes: ``classification_out`` when given, else ``<out stem>.classification.csv``
    beside the submission (``sub.csv`` -> ``sub.classification.csv``), so that two runs with different ``--out`` in
    one folder never replace each other's file.

    Raises:
        InputError: the classification CSV would be the submission itself.
    """
    if classification_out:
        path = Path(classification_out)
    elif out:
        path = Path(out).with_name(f"{Path(out).stem}.classification.csv")
    else:
        raise InputError("give --classification-out (no --out to name it after)")
    if out and path.resolve() == Path(out).resolve():
        raise InputError(f"--classification-out {path} is the submission (--out) itself: give another file")
    return path


def problems_path(out: str | os.PathLike) -> Path:
    """The sidecar listing a run's problem images: ``<out stem>.problems.csv`` beside ``out`` (the Kaggle
    submission format has only two columns, so unreadable images are marked here)."""
    stem = Path(out).stem.removesuffix(".classification")
    return Path(out).with_name(f"{stem}.problems.csv")


def write_problems(path: Path, failures: Mapping[str, str], png_frame: Sequence[str]) -> Path | None:
    """``path`` (``kind, where, message, image_id``): every unreadable image (written as No finding) and every PNG
    whose boxes are in PNG pixels (``--png-frame``); None, and an earlier run's file removed, when there are none."""
    from detx.data.readers import Problem, ProblemLog

    log = ProblemLog()
    log.items += [Problem("unreadable", "input", f"could not be read ({reason}); written as No finding 1.0", i)
                  for i, reason in failures.items()]
    log.items += [Problem("png_frame", "input", "no original size: boxes in PNG pixels (--png-frame)", i)
                  for i in png_frame]
    if not log.items:
        if path.is_file():
            path.unlink()  # an earlier run's list would describe images this run read
        return None
    log.write_csv(path)
    return path


class WorkerError(DetxError):
    """A prediction process stopped on a detx error: its message, and its exit status."""

    def __init__(self, message: str, exit_status: int = DetxError.exit_status):
        super().__init__(message)
        self.exit_status = exit_status


def _check_weights(plan: _Plan, options: PredictOptions) -> None:
    """The checkpoint checks prediction makes, run once on the CPU before any process starts."""
    from detectron2.modeling import build_model

    for cfg, w in [*zip(plan.det_cfgs, options.weights), *zip(plan.cls_cfgs, options.classifier_weights)]:
        cpu = cfg.clone()
        cpu.defrost()
        cpu.MODEL.DEVICE = "cpu"
        check_checkpoint(build_model(cpu), w, model_num_classes(cfg), num_classes_key(cfg))


def _predict_launched(options: PredictOptions, launch: LaunchOptions) -> dict[str, Any]:
    import json
    import tempfile

    from detectron2.engine import launch as d2_launch

    if launch.num_gpus < 1 or launch.num_machines < 1 or not 0 <= launch.machine_rank < launch.num_machines:
        raise InputError(f"--num-gpus {launch.num_gpus} --num-machines {launch.num_machines} --machine-rank "
                         f"{launch.machine_rank}: need at least one process and machine, and 0 <= rank < machines")
    if launch.dist_url == "auto" and launch.num_machines > 1:
        raise InputError("--dist-url auto works on one machine only: give tcp://HOST:PORT of machine 0")
    plan = _plan(options)  # fail here, once, before any process starts
    _check_weights(plan, options)
    with tempfile.TemporaryDirectory(prefix="detx-predict-") as tmp:
        result = Path(tmp) / "summary.json"
        try:
            d2_launch(_predict_worker, launch.num_gpus, num_machines=launch.num_machines,
                      machine_rank=launch.machine_rank, dist_url=launch.dist_url, args=(options, str(result)))
        except Exception as e:
            errors = sorted(Path(tmp).glob("error_rank*.json"))
            if errors:
                err = json.loads(errors[0].read_text())
                raise WorkerError(f"process {err['rank']}: {err['message']}", int(err["exit_status"])) from None
            raise RuntimeError(f"a prediction process failed: {e}") from e
        if launch.machine_rank != 0:
            return {"num_images": len(plan.image_ids), "failed": {}, "out": None, "classification": None,
                    "sets": [], "classifiers": 0, "vis": [], "processes": launch.world_size}
        return json.loads(result.read_text())


def _predict_worker(options: PredictOptions, result: str) -> None:
    """One launched process: its share of the images; rank 0 also writes the outputs and the summary ``result``."""
    from detectron2.utils import comm

    from detx.core.io import write_json

    rank = comm.get_rank()
    try:
        summary = _predict(options, rank, comm.get_world_size())
    except DetxError as e:
        write_json(Path(result).parent / f"error_rank{rank}.json",
                   {"rank": rank, "message": str(e), "exit_status": e.exit_status})
        raise
    if summary is not None:
        write_json(result, summary)


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
) -> tuple[list[Path], int]:
    """Overlays ``<out_dir>/<image_id>.png`` for ``num`` images spread evenly over the input.

    An overlay with no box at or above ``score_thr`` says so on the image; a warning counts them (all of them:
    lower ``--vis-score``).

    Args:
        inputs: the input set (its ground truth is drawn when present).
        preds: image_id -> detections in original pixels.

    Returns:
        (the overlays written, how many of them show no box).
    """
    failed = failed or {}
    records = [r for r in inputs.images if r.image_id not in failed and r.image_id in preds]
    if num <= 0 or not records:
        return [], 0
    pick = np.unique(np.linspace(0, len(records) - 1, min(num, len(records))).round().astype(int))
    out_dir = Path(out_dir)
    written = []
    empty: list[float | None] = []  # the best finding confidence of each overlay that shows no box
    for k in pick:
        rec = records[int(k)]
        loaded = load_image(rec, "BGR", dicom_size)
        if loaded.error is not None:
            logger.warning("overlay of %s skipped: %s", rec.image_id, loaded.error)
            continue
        gt = inputs.gt.get(rec.image_id) if inputs.gt is not None else None
        pred = preds[rec.image_id]
        shown = pred
        if rec.crop is not None:  # a lung crop: its PNG shows the crop, whose extent is loaded.orig_size
            shift = np.array(rec.crop[:2] * 2, np.float64)
            shown = Predictions(pred.boxes - shift, pred.scores, pred.classes)
            gt = (gt[0] - shift, gt[1]) if gt is not None else None
        img = draw_overlay(loaded.image, shown, classes, loaded.orig_size, gt, score_thr)
        path = out_dir / f"{rec.image_id.replace('/', '_')}.png"
        write_png(path, img)
        written.append(path)
        finding = pred.classes < len(classes)
        if not (pred.scores[finding] >= score_thr).any():
            empty.append(float(pred.scores[finding].max()) if finding.any() else None)
    if empty:
        best = max((b for b in empty if b is not None), default=None)
        logger.warning("%d of %d overlay(s) show no box: none at or above --vis-score %g%s", len(empty), len(written),
                       score_thr, f" (highest confidence among them {best:.3f}; lower --vis-score to see boxes)"
                       if best is not None else " (no box predicted)")
    return written, len(empty)
