"""Body-part metrics (MURA): how well a body-part head names the part, and per-part operating thresholds on
P(abnormal).

- :func:`body_part_index`: a part name -> its index among the model's parts (-100: unknown, ignored).
- :func:`body_part_metrics`: accuracy, macro F1, per-part precision / recall / F1 / one-vs-rest AUC and the confusion
  matrix of the part probabilities (the counts and F1s computed here from the confusion matrix; AUC from
  :func:`detx.evaluation.image_level.per_class_auc`); images of an unknown part are counted, not scored.
- :func:`per_part_thresholds`: a Youden threshold on P(abnormal) per body part (MURA's per-part models each have
  their own operating point), with the global one for parts that lack normal or abnormal images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detx.evaluation.image_level import choose_threshold, image_level_metrics, per_class_auc

__all__ = ["IGNORE", "body_part_index", "body_part_metrics", "per_part_thresholds"]

IGNORE = -100


def body_part_index(parts: Sequence[str], value: Any) -> int:
    """The index of ``value`` in ``parts`` (case-insensitive, ``XR_`` optional: ``wrist`` -> ``XR_WRIST``), or -100
    when it is missing or not one of them."""
    if not isinstance(value, str) or not value.strip():
        return IGNORE
    v = value.strip().upper()
    v = v if v.startswith("XR_") else f"XR_{v}"
    upper = [p.upper() for p in parts]
    return upper.index(v) if v in upper else IGNORE


def body_part_metrics(true: Sequence[int], probs: np.ndarray, parts: Sequence[str]) -> dict[str, Any]:
    """Metrics of part probabilities ``probs`` (N, P) against part indices ``true`` (N,; -100 = unknown).

    Returns:
        ``n`` (scored images), ``unknown`` (images of an unknown part, not scored), ``accuracy``, ``macro_f1`` (over
        the parts that occur or are predicted), ``auc_macro`` (mean one-vs-rest AUC over the parts with both
        classes), ``per_part`` ({part: n, precision, recall, f1, auc}), ``confusion`` (P x P, rows true).
    """
    true = np.asarray(true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    parts = list(parts)
    if probs.ndim != 2 or probs.shape[1] != len(parts) or len(probs) != len(true):
        raise ValueError(f"body-part probabilities of shape {probs.shape} for {len(true)} images and {len(parts)} parts")
    known = true != IGNORE
    t, p = true[known], probs[known]
    n_parts = len(parts)
    if ((t < 0) | (t >= n_parts)).any():
        raise ValueError(f"body-part indices outside 0..{n_parts - 1}")
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    conf = np.bincount(t * n_parts + pred, minlength=n_parts * n_parts).reshape(n_parts, n_parts)
    tp = np.diag(conf).astype(float)
    support, predicted = conf.sum(axis=1).astype(float), conf.sum(axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    onehot = np.eye(n_parts, dtype=np.int64)[t] if len(t) else np.zeros((0, n_parts), np.int64)
    aucs = per_class_auc(onehot, p, parts) if len(t) else dict.fromkeys(parts)
    valid = [v for v in aucs.values() if v is not None]
    return {
        "n": int(len(t)), "unknown": int((~known).sum()),
        "accuracy": float(tp.sum() / len(t)) if len(t) else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "auc_macro": float(np.mean(valid)) if valid else None,
        "per_part": {part: {"n": int(support[k]), "precision": float(precision[k]), "recall": float(recall[k]),
                            "f1": float(f1[k]), "auc": aucs[part]} for k, part in enumerate(parts)},
        "confusion": conf.tolist(),
    }


def per_part_thresholds(parts: Sequence[str], labels: np.ndarray, p: np.ndarray) -> dict[str, dict[str, Any]]:
    """A Youden threshold on P(abnormal) per body part, with the part's metrics at it and at the global threshold.

    Args:
        parts: (N,) the body part of each image (or study).
        labels: (N,) 0/1 abnormal.
        p: (N,) P(abnormal).

    Returns:
        ``{part: {"n", "abnormal", "threshold", "threshold_source" ("part" or "global"), "at_part": metrics,
        "at_global": metrics}}`` plus ``"_global": {"threshold"}``.
    """
    parts = np.asarray([str(x) for x in parts])
    labels = np.asarray(labels).astype(int)
    p = np.asarray(p, dtype=np.float64)
    global_thr = choose_threshold(labels, p) if len(np.unique(labels)) == 2 else 0.5
    out: dict[str, dict[str, Any]] = {"_global": {"threshold": float(global_thr)}}
    for part in sorted(set(parts.tolist())):
        m = parts == part
        y, q = labels[m], p[m]
        own = len(np.unique(y)) == 2
        thr = choose_threshold(y, q) if own else global_thr
        out[part] = {"n": int(m.sum()), "abnormal": int(y.sum()), "threshold": float(thr),
                     "threshold_source": "part" if own else "global",
                     "at_part": image_level_metrics(y, q, thr), "at_global": image_level_metrics(y, q, global_thr)}
    return out
