"""Image-level normal/abnormal metrics from per-image scores: ROC AUC and the numbers at an operating point.

An image is called abnormal when its score is >= the threshold. The threshold is given, or chosen on
the data by Youden's J (:func:`detx.inference.classifier.choose_threshold`, the one implementation of it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from detx.data.submission import Predictions
from detx.inference.classifier import choose_threshold, p_abnormal_rule

logger = logging.getLogger(__name__)

__all__ = ["image_level_metrics", "per_class_auc", "image_scores_from_predictions"]


def _ratio(a: int, b: int) -> float | None:
    return float(a) / b if b else None


def image_level_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    """ROC AUC and, at ``threshold``, F1, sensitivity, specificity, accuracy, precision.

    Args:
        labels: (N,) 1 = abnormal, 0 = normal.
        scores: (N,) P(abnormal) (any monotone score works for the AUC).
        threshold: the operating point; None: Youden-optimal on these data (0.5 when only one class occurs).

    Returns:
        ``{"auc", "threshold", "threshold_method" ("given" | "youden" | "default"), "f1", "sensitivity",
        "specificity", "accuracy", "precision", "num_abnormal", "num_normal", "tp", "fp", "tn", "fn"}``; a
        ratio whose denominator is 0 (e.g. AUC with one class only) is None.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.isfinite(s).all():
        raise ValueError("image-level scores must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("image-level labels must be 0 or 1")
    both = len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, s)) if both else None
    if threshold is not None:
        method = "given"
    elif both:
        threshold, method = choose_threshold(y, s, "youden"), "youden"
    else:
        logger.warning("image-level metrics: only one class among %d images; AUC undefined, threshold 0.5", len(y))
        threshold, method = 0.5, "default"
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return {
        "auc": auc, "threshold": float(threshold), "threshold_method": method,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp), "accuracy": _ratio(tp + tn, len(y)), "precision": _ratio(tp, tp + fp),
        "num_abnormal": int(np.sum(y == 1)), "num_normal": int(np.sum(y == 0)), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def per_class_auc(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    """ROC AUC of each class's presence (labels (N, K) 0/1) from per-class scores (N, K); None when a class
    is present in all or none of the images."""
    y = np.asarray(labels).astype(np.int64).reshape(-1, len(class_names))
    s = np.asarray(scores, np.float64).reshape(-1, len(class_names))
    out: dict[str, float | None] = {}
    for k, name in enumerate(class_names):
        out[name] = float(roc_auc_score(y[:, k], s[:, k])) if len(np.unique(y[:, k])) == 2 else None
    return out


def image_scores_from_predictions(pred: Predictions, num_classes: int, rule: str = "max") -> float:
    """P(abnormal) of an image from a submission's entries: 1 - the No-finding confidence (class
    ``num_classes``; the highest if several) when present, else ``p_abnormal_rule`` of the finding scores."""
    nf = pred.classes == num_classes
    if nf.any():
        return float(1.0 - np.max(pred.scores[nf]))
    return p_abnormal_rule(pred.scores[pred.classes < num_classes], rule)
