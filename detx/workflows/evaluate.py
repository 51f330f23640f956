"""``tools/evaluate.py``'s whole job: a submission against ground truth files, every metric, the table, the JSON.

Ground truth comes from :func:`detx.evaluation.ground_truth.load_ground_truth` (a reader CSV fused per image
and class, or a prepared COCO JSON, boxes in original pixels). The image-level score is P(abnormal) = 1 - the
submission's No-finding confidence, or its highest finding confidence when it has no No-finding entry
(:func:`detx.core.image_scores.image_scores_from_predictions`).

A reader CSV with ``rad_id`` also gives the human baseline (:func:`detx.evaluation.reader_agreement.human_baseline`):
each reader's challenge metric against the fusion of the other readers of its images on the ground truth's images,
pooled over the images with a box (printed beside the model's) and, the old figure, averaged over the readers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from detx.core.classes import NO_FINDING, no_finding_id
from detx.core.classification_csv import ClassificationTable, is_classification_csv, read_classification_csv
from detx.core.errors import InputError, StrictModeError
from detx.core.image_scores import class_max_scores, image_scores_from_predictions
from detx.core.predictions import Predictions
from detx.core.submission import align_to, coverage, read_submission
from detx.data.readers import boxes_without_reader, describe_boxes_without_reader
from detx.evaluation.coco_map import SUMMARY_KEYS, coco_metrics
from detx.evaluation.froc import froc_from_vinbigdata
from detx.evaluation.ground_truth import GroundTruthSet, load_ground_truth
from detx.evaluation.image_level import (
    classification_metrics,
    image_level_metrics,
    per_class_auc,
    study_level_metrics,
)
from detx.evaluation.reader_agreement import human_baseline
from detx.evaluation.vinbigdata import map_key, vinbigdata_map

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "default_workers", "evaluate_classification", "evaluate_files", "evaluate_submission",
           "format_classification", "format_table"]

MAX_PROBLEMS_IN_JSON = 100


@dataclass
class EvaluationResult:
    """``metrics`` is what the JSON holds; ``curves`` the arrays behind the plots."""

    metrics: dict[str, Any]
    curves: dict[str, Any]


def default_workers() -> int:
    """``tools/evaluate.py``'s default ``--workers``: the CPU count, at most 4 (each holds one COCO category)."""
    return max(1, min(4, os.cpu_count() or 1))


def _by_name(values: dict[int, Any], names: list[str]) -> dict[str, Any]:
    return {names[c]: v for c, v in values.items()}


def evaluate_submission(
    gts: GroundTruthSet,
    preds: dict[str, Predictions],
    iou_thr: float = 0.4,
    threshold: float | None = None,
    workers: int = 1,
) -> EvaluationResult:
    """All metrics of ``preds`` (image_id -> Predictions, ids a subset of the ground truth's).

    Args:
        gts: the ground truth.
        preds: the submission; an image without an entry has no predictions.
        iou_thr: the matching IoU of the challenge metric, FROC and the extra COCO AP.
        threshold: the image-level operating point; None: Youden-optimal on these images.
        workers: processes sharing the COCO evaluation's categories (:func:`detx.evaluation.coco_map.coco_metrics`).
    """
    classes = list(gts.classes)
    k = len(classes)
    nf = no_finding_id(classes)
    names = [*classes, NO_FINDING]
    image_ids = list(gts.gt)
    gt = gts.gt
    key = map_key(iou_thr)

    vb = vinbigdata_map(gt, preds, num_classes=k, iou_thr=iou_thr)
    coco = coco_metrics(gt, preds, num_classes=k, extra_iou_thr=iou_thr, workers=workers)
    fr = froc_from_vinbigdata(vb, num_classes=k, num_images=len(image_ids))  # reuses vb's VOC matching

    empty = Predictions()
    labels = np.array([len(gt[i][1]) > 0 for i in image_ids], np.int64)
    p_abn = np.array([image_scores_from_predictions(preds.get(i, empty), k) for i in image_ids], np.float64)
    image_level = image_level_metrics(labels, p_abn, threshold) if image_ids else {}
    if image_ids:
        present = np.zeros((len(image_ids), k), np.int64)
        for r, i in enumerate(image_ids):
            present[r, np.unique(gt[i][1])] = 1
        per_class_scores = np.stack([class_max_scores(preds.get(i, empty), k) for i in image_ids])
        image_level["auc_per_class"] = per_class_auc(present, per_class_scores, classes)

    metrics: dict[str, Any] = {
        "gt": gts.source,
        "dataset": gts.dataset,
        "num_images": len(image_ids),
        "iou_thr": float(iou_thr),
        key: vb["mAP"] if np.isfinite(vb["mAP"]) else None,
        "mAP": vb["mAP"] if np.isfinite(vb["mAP"]) else None,
        "AP_per_class": _by_name(vb["AP_per_class"], names),
        f"coco_{key}": coco[f"coco_{key}"],
        "coco": {**{s: coco[s] for s in SUMMARY_KEYS},
                 "AP_per_class": _by_name(coco["AP_per_class"], classes),
                 f"AP{key[3:]}_per_class": _by_name(coco[f"AP{key[3:]}_per_class"], classes)},
        "froc": {kk: fr[kk] for kk in ("fp_rates", "sensitivity", "mean", "num_lesions")},
        "image_level": image_level,
        "num_gt": _by_name(vb["num_gt"], names),
        "num_pred": _by_name(vb["num_pred"], names),
        "excluded_classes": [names[c] for c, ap in vb["AP_per_class"].items() if ap is None],
    }
    curves = {
        "pr": {names[c]: (cv["recall"], cv["precision"]) for c, cv in vb["curves"].items()},
        "ap": {names[c]: ap for c, ap in vb["AP_per_class"].items() if ap is not None},
        "froc": (fr["curve"]["fp_per_image"], fr["curve"]["sensitivity"], fr["fp_rates"], fr["sensitivity"]),
        "roc": (labels, p_abn, image_level.get("threshold")),
        "no_finding_id": nf,
    }
    return EvaluationResult(metrics, curves)


def evaluate_classification(gts: GroundTruthSet, table: ClassificationTable, threshold: float | None = None,
                            strict: bool = False, n_boot: int = 1000) -> EvaluationResult:
    """Image-level metrics of a classification CSV: normal/abnormal (AUC; F1, sensitivity, specificity at
    ``threshold`` or the Youden point; bootstrap 95% intervals) and the AUC of each ``p_<class>`` column the
    ground truth's classes have. An image is abnormal when it has a finding box, and has class k with a box of k.

    Raises:
        InputError: the CSV lacks images of the ground truth (named) or shares none; a ``p_<class>`` column
            names no class of the ground truth. An extra image is dropped with a warning (strict: an error).
    """
    cover = coverage(gts.gt, table.p_abnormal)
    if not cover.shared:
        raise InputError(f"{table.source} shares no image with the ground truth {gts.source} ({cover.describe()})")
    if cover.missing:
        raise InputError(f"{table.source} has no probability for {len(cover.missing)} image(s) of the ground truth "
                         f"{gts.source}, e.g. {cover.missing[:5]}: every image needs one")
    if cover.extra:
        if strict:
            raise StrictModeError(f"{table.source}: {len(cover.extra)} image(s) not in the ground truth, e.g. "
                                  f"{cover.extra[:5]}")
        logger.warning("%s: %d image(s) not in the ground truth are ignored: %s", table.source, len(cover.extra),
                       cover.extra[:5])
    classes = list(gts.classes)
    unknown = sorted(set(table.per_class) - set(classes))
    if unknown:
        raise InputError(f"{table.source}: columns p_{unknown[0]}... name no class of the ground truth ({classes})")
    scored = [c for c in classes if c in table.per_class]
    ids = cover.shared
    labels = np.zeros((len(ids), 1 + len(scored)), np.int64)
    probs = np.zeros_like(labels, dtype=np.float64)
    for r, i in enumerate(ids):
        present = set(np.asarray(gts.gt[i][1]).tolist())
        labels[r, 0] = gts.image_labels[i] if gts.image_labels is not None else int(bool(present))
        probs[r, 0] = table.p_abnormal[i]
        for k, c in enumerate(scored):
            labels[r, 1 + k] = int(classes.index(c) in present)
            probs[r, 1 + k] = table.per_class[c].get(i, 0.0)
    m = classification_metrics(labels, probs, ["abnormal", *scored], threshold, n_boot=n_boot)
    metrics = {"kind": "classification", "gt": gts.source, "dataset": gts.dataset, "num_images": len(ids),
               "image_level": m, "coverage": cover.to_dict()}
    curves = {"roc": (labels[:, 0], probs[:, 0], m["threshold"])}
    if gts.studies and len({gts.studies[i] for i in ids}) < len(ids):  # studies of several images exist
        parts = [gts.body_parts[i] for i in ids] if gts.body_parts else None
        st = study_level_metrics(labels[:, 0], probs[:, 0], [gts.studies[i] for i in ids], parts, threshold,
                                 n_boot=n_boot)
        metrics["study_level"] = st["overall"] | {"num_studies": st["num_studies"]}
        metrics["per_body_part"] = st["per_body_part"]
    return EvaluationResult(metrics, curves)


def format_classification(metrics: dict[str, Any]) -> str:
    """The per-class AUC table and the image-level line of :func:`evaluate_classification`'s metrics."""
    il = metrics["image_level"]
    ci = il.get("ci") or {}

    def with_ci(k: str) -> str:
        v = ci.get(k)
        return _f(il[k]) + (f" ({_f(v[0])}-{_f(v[1])})" if v else "")

    rows = [[name, _f(v)] for name, v in il["auc_per_class"].items()]
    lines = []
    if rows:
        lines += [tabulate(rows, headers=["class", "AUC"], tablefmt="github", disable_numparse=True), "",
                  f"macro AUC over {sum(v is not None for v in il['auc_per_class'].values())} classes: "
                  f"{_f(il['auc_macro'])}"]
    lines.append(
        f"Image level ({il['num_abnormal']} abnormal / {il['num_normal']} normal): AUC {with_ci('auc')}; at threshold "
        f"{il['threshold']:.4f} ({il['threshold_method']}): F1 {with_ci('f1')}, sensitivity {with_ci('sensitivity')},"
        f" specificity {with_ci('specificity')}, kappa {_f(il['kappa'])} [95% bootstrap intervals]")
    st = metrics.get("study_level")
    if st:
        ci = st.get("ci") or {}
        lines.append(
            f"Study level ({st['num_studies']} studies, P = mean of its images; {st['num_abnormal']} abnormal / "
            f"{st['num_normal']} normal): AUC {_f(st['auc'])}"
            + (f" ({_f(ci['auc'][0])}-{_f(ci['auc'][1])})" if ci.get("auc") else "")
            + f"; at threshold {st['threshold']:.4f} ({st['threshold_method']}): F1 {_f(st['f1'])}, sensitivity "
            f"{_f(st['sensitivity'])}, specificity {_f(st['specificity'])}, Cohen's kappa {_f(st['kappa'])}")
    parts = metrics.get("per_body_part") or {}
    if parts:
        rows = [[bp, m["num_studies"], _f(m["auc"]), _f(m["sensitivity"]), _f(m["specificity"]), _f(m["kappa"])]
                for bp, m in parts.items()]
        lines += ["", tabulate(rows, headers=["body part", "studies", "AUC", "sensitivity", "specificity", "kappa"],
                               tablefmt="github", disable_numparse=True)]
    return "\n".join(lines)


def evaluate_files(
    gt_path: str | os.PathLike,
    pred_path: str | os.PathLike,
    gt_fusion: str = "wbf",
    iou_thr: float = 0.4,
    strict: bool = False,
    fusion_iou_thr: float = 0.4,
    threshold: float | None = None,
    workers: int = 1,
) -> EvaluationResult:
    """Read the ground truth and the submission, check the submission covers exactly the ground truth's
    images, and evaluate. In lenient mode bad entries are skipped and counted in ``metrics["problems"]``; a
    submission that covers only part of the ground truth is scored by the Kaggle rule with a warning, and
    ``metrics["coverage"]`` (shown beside every number by :func:`format_table`) says how much.
    ``metrics["human_baseline"]`` (:func:`detx.evaluation.reader_agreement.human_baseline`) holds, for a reader CSV
    with ``rad_id``, the readers' challenge metric against their co-readers' fusion on the ground truth's images:
    pooled over the images with a box (``mAP40``, the honest figure, printed) and the old mean over the readers
    (``mAP40_mean``); None otherwise. ``workers`` processes share the COCO evaluation.

    Raises:
        InputError: an unlabelled ground truth, or a submission sharing no image with it.
        detx.core.submission.SubmissionError: a bad submission in strict mode (or a bad header).
        detx.data.readers.DataError: a bad ground-truth row in strict mode (a StrictModeError).
    """
    if workers < 1:
        raise InputError(f"--workers {workers} must be at least 1")
    gts = load_ground_truth(gt_path, fusion=gt_fusion, fusion_iou_thr=fusion_iou_thr, strict=strict)
    if not gts.labelled:
        raise InputError(f"ground truth {gt_path} has no labels (a split prepared without annotations, such as "
                         "test.json): there is nothing to score against")
    if is_classification_csv(pred_path):
        result = evaluate_classification(gts, read_classification_csv(pred_path), threshold=threshold,
                                         strict=strict)
        result.metrics["pred"] = str(pred_path)
        result.metrics["gt_fusion"] = gt_fusion if Path(gt_path).suffix.lower() != ".json" else None
        _note_boxes_without_reader(result.metrics, gts, gt_fusion)
        return result
    sub = read_submission(pred_path, strict=strict, num_classes=len(gts.classes) + 1)
    cover = coverage(gts.gt, sub)
    if not cover.shared:
        raise InputError(f"{pred_path} shares no image with the ground truth {gt_path} ({cover.describe()}); "
                         "is it the submission of this split?")
    if not cover.complete and not strict:
        logger.warning("%s: %s; scoring by the Kaggle rule (a missing image predicts nothing, an extra one is "
                       "dropped): every number below covers %d of %d images", pred_path, cover.describe(),
                       len(cover.shared), cover.expected)
    align_to(sub, gts.gt, pred_path, strict)
    result = evaluate_submission(gts, dict(sub), iou_thr=iou_thr, threshold=threshold, workers=workers)
    m = result.metrics
    m["coverage"] = cover.to_dict()
    m["pred"] = str(pred_path)
    m["gt_fusion"] = gt_fusion if Path(gt_path).suffix.lower() != ".json" else None
    _note_boxes_without_reader(m, gts, gt_fusion)
    m["frame_warning"] = frame_warning(gts.gt, sub, len(gts.classes))
    m["human_baseline"] = (human_baseline(gts.table, iou_thr=iou_thr, fusion=gt_fusion, fusion_iou_thr=fusion_iou_thr,
                                          image_ids=list(gts.gt)) if gts.table is not None else None)
    m["problems"] = {
        "submission": len(sub.problems),
        "ground_truth": len(gts.problems),
        "messages": (sub.problems + gts.problems)[:MAX_PROBLEMS_IN_JSON],
    }
    return result


def _note_boxes_without_reader(m: dict[str, Any], gts: GroundTruthSet, gt_fusion: str) -> None:
    """``m["gt_boxes_without_reader"]`` (``boxes``, ``images``, ``note``) for a reader CSV whose boxes lack
    ``rad_id``: fusion could not merge them, so the ground truth holds every row's box; warned once."""
    if gts.table is None:
        return
    counts = boxes_without_reader(gts.table)
    note = describe_boxes_without_reader(counts, gt_fusion)
    m["gt_boxes_without_reader"] = {**counts, "note": note or None}
    if note:
        logger.warning("%s: %s", gts.source, note)


#: a submission whose boxes all lie within this share of the ground truth's extent (on both axes) is suspect
FRAME_SHARE = 0.5
#: ... when it has at least this many finding boxes (a few small boxes near the corner can be genuine)
FRAME_MIN_BOXES = 10


def frame_warning(gt: dict[str, tuple[np.ndarray, np.ndarray]], sub: dict[str, Predictions], num_classes: int
                  ) -> str | None:
    """A warning when the submission's finding boxes all lie within :data:`FRAME_SHARE` of the ground truth's extent
    (the largest ``x_max``, ``y_max`` of its boxes) on both axes: the mark of boxes in PNG pixels (a prepared
    dataset's smaller images) scored against original-DICOM ground truth, which scores near 0 for no visible
    reason. None when nothing looks wrong (or there are too few boxes to tell)."""
    gt_boxes = [b for b, _ in gt.values() if len(b)]
    pred = [p.boxes[p.classes < num_classes] for p in sub.values()]
    pred = [b for b in pred if len(b)]
    if not gt_boxes or sum(len(b) for b in pred) < FRAME_MIN_BOXES:
        return None
    gx, gy = np.concatenate(gt_boxes)[:, 2:].max(axis=0)
    px, py = np.concatenate(pred)[:, 2:].max(axis=0)
    if px >= FRAME_SHARE * gx or py >= FRAME_SHARE * gy:
        return None
    return (f"every predicted box lies within 0..{px:.0f} x 0..{py:.0f} px, under half the ground truth's extent "
            f"(0..{gx:.0f} x 0..{gy:.0f}): are the boxes in another frame (PNG pixels of a prepared dataset instead "
            "of original DICOM pixels)? Predict the prepared JSON, the PNG folder with its meta.csv, or the DICOMs")


def _f(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{100 * v:.2f}" if pct else f"{v:.4f}"


def format_table(metrics: dict[str, Any]) -> str:
    """The per-class table and the summary lines, as text (a classification CSV's: :func:`format_classification`)."""
    if metrics.get("kind") == "classification":
        return format_classification(metrics)
    key = map_key(metrics["iou_thr"])
    coco = metrics["coco"]
    extra = f"AP{key[3:]}_per_class"
    rows = []
    for cid, (name, ap) in enumerate(metrics["AP_per_class"].items()):
        rows.append([
            cid, name, "excluded (no GT)" if ap is None else _f(ap),
            _f(coco["AP_per_class"].get(name)), _f(coco[extra].get(name)),
            metrics["num_gt"][name], metrics["num_pred"][name],
        ])
    table = tabulate(rows, headers=["id", "class", f"AP{key[3:]} (VOC)", "COCO AP", f"COCO AP{key[3:]}", "GT", "pred"],
                     tablefmt="github", disable_numparse=True)
    fr = metrics["froc"]
    il = metrics["image_level"]
    lines = [
        table,
        "",
        f"{key} (challenge, VOC 2010, IoU > {metrics['iou_thr']:g}, {metrics['num_images']} images, "
        f"{len(metrics['AP_per_class']) - len(metrics['excluded_classes'])} classes with GT): {_f(metrics[key])}",
        "COCO (findings): " + "  ".join(f"{k} {_f(coco[k])}" for k in SUMMARY_KEYS)
        + f"  coco_{key} {_f(metrics['coco_' + key])}",
        "FROC sensitivity at " + ", ".join(f"{r:g}: {_f(s)}" for r, s in zip(fr["fp_rates"], fr["sensitivity"]))
        + f" FP/image; mean {_f(fr['mean'])} ({fr['num_lesions']} lesions)",
    ]
    if il:
        lines.append(
            f"Image level ({il['num_abnormal']} abnormal / {il['num_normal']} normal): AUC {_f(il['auc'])}; at "
            f"threshold {il['threshold']:.4f} ({il['threshold_method']}): F1 {_f(il['f1'])}, sensitivity "
            f"{_f(il['sensitivity'])}, specificity {_f(il['specificity'])}, accuracy {_f(il['accuracy'])}"
        )
    cov = metrics.get("coverage")
    if cov and (cov["missing"] or cov["extra"]):
        note = (f"  [coverage: {cov['shared']} of {cov['ground_truth_images']} images predicted; missing ones "
                "count as predicting nothing]")
        lines = [lines[0], "", f"WARNING: the submission covers {cov['shared']} of {cov['ground_truth_images']} "
                 f"ground-truth images ({cov['missing']} missing, {cov['extra']} extra dropped)",
                 *(line + note for line in lines[2:])]
    hb = metrics.get("human_baseline")
    if hb and hb.get(key) is not None:
        lines.append(f"human baseline ({key} of each reader against the fusion of its co-readers, pooled over the "
                     f"{hb['images']} images with a box): {_f(hb[key])}  [model {key}: {_f(metrics[key])} on all "
                     f"{metrics['num_images']} images; compare on the same images: --gt with those images only]")
    if metrics.get("frame_warning"):
        lines.append(f"WARNING: {metrics['frame_warning']}")
    unfused = (metrics.get("gt_boxes_without_reader") or {}).get("note")
    if unfused:
        lines.append(f"WARNING: ground truth: {unfused}")
    probs = metrics.get("problems")
    if probs and (probs["submission"] or probs["ground_truth"]):
        lines.append(f"Skipped in lenient mode: {probs['submission']} submission problem(s), "
                     f"{probs['ground_truth']} ground-truth problem(s)")
    return "\n".join(lines)
