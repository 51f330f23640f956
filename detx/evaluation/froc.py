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

__all__ = ["FROC_FP_RATES", "froc", "froc_curve", "froc_curve_from_matches", "froc_from_vinbigdata"]

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
    return froc_curve_from_matches(scores, tps, len(g.classes), len(g.image_ids))


def froc_curve_from_matches(scores: Sequence[np.ndarray], tps: Sequence[np.ndarray], num_lesions: int,
                            num_images: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`froc_curve` from the per-class VOC matching already done (e.g. by the challenge metric: its
    ``curves[c]["scores"]`` / ``["tp"]`` and ``unmatched_scores``), so the matching is not run twice."""
    n_images = max(num_images, 1)
    scores = [np.asarray(s, np.float64) for s in scores if len(s)]
    tps = [np.asarray(t, bool) for t in tps if len(t)]
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


def froc_from_vinbigdata(vb: Mapping[str, Any], num_classes: int, num_images: int,
                         fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, Any]:
    """:func:`froc` from a :func:`detx.evaluation.vinbigdata.vinbigdata_map` result of the same ground truth,
    predictions and IoU threshold (the same VOC matching, reused); equal to :func:`froc` on them."""
    scores, tps = [], []
    for c in range(num_classes):
        if c in vb["curves"]:
            scores.append(vb["curves"][c]["scores"])
            tps.append(vb["curves"][c]["tp"])
        elif c in vb["unmatched_scores"]:
            scores.append(vb["unmatched_scores"][c])
            tps.append(np.zeros(len(vb["unmatched_scores"][c]), bool))
    num_lesions = int(sum(vb["num_gt"][c] for c in range(num_classes)))
    return _summarize(*froc_curve_from_matches(scores, tps, num_lesions, num_images), fp_rates)


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
    return _summarize(*froc_curve(gt, preds, num_classes, iou_thr), fp_rates)


def _summarize(fppi: np.ndarray, sens: np.ndarray, num_lesions: int, fp_rates: Sequence[float]) -> dict[str, Any]:
    if num_lesions == 0:
        at = [None] * len(fp_rates)
        mean = None
    else:
        at = [float(np.max(sens[fppi <= f])) for f in fp_rates]
        mean = float(np.mean(at))
    return {"fp_rates": [float(f) for f in fp_rates], "sensitivity": at, "mean": mean, "num_lesions": num_lesions,
            "curve": {"fp_per_image": fppi, "sensitivity": sens}}
