"""The per-body-part report of a prepared MURA dataset (and of a classifier's predictions on it): counts, label
balance per part, train vs valid (the EDA bar plot), and with a classification CSV the study-level metrics per part
at a per-part Youden threshold beside the global one (MURA's per-part operating points).

Writes ``OUT/body_parts.csv`` (one row per part and split), ``OUT/body_parts.png`` and ``OUT/body_parts.json``
(``counts``, ``unknown`` (images of a part not among the model's / MURA's seven: named, counted, skipped),
``thresholds`` when predictions are given).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import MURA_BODY_PARTS
from detx.core.errors import InputError, MissingFileError, StrictModeError
from detx.core.io import atomic_write_text, write_json
from detx.evaluation.body_part import IGNORE, body_part_index, per_part_thresholds
from detx.viz.body_parts import plot_body_parts

logger = logging.getLogger(__name__)

__all__ = ["BodyPartReport", "body_part_report"]


class UnknownBodyPartError(StrictModeError):
    """An image of an unknown body part, under --strict."""


@dataclass
class BodyPartReport:
    counts: list[dict[str, Any]]
    unknown: dict[str, list[str]] = field(default_factory=dict)  # part -> image ids
    thresholds: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'part':<12} {'split':<6} {'studies':>7} {'images':>7} {'abnormal':>9}"]
        for r in self.counts:
            lines.append(f"{r['body_part']:<12} {r['split']:<6} {r['studies']:>7} {r['images']:>7} "
                         f"{r['abnormal_studies'] / max(r['studies'], 1):>8.1%}")
        if self.unknown:
            lines.append("skipped, unknown body part: " + ", ".join(f"{k} ({len(v)} images)"
                                                                     for k, v in self.unknown.items()))
        if self.thresholds:
            lines.append(f"study-level thresholds (global {self.thresholds['_global']['threshold']:.3f}):")
            for part, t in self.thresholds.items():
                if part.startswith("_"):
                    continue
                a, g = t["at_part"], t["at_global"]
                lines.append(f"  {part:<12} n={t['n']:<5} AUC {_f(a['auc'])}  threshold {t['threshold']:.3f} "
                             f"({t['threshold_source']}): sens {_f(a['sensitivity'])} spec {_f(a['specificity'])}"
                             f" | at global: sens {_f(g['sensitivity'])} spec {_f(g['specificity'])}")
        return "\n".join(lines)


def _f(v) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def body_part_report(data_root: str | os.PathLike, out: str | os.PathLike, pred: str | os.PathLike | None = None,
                     parts: list[str] | tuple[str, ...] = MURA_BODY_PARTS, strict: bool = False,
                     plot: bool = True) -> BodyPartReport:
    """See the module docstring.

    Args:
        data_root: a prepared MURA dataset (``meta.csv`` with image_id, study_id, body_part, label, split).
        out: output folder.
        pred: a classification CSV (``image_id, p_abnormal, ...``) of some of its images: scored per study (the mean
            of its images' probabilities, the MURA protocol) and per part.
        parts: the known body parts.
        strict: stop at the first image of an unknown part (exit 1).

    Raises:
        MissingFileError / InputError: no meta.csv, missing columns, predictions for no known image.
    """
    meta_path = Path(data_root) / "meta.csv"
    if not meta_path.is_file():
        raise MissingFileError(f"{meta_path} does not exist: --data must be a prepared MURA dataset")
    meta = pd.read_csv(meta_path, dtype={"image_id": str, "study_id": str})
    need = {"image_id", "study_id", "body_part", "label"}
    if need - set(meta.columns):
        raise InputError(f"{meta_path} lacks the column(s) {sorted(need - set(meta.columns))} (prepare it with "
                         "datasets/prepare_mura.py)")
    if "split" not in meta.columns:
        meta["split"] = "all"
    idx = np.array([body_part_index(parts, v) for v in meta["body_part"]])
    unknown: dict[str, list[str]] = {}
    for i in np.flatnonzero(idx == IGNORE):
        name = str(meta["body_part"].iloc[i])
        if strict:
            raise UnknownBodyPartError(f"{meta_path} image {meta['image_id'].iloc[i]}: body part {name!r} is not one "
                                       f"of {list(parts)}")
        unknown.setdefault(name, []).append(str(meta["image_id"].iloc[i]))
    for name, ids in unknown.items():
        logger.warning("%d image(s) of unknown body part %r skipped, e.g. %s", len(ids), name, ids[:3])
    meta = meta[idx != IGNORE].copy()
    meta["body_part"] = [list(parts)[k] for k in idx[idx != IGNORE]]
    counts = []
    for (part, split), g in meta.groupby(["body_part", "split"]):
        studies = g.groupby("study_id")["label"].max()
        counts.append({"body_part": part, "split": split, "images": int(len(g)), "studies": int(len(studies)),
                       "abnormal_studies": int(studies.sum()), "abnormal_images": int(g["label"].sum())})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = BodyPartReport(counts, unknown)
    atomic_write_text(out / "body_parts.csv", pd.DataFrame(counts).to_csv(index=False))
    report.files.append(str(out / "body_parts.csv"))
    if plot and counts:
        report.files.append(str(plot_body_parts(counts, out / "body_parts.png")))
    if pred is not None:
        p = pd.read_csv(pred, dtype={"image_id": str})
        if not {"image_id", "p_abnormal"} <= set(p.columns):
            raise InputError(f"{pred}: expected a classification CSV with image_id and p_abnormal")
        joined = meta.merge(p[["image_id", "p_abnormal"]], on="image_id", how="inner")
        if joined.empty:
            raise InputError(f"{pred} scores none of the {len(meta)} images of {meta_path}")
        studies = joined.groupby("study_id").agg(body_part=("body_part", "first"), label=("label", "max"),
                                                 p=("p_abnormal", "mean"))
        report.thresholds = per_part_thresholds(studies["body_part"], studies["label"], studies["p"])
    write_json(out / "body_parts.json", {"counts": counts, "unknown": {k: {"count": len(v), "images": v}
                                                                       for k, v in unknown.items()},
                                         "thresholds": report.thresholds}, indent=2)
    report.files.append(str(out / "body_parts.json"))
    return report
