"""Image-level normal/abnormal metrics from per-image scores: ROC AUC and the numbers at an operating point.

An image is called abnormal when its score is >= the threshold. The threshold is given, or chosen on
the data by Youden's J (:func:`choose_threshold`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

logger = logging.getLogger(__name__)

__all__ = ["choose_threshold", "image_level_metrics", "per_class_auc"]


def choose_threshold(labels: np.ndarray, p: np.ndarray, method: str = "youden",
                     target_sensitivity: float = 0.9) -> float:
    """Operating threshold on P(abnormal); an image is abnormal when ``p >= threshold``.

    Args:
        labels: (N,) 0/1 ground truth (1 = abnormal); both classes must occur.
        p: (N,) P(abnormal).
        method: ``"youden"`` (maximize sensitivity + specificity - 1) or ``"sensitivity"`` (the highest
            threshold whose sensitivity reaches ``target_sensitivity``: the most specific such point).
    """
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError("choosing a threshold needs both normal and abnormal images")
    fpr, tpr, thr = roc_curve(labels, p)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is +inf (nothing positive)
    if method == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if method == "sensitivity":
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
        ok = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return float(thr[ok[0]])
    raise ValueError(f"unknown threshold method {method!r}; expected 'youden' or 'sensitivity'")


def _ratio(a: int, b: int) -> float | None:
    return float(a) / b if b else None


def image_level_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    """ROC AUC and, at ``threshold``, F1, sensitivity, specificity, accuracy, precision.

    Args:
        labels: (N,) 1 = abnormal, 0 = normal.
        scores: (N,) P(abnormal) (any monotone score works for the AUC).
        threshold: the operating point; None: Youden-optimal on these data (0.5 when only one class occurs).

    Returns:
        ``{"auc", "threshold", "threshold_method" ("given" | "youden" | "default"), "kappa" (Cohen's, of the
        calls at the threshold against the labels), "f1", "sensitivity",
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
    n = len(y)
    p_obs = (tp + tn) / n if n else None
    p_exp = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n) if n else None
    kappa = None if p_obs is None or p_exp == 1.0 else (p_obs - p_exp) / (1.0 - p_exp)
    return {
        "auc": auc, "threshold": float(threshold), "threshold_method": method, "kappa": kappa,
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


#: the metrics at the operating point that get bootstrap confidence intervals
CI_METRICS: tuple[str, ...] = ("auc", "f1", "sensitivity", "specificity")


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of AUC, F1, sensitivity and specificity at a fixed threshold (the
    VinDr-SpineXR protocol: images resampled with replacement ``n_boot`` times).

    A resample whose metric is undefined (one class only) is left out of that metric's interval; None when no
    resample defines it.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    n = len(y)
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        yb, sb = y[idx], s[idx]
        pos, neg = int(yb.sum()), n - int(yb.sum())
        pred = sb >= threshold
        tp = int(np.sum(pred & (yb == 1)))
        fp = int(np.sum(pred & (yb == 0)))
        fn = pos - tp
        if pos and neg:
            values["auc"].append(float(roc_auc_score(yb, sb)))
        if pos:
            values["sensitivity"].append(tp / pos)
        if neg:
            values["specificity"].append((neg - fp) / neg)
        if 2 * tp + fp + fn:
            values["f1"].append(2 * tp / (2 * tp + fp + fn))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if v else None for k, v in values.items()}


def classification_metrics(labels: np.ndarray, probs: np.ndarray, names: Sequence[str],
                           threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The image classifier's numbers: normal/abnormal metrics from output 0 and per-class AUCs of the others.

    Args:
        labels: (N, 1 + K) 0/1 targets (abnormal first, then the K classes).
        probs: (N, 1 + K) probabilities in the same order.
        names: the 1 + K output names (``abnormal``, then the class names).
        threshold: the operating point on P(abnormal); None: Youden-optimal on these images.
        n_boot: bootstrap resamples for the 95% intervals (0: none).

    Returns:
        :func:`image_level_metrics` of the abnormal output plus ``ci`` ({metric: [low, high]} or None),
        ``auc_per_class`` ({class: AUC or None}) and ``auc_macro`` (mean over the classes with an AUC; None
        without any).
    """
    y = np.asarray(labels).astype(np.int64).reshape(len(labels), -1)
    p = np.asarray(probs, np.float64).reshape(len(probs), -1)
    if y.shape != p.shape or y.shape[1] != len(names):
        raise ValueError(f"labels {y.shape}, probabilities {p.shape} and {len(names)} output names do not match")
    out = image_level_metrics(y[:, 0], p[:, 0], threshold)
    ci = bootstrap_ci(y[:, 0], p[:, 0], out["threshold"], n_boot, seed) if n_boot > 0 else {}
    out["ci"] = {k: (list(v) if v is not None else None) for k, v in ci.items()}
    per_class = per_class_auc(y[:, 1:], p[:, 1:], list(names[1:])) if len(names) > 1 else {}
    out["auc_per_class"] = per_class
    defined = [v for v in per_class.values() if v is not None]
    out["auc_macro"] = float(np.mean(defined)) if defined else None
    return out


def study_level_metrics(labels: np.ndarray, probs: np.ndarray, study_ids: Sequence[str],
                        body_parts: Sequence[str] | None = None, threshold: float | None = None,
                        n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The MURA protocol: a study's probability is the mean of its images', its label the (shared) image label.

    Args:
        labels: (N,) per image, 0/1.
        probs: (N,) per image, P(abnormal).
        study_ids: (N,) the study of each image.
        body_parts: (N,) optional body part of each image (a study lies in one).
        threshold: the operating point on the study probability; None: Youden-optimal over all studies.
        n_boot: bootstrap resamples (of studies) for the 95% intervals.

    Returns:
        ``{"overall": metrics, "per_body_part": {part: metrics}, "num_studies": n}`` where metrics are
        :func:`image_level_metrics` of the studies (AUC, F1, sensitivity, specificity, kappa at the threshold) plus
        ``ci``; every body part is scored at the overall threshold.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, np.float64).ravel()
    sid = np.asarray([str(s) for s in study_ids])
    if not (len(y) == len(p) == len(sid)):
        raise ValueError(f"{len(y)} labels, {len(p)} probabilities and {len(sid)} study ids")
    studies, inv = np.unique(sid, return_inverse=True)
    s_prob = np.bincount(inv, weights=p) / np.bincount(inv)
    s_label = np.zeros(len(studies), np.int64)
    np.maximum.at(s_label, inv, y)
    overall = image_level_metrics(s_label, s_prob, threshold)
    if n_boot > 0:
        ci = bootstrap_ci(s_label, s_prob, overall["threshold"], n_boot, seed)
        overall["ci"] = {k: (list(v) if v is not None else None) for k, v in ci.items()}
    out: dict[str, Any] = {"overall": overall, "per_body_part": {}, "num_studies": len(studies)}
    if body_parts is not None:
        part_of = {}
        for s, bp in zip(sid, body_parts):
            part_of.setdefault(s, str(bp))
        s_part = np.array([part_of[s] for s in studies])
        for bp in sorted(set(s_part)):
            m = s_part == bp
            part = image_level_metrics(s_label[m], s_prob[m], overall["threshold"])
            if n_boot > 0:
                ci = bootstrap_ci(s_label[m], s_prob[m], overall["threshold"], n_boot, seed)
                part["ci"] = {k: (list(v) if v is not None else None) for k, v in ci.items()}
            part["num_studies"] = int(m.sum())
            out["per_body_part"][bp] = part
    return out
