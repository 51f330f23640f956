"""The VinBigData challenge metric: PASCAL VOC 2010 mAP at IoU > 0.4 over the findings and "No finding".

"No finding" (class id ``num_classes``) is scored like a box class: every image without a finding box
has the ground-truth box ``0 0 1 1`` of that class, and a submission's ``14 p 0 0 1 1`` entry is a
detection of it with confidence p. AP per class is the area under the monotone (all-point) precision
envelope of the VOC devkit; the mean is over the classes that have ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detx.core.predictions import GroundTruth, Predictions
from detx.evaluation.matching import flatten_ground_truth, flatten_predictions, match_detections

__all__ = ["voc_ap", "vinbigdata_map", "map_key", "bootstrap_map_ci"]


def voc_ap(tp: np.ndarray, num_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """All-point VOC AP of detections in descending confidence.

    Args:
        tp: (N,) true-positive flags in descending confidence.
        num_gt: the number of ground-truth boxes (> 0).

    Returns:
        (ap, precision, recall), the latter two (N,) after each detection.
    """
    tp = np.asarray(tp, bool)
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(~tp, dtype=np.float64)
    recall = ctp / num_gt
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    ap = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return ap, precision, recall


def map_key(iou_thr: float) -> str:
    """``"mAP40"`` for 0.4, ``"mAP50"`` for 0.5."""
    return f"mAP{round(iou_thr * 100):d}"


def vinbigdata_map(
    gt: GroundTruth,
    preds: Mapping[str, Predictions],
    num_classes: int = 14,
    iou_thr: float = 0.4,
    include_no_finding: bool = True,
) -> dict[str, Any]:
    """The challenge metric over the images of ``gt``.

    Args:
        gt: image_id -> (boxes (M, 4) xyxy original px, classes (M,)), finding boxes only; every image
            evaluated must be present (an image with no boxes is a normal image).
        preds: image_id -> Predictions, class ids ``0 .. num_classes`` (``num_classes`` = No finding,
            box ``0 0 1 1``); an image absent here has no predictions.
        num_classes: the number of finding classes (14 for VinDr-CXR, 7 for VinDr-SpineXR).
        iou_thr: a detection matches when its IoU is strictly greater.
        include_no_finding: score the No-finding class (the challenge does); else findings only.

    Returns:
        ``{"mAP": float, "mAP40": float (key from map_key(iou_thr)), "iou_thr": float,
        "AP_per_class": {class_id: ap or None (no ground truth: excluded)}, "num_gt": {class_id: int},
        "num_pred": {class_id: int}, "curves": {class_id: {"precision", "recall", "scores", "tp"} arrays},
        "unmatched_scores": {class_id: scores of the detections of a class without ground truth}}``.
        mAP is NaN when no class has ground truth.

    Raises:
        ValueError: predictions for an image not in ``gt``, or a class out of range, naming the image.
    """
    g = flatten_ground_truth(gt, num_classes, add_no_finding=include_no_finding)
    p = flatten_predictions(preds, g.image_ids, max_class=num_classes)
    n_cls = num_classes + 1 if include_no_finding else num_classes
    ap_per_class: dict[int, float | None] = {}
    num_gt: dict[int, int] = {}
    num_pred: dict[int, int] = {}
    curves: dict[int, dict[str, np.ndarray]] = {}
    unmatched: dict[int, np.ndarray] = {}
    g_sort = np.argsort(g.classes, kind="stable")
    g_bounds = np.searchsorted(g.classes[g_sort], np.arange(n_cls + 1))
    p_sort = np.argsort(p.classes, kind="stable")
    p_bounds = np.searchsorted(p.classes[p_sort], np.arange(n_cls + 1))
    for c in range(n_cls):
        gi = g_sort[g_bounds[c] : g_bounds[c + 1]]
        pi = p_sort[p_bounds[c] : p_bounds[c + 1]]
        num_gt[c], num_pred[c] = len(gi), len(pi)
        if len(gi) == 0:
            ap_per_class[c] = None
            unmatched[c] = p.scores[pi]  # every detection a false positive (FROC pools them)
            continue
        m = match_detections(g.boxes[gi], g.image[gi], p.boxes[pi], p.scores[pi], p.image[pi], iou_thr)
        ap, precision, recall = voc_ap(m.tp, len(gi))
        ap_per_class[c] = ap
        curves[c] = {"precision": precision, "recall": recall, "scores": m.scores, "tp": m.tp}
    valid = [v for v in ap_per_class.values() if v is not None]
    mean = float(np.mean(valid)) if valid else float("nan")
    out: dict[str, Any] = {"mAP": mean, map_key(iou_thr): mean, "iou_thr": float(iou_thr),
                           "AP_per_class": ap_per_class, "num_gt": num_gt, "num_pred": num_pred, "curves": curves,
                           "unmatched_scores": unmatched}
    return out


def bootstrap_map_ci(
    gt: GroundTruth,
    preds: Mapping[str, Predictions],
    num_classes: int = 14,
    iou_thr: float = 0.4,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the challenge metric (:func:`vinbigdata_map`): the images of ``gt`` resampled
    with replacement ``n_boot`` times (a drawn image keeps its own predictions); None when no resample has a class
    with ground truth."""
    ids = list(gt)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(ids), len(ids))
        g = {f"{k}|{ids[j]}": gt[ids[j]] for k, j in enumerate(pick)}
        p = {f"{k}|{ids[j]}": preds[ids[j]] for k, j in enumerate(pick) if ids[j] in preds}
        m = vinbigdata_map(g, p, num_classes=num_classes, iou_thr=iou_thr)["mAP"]
        if np.isfinite(m):
            values.append(m)
    if not values:
        return None
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return float(np.percentile(values, lo)), float(np.percentile(values, hi))
