"""``tools/readers.py``'s whole job: who the readers of a reader CSV are, how much they agree, the human baseline and
the outlier readers, written as ``readers.csv``, ``readers.json``, ``kappa.csv`` and two plots.

The numbers come from :mod:`detx.evaluation.reader_agreement` (its docstring gives the rules: each reader's
challenge metric against the fusion of the others, the tie rule, the outlier rule, Cohen's kappa).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from detx.core.classes import NO_FINDING
from detx.core.errors import InputError, MissingFileError
from detx.core.io import atomic_write_text, write_json
from detx.data.fusion import FUSION_METHODS
from detx.data.readers import read_reader_csv, require_reader_ids, sniff_format
from detx.evaluation.reader_agreement import (
    MIN_READERS_FOR_OUTLIERS,
    OUTLIER_Z,
    ReaderAgreement,
    reader_agreement,
)
from detx.viz.readers import plot_reader_agreement, plot_reader_class_heatmap
from detx.workflows.prepare import DATASET_FORMATS

logger = logging.getLogger(__name__)

__all__ = ["ReaderReport", "analyse_readers", "format_report"]


@dataclass
class ReaderReport:
    """What :func:`analyse_readers` computed and the files it wrote (paths)."""

    agreement: ReaderAgreement
    csv: str
    dataset: str
    files: list[str] = field(default_factory=list)
    problems: int = 0


def _check_csv(csv: Path, dataset: str | None) -> str:
    """The CSV's format, after checking it exists, fits ``dataset`` and has a rad_id column."""
    if not csv.is_file():
        raise MissingFileError(f"reader CSV not found: {csv}")
    fmt = sniff_format(csv)
    if dataset is not None:
        if dataset not in DATASET_FORMATS:
            raise InputError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_FORMATS)}")
        if fmt not in DATASET_FORMATS[dataset]:
            raise InputError(f"{csv}: a {fmt!r} annotation file is not a {dataset!r} file (expected "
                             f"{' or '.join(DATASET_FORMATS[dataset])})")
    columns = [c.strip() for c in pd.read_csv(csv, nrows=0).columns]
    if "rad_id" not in columns:
        raise InputError(f"{csv} has no rad_id column (its columns are {columns}): reader agreement needs to know "
                         "which radiologist drew each box. The PhysioNet VinDr-CXR test annotations, for one, are a "
                         "consensus without readers; use Kaggle train.csv, PhysioNet annotations_train.csv or a "
                         "VinDr-SpineXR file with rad_id")
    return fmt


def analyse_readers(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    dataset: str | None = None,
    iou_thr: float = 0.4,
    fusion: str = "wbf",
    fusion_iou_thr: float | None = None,
    kaggle_classes: bool = True,
    plots: bool = True,
) -> ReaderReport:
    """Analyse the readers of ``csv`` and write the files into ``out``.

    Args:
        csv: a reader CSV with ``rad_id`` (Kaggle train.csv, PhysioNet annotations_train.csv, VinDr-SpineXR).
        out: output folder (created).
        dataset: "vindr-cxr" or "spinexr" to check the file is one; None takes it from the header.
        iou_thr: the metric's matching IoU (and, by default, the IoU at which the others' boxes fuse).
        fusion: how the other readers' boxes become one ground truth ("wbf", "nms" or "none").
        fusion_iou_thr: the fusion's IoU (default ``iou_thr``).
        kaggle_classes: PhysioNet files: map the 22 local labels onto the Kaggle 14 (else keep 22).
        plots: write ``agreement.png`` and ``reader_class_heatmap.png``.

    Raises:
        InputError: a missing file, a file of another dataset, no rad_id column, no image read by two readers,
            an impossible IoU or fusion method.
    """
    if not 0.0 < iou_thr <= 1.0:
        raise InputError(f"--iou-thr {iou_thr} must be in (0, 1]")
    if fusion_iou_thr is not None and not 0.0 < fusion_iou_thr <= 1.0:
        raise InputError(f"--fusion-iou {fusion_iou_thr} must be in (0, 1]")
    if fusion not in FUSION_METHODS:
        raise InputError(f"unknown fusion method {fusion!r}; expected one of {FUSION_METHODS}")
    csv = Path(csv)
    out = Path(out)
    fmt = _check_csv(csv, dataset)
    table, problems = read_reader_csv(csv, fmt, kaggle_classes=kaggle_classes)
    if problems:
        logger.warning("%s: %d row(s) skipped (see the warnings above)", csv, len(problems))
    require_reader_ids(table, csv, "reader agreement")
    agreement = reader_agreement(table, iou_thr=iou_thr, fusion=fusion, fusion_iou_thr=fusion_iou_thr,
                                 source=str(csv))
    report = ReaderReport(agreement, str(csv), str(table.attrs.get("dataset", "")), problems=len(problems))

    readers_csv = out / "readers.csv"
    atomic_write_text(readers_csv, agreement.readers.to_csv(index=False))
    kappa_csv = out / "kappa.csv"
    atomic_write_text(kappa_csv, agreement.kappa.to_csv(index=False))
    report.files = [str(readers_csv), str(kappa_csv)]
    if plots:
        names = [*agreement.classes, NO_FINDING]
        rads = agreement.readers["rad_id"].tolist()
        col = agreement.score_column
        scores = [None if pd.isna(v) else float(v) for v in agreement.readers[col]]
        report.files.append(str(plot_reader_agreement(rads, scores, agreement.outliers, out / "agreement.png",
                                                      agreement.human_baseline,
                                                      label=f"{agreement.key} vs the others' fusion")))
        shown = [n for n in names if any(agreement.ap_per_class[r].get(n) is not None for r in rads)] or names
        matrix = np.array([[np.nan if agreement.ap_per_class[r].get(n) is None else agreement.ap_per_class[r][n]
                            for n in shown] for r in rads], dtype=float).reshape(len(rads), len(shown))
        report.files.append(str(plot_reader_class_heatmap(rads, shown, matrix, out / "reader_class_heatmap.png",
                                                          label=f"AP{agreement.key[3:]} vs the others' fusion")))
    readers_json = out / "readers.json"
    report.files.append(str(readers_json))
    write_json(readers_json, {"csv": str(csv), "dataset": report.dataset, "format": fmt,
                              "rows_skipped": len(problems), **agreement.to_dict(), "files": report.files}, indent=2)
    return report


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def format_report(report: ReaderReport) -> str:
    """The per-reader table, the human baseline and the outliers, as text."""
    a = report.agreement
    col = a.score_column
    rows = [[r.rad_id, r.images, r.images_scored, _f(r.boxes_per_image, 2), _f(r.normal_share, 2), _f(getattr(r, col)),
             _f(r.robust_z, 2), "yes" if r.outlier else "", _f(r.kappa_vs_others, 3)]
            for r in a.readers.itertuples(index=False)]
    table = tabulate(rows, headers=["reader", "images", "scored", "boxes/image", "normal", col, "robust z",
                                    "outlier", "kappa"], tablefmt="github", disable_numparse=True)
    n_scored = int(a.readers[col].notna().sum())
    lines = [
        table, "",
        f"{len(a.readers)} readers, {a.num_images} images ({a.num_images_shared} read by two or more); ground truth "
        f"of each reader: the {a.fusion} fusion (IoU {a.fusion_iou_thr:g}) of the other readers of its images; "
        f"matching IoU > {a.iou_thr:g}",
        f"human baseline (mean reader {a.key} vs the others' fusion, {n_scored} readers): {_f(a.human_baseline)}",
        f"outliers: {', '.join(a.outliers) if a.outliers else 'none'} (robust z-score of {col} below {OUTLIER_Z:g}, "
        f"median/MAD; none with fewer than {MIN_READERS_FOR_OUTLIERS} scored readers)",
    ]
    return "\n".join(lines)
