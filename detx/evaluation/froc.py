"""FROC: lesion-level sensitivity against the number of false positives per image.

Detections of all finding classes are pooled in descending confidence; each is a true positive when
the per-class VOC matching of the challenge metric (:func:`match_detections`, same IoU threshold) says
so. Sweeping the confidence threshold gives the curve (sensitivity = matched lesions / all lesions,
FP per image = false positives / images); detections with equal confidence enter together. The
sensitivity at a rate f is the highest sensitivity reached with at most f false positives per image,
reported at 1/8 .. 8 FP per image and as their mean (the usual lesion-detection summary, e.g. LUNA16).
"No finding" entries are not lesions and are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detx.core.predictions import GroundTruth, Predictions
from detx.evaluation.matching import flatten_ground_truth, flatten_predictions, match_detections

__all__ = ["FROC_FP_RATES", "froc", "froc_curve"]

FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def froc_curve(
    gt: GroundTruth, preds: Mapping[str, Predictions], num_classes: int, iou_thr: float = 0.4
) -> tuple[np.ndarray, np.ndarray, int]:
    """The FROC operating points.

    Returns:
        (fp_per_image, sensitivity, num_lesions): the points from the highest threshold down, starting at
        (0, 0); sensitivity is NaN when there is no lesion.
    """
    g = flatten_ground_truth(gt, num_classes, add_no_finding=False)
    p = flatten_predictions(preds, g.image_ids, max_class=num_classes)
    p = p.select(p.classes < num_classes)
    scores, tps = [], []
    for c in range(num_classes):
        gi, pi = g.classes == c, p.classes == c
        if not pi.any():
            continue
        m = match_detections(g.boxes[gi], g.image[gi], p.boxes[pi], p.scores[pi], p.image[pi], iou_thr)
        scores.append(m.scores)
        tps.append(m.tp)
    num_lesions = len(g.classes)
    n_images = max(len(g.image_ids), 1)
    if not scores:
        return np.zeros(1), np.full(1, np.nan if num_lesions == 0 else 0.0), num_lesions
    s = np.concatenate(scores)
    tp = np.concatenate(tps)
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], tp[order]
    last_of_tie = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    ctp = np.cumsum(tp)[last_of_tie]
    cfp = np.cumsum(~tp)[last_of_tie]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = ctp / num_lesions if num_lesions else np.full(len(ctp), np.nan)
    return np.r_[0.0, cfp / n_images], np.r_[0.0 if num_lesions else np.nan, sens], num_lesions


def froc(
    gt: GroundTruth,
    preds: Mapping[str, Predictions],
    num_classes: int,
    iou_thr: float = 0.4,
    fp_rates: Sequence[float] = FROC_FP_RATES,
) -> dict[str, Any]:
    """Sensitivity at the given FP-per-image rates and its mean.

    Returns:
        ``{"fp_rates": [...], "sensitivity": [...], "mean": float, "num_lesions": int, "curve":
        {"fp_per_image": ndarray, "sensitivity": ndarray}}``; sensitivities and mean are None without lesions.
    """
    fppi, sens, num_lesions = froc_curve(gt, preds, num_classes, iou_thr)
    if num_lesions == 0:
        at = [None] * len(fp_rates)
        mean = None
    else:
        at = [float(np.max(sens[fppi <= f])) for f in fp_rates]
        mean = float(np.mean(at))
    return {"fp_rates": [float(f) for f in fp_rates], "sensitivity": at, "mean": mean, "num_lesions": num_lesions,
            "curve": {"fp_per_image": fppi, "sensitivity": sens}}
