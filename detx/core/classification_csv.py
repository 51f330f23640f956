"""The classification CSV: ``image_id, p_abnormal[, label, status], p_<class> ...[, body_part, part_<PART> ...]``, one
row per image.

Written by ``tools/predict.py`` (``classification.csv``: from an image classifier, or derived from detections) and
by the training evaluator; read by ``tools/evaluate.py``, which tells it from a submission by its columns.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detx.core.errors import InputError
from detx.core.io import atomic_path

__all__ = ["ClassificationTable", "is_classification_csv", "read_classification_csv", "write_classification_csv"]


@dataclass
class ClassificationTable:
    """image_id -> P(abnormal), and per class name -> image_id -> P(class) for the ``p_<class>`` columns."""

    p_abnormal: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""


def is_classification_csv(path: str | os.PathLike) -> bool:
    """A CSV with ``image_id`` and ``p_abnormal`` and no ``PredictionString`` (a submission has the latter)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except OSError:
        return False
    return "image_id" in header and "p_abnormal" in header and "PredictionString" not in header


def read_classification_csv(path: str | os.PathLike) -> ClassificationTable:
    """Read a classification CSV; rows without a number (an unreadable image's empty cells) keep only what they have.

    Raises:
        InputError: a missing column, a duplicate image, or a probability that is not a number in [0, 1] (named).
    """
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read classification CSV {path}: {e}") from e
    for col in ("image_id", "p_abnormal"):
        if col not in df.columns:
            raise InputError(f"{path}: no {col!r} column (columns: {list(df.columns)})")
    dup = df["image_id"][df["image_id"].duplicated()].tolist()
    if dup:
        raise InputError(f"{path}: duplicate image_id(s) {dup[:5]}")
    ids = df["image_id"].astype(str).tolist()

    def column(name: str, allow_empty: bool) -> dict[str, float]:
        v = pd.to_numeric(df[name], errors="coerce").to_numpy(np.float64)
        bad = (~np.isfinite(v) & (df[name].notna().to_numpy() | (not allow_empty))) | (v < 0) | (v > 1)
        if bad.any():
            rows = [f"{ids[i]}={df[name].iloc[i]}" for i in np.flatnonzero(bad)[:5]]
            raise InputError(f"{path}: {int(bad.sum())} {name} value(s) not a number in [0, 1]: {', '.join(rows)}")
        return {i: float(x) for i, x in zip(ids, v) if np.isfinite(x)}

    per_class = {c[2:]: column(c, True) for c in df.columns if c.startswith("p_") and c != "p_abnormal"}
    return ClassificationTable(column("p_abnormal", False), per_class, str(path))


def write_classification_csv(path: str | os.PathLike, image_ids: Sequence[str], p_abnormal: Mapping[str, float],
                             per_class: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float,
                             failed: Mapping[str, str] | None = None, body_parts: Sequence[str] = (),
                             part_probs: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ``image_id, p_abnormal, label, status, p_<class> ...[, body_part, part_<PART> ...]`` atomically.

    ``label`` is 1 (abnormal) when ``p_abnormal >= threshold``; ``per_class[image_id]`` holds the class
    probabilities in ``classes`` order. ``status`` is ``ok``, or ``unreadable`` for an image that could not be
    decoded (``failed``): such a row gets p_abnormal 0, label 0 (as the submission's No finding 1.0) and empty
    classes, and only ``status`` tells it from a confident normal. With ``body_parts`` (a classifier with a body-part
    head), ``body_part`` is the most probable part and ``part_<PART>`` its probabilities (``part_probs[image_id]``
    in ``body_parts`` order); they are not ``p_`` columns, so readers of the class probabilities ignore them.
    """
    failed = failed or {}
    part_probs = part_probs or {}
    parts = list(body_parts)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image_id", "p_abnormal", "label", "status", *(f"p_{c}" for c in classes),
                    *(["body_part", *(f"part_{b}" for b in parts)] if parts else [])])
        for i in image_ids:
            if i in failed:
                w.writerow([i, 0.0, 0, "unreadable", *([""] * len(classes)), *([""] * (len(parts) + 1) if parts else [])])
                continue
            p = p_abnormal[i]
            row = [i, f"{p:.6g}", int(p >= threshold), "ok", *(f"{v:.6g}" for v in per_class.get(i, []))]
            if parts:
                q = np.asarray(part_probs[i], np.float64)
                row += [parts[int(np.argmax(q))], *(f"{v:.6g}" for v in q)]
            w.writerow(row)
    return Path(path)
