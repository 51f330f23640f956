"""``tools/readers.py``'s whole job: who the readers of a reader CSV are (panels, drawing styles), how much they agree,
the human baseline and the outlier readers, written as ``readers.csv``, ``readers.json``, ``kappa.csv`` and two plots.

The numbers come from :mod:`detx.evaluation.reader_agreement` (its docstring gives the rules: each reader's
challenge metric against the fusion of the others, the tie rule, the outlier rules, the honest baseline, Cohen's
kappa), :mod:`detx.evaluation.reader_styles` (drawing styles, style groups) and :func:`detx.data.readers.reader_panels`.
Documentation with the real VinBigData output: ``docs/readers.md``.
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
    PAIRED_ALPHA,
    PAIRED_DELTA,
    ReaderAgreement,
    reader_agreement,
)
from detx.evaluation.reader_styles import MIN_STYLE_BOXES, STYLE_CUT
from detx.viz.readers import plot_reader_agreement, plot_reader_class_heatmap

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
        # imported here: prepare pulls in the DICOM stack, which the reader analysis does not need
        from detx.workflows.prepare import DATASET_FORMATS

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


def read_image_sizes(path: str | os.PathLike, image_ids: set[str]) -> dict[str, tuple[float, float]]:
    """image_id -> (width, height) in original pixels from ``meta.csv`` of a prepared dataset (``orig_width``,
    ``orig_height``) or any size table (``image_id, width, height``); it must cover every image of ``image_ids``.

    Raises:
        InputError: a missing file, no size columns, a size that is not a positive number, or images of the CSV it
            lacks (counted and the first ones named).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--meta file not found: {path}")
    df = pd.read_csv(path, dtype={"image_id": str})
    df.columns = [c.strip() for c in df.columns]
    for wc, hc in (("orig_width", "orig_height"), ("width", "height")):
        if {"image_id", wc, hc} <= set(df.columns):
            break
    else:
        raise InputError(f"--meta {path}: needs image_id and orig_width, orig_height (a prepared dataset's meta.csv) "
                         f"or width, height; its columns are {list(df.columns)}")
    w = pd.to_numeric(df[wc], errors="coerce").to_numpy(dtype=float)
    h = pd.to_numeric(df[hc], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"--meta {path} line {i + 2}: image {df['image_id'].iat[i]} has no positive {wc}/{hc} "
                         f"({df[wc].iat[i]!r}, {df[hc].iat[i]!r})")
    sizes = dict(zip(df["image_id"].astype(str).str.strip(), zip(w.tolist(), h.tolist())))
    missing = sorted(image_ids - set(sizes))
    if missing:
        raise InputError(f"--meta {path} lacks {len(missing)} of the {len(image_ids)} images of the CSV (e.g. "
                         f"{', '.join(missing[:3])}): give the meta.csv of a dataset prepared from this CSV, or leave "
                         "--meta out for box sizes in pixels")
    return sizes


def analyse_readers(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    dataset: str | None = None,
    iou_thr: float = 0.4,
    fusion: str = "wbf",
    fusion_iou_thr: float | None = None,
    kaggle_classes: bool = True,
    plots: bool = True,
    meta: str | os.PathLike | None = None,
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
        meta: a prepared dataset's ``meta.csv`` (or a size table ``image_id, width, height``) covering the CSV's
            images: box sizes and positions relative to the image (:func:`read_image_sizes`).

    Raises:
        InputError: a missing file, a file of another dataset, no rad_id column, no image read by two readers,
            an impossible IoU or fusion method, a --meta file that lacks images of the CSV; nothing is written.
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
    sizes = read_image_sizes(meta, set(table["image_id"].astype(str))) if meta is not None else None
    agreement = reader_agreement(table, iou_thr=iou_thr, fusion=fusion, fusion_iou_thr=fusion_iou_thr,
                                 source=str(csv), image_sizes=sizes)
    report = ReaderReport(agreement, str(csv), str(table.attrs.get("dataset", "")), problems=len(problems))

    readers_csv = out / "readers.csv"
    atomic_write_text(readers_csv, agreement.readers.to_csv(index=False))
    kappa_csv = out / "kappa.csv"
    atomic_write_text(kappa_csv, agreement.kappa.to_csv(index=False))
    report.files = [str(readers_csv), str(kappa_csv)]
    if plots:
        names = [*agreement.classes, NO_FINDING]
        rads = agreement.readers["rad_id"].tolist()
        col = f"{agreement.key}_with_box"  # on normal images a reader who also saw nothing scores 1: left out
        scores = [None if pd.isna(v) else float(v) for v in agreement.readers[col]]
        report.files.append(str(plot_reader_agreement(rads, scores, agreement.outliers, out / "agreement.png",
                                                      agreement.baseline.get(agreement.key),
                                                      label=f"{agreement.key} vs the others' fusion,\n"
                                                            "images with a box")))
        shown = [n for n in names if any(agreement.ap_per_class[r].get(n) is not None for r in rads)] or names
        matrix = np.array([[np.nan if agreement.ap_per_class[r].get(n) is None else agreement.ap_per_class[r][n]
                            for n in shown] for r in rads], dtype=float).reshape(len(rads), len(shown))
        report.files.append(str(plot_reader_class_heatmap(rads, shown, matrix, out / "reader_class_heatmap.png",
                                                          label=f"AP{agreement.key[3:]} vs the others' fusion")))
    readers_json = out / "readers.json"
    report.files.append(str(readers_json))
    write_json(readers_json, {"csv": str(csv), "dataset": report.dataset, "format": fmt,
                              "meta": str(meta) if meta is not None else None,
                              "rows_skipped": len(problems), **agreement.to_dict(), "files": report.files}, indent=2)
    return report


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}" if v >= 0.1 or v == 0 else f"{v:.1%}"


def format_report(report: ReaderReport, max_panels: int = 5) -> str:
    """The per-reader table, the panels, the style groups, the human baseline and the outliers, as text."""
    a = report.agreement
    col = a.score_column
    rows = [[r.rad_id, r.images, r.boxes, _f(r.boxes_per_abnormal_image, 2), _f(r.normal_share, 2), _f(getattr(r, col)),
             _f(getattr(r, f"{a.key}_with_box")), _f(r.robust_z, 2), _f(r.paired_diff, 3),
             "-" if not np.isfinite(r.sign_test_p) else f"{r.sign_test_p:.2g}", "OUTLIER" if r.outlier else "", r.style_group,
             _f(r.kappa_vs_others, 3)]
            for r in a.readers.itertuples(index=False)]
    table = tabulate(rows, headers=["reader", "images", "boxes", "boxes/abn. image", "normal", col, "with a box", "robust z",
                                    "paired d", "sign p", "outlier", "style", "kappa"], tablefmt="github",
                     disable_numparse=True)
    lines = [table, "",
             f"{len(a.readers)} readers, {a.num_images} images ({a.num_images_shared} read by two or more, "
             f"{a.images_abnormal} with a box); ground truth of each reader: the {a.fusion} fusion "
             f"(IoU {a.fusion_iou_thr:g}) of the other readers of its images; matching IoU > {a.iou_thr:g}"]
    # panels: the largest, and how their abnormal share differs from the rest's
    p = a.panels
    if p:
        lines.append(f"panels (reader sets that read the same images): {len(p)}; the largest:")
        for q in p[:max_panels]:
            bpi = q["boxes_per_abnormal_image"]
            lines.append(f"  {q['panel']:<16} {q['images']:>6} images ({q['images'] / a.num_images:.0%}), "
                         f"abnormal {_share(q['abnormal_share'])}"
                         + (f", {bpi:.1f} boxes per abnormal image per reader" if bpi is not None else ""))
        if len(p) > max_panels:
            n = sum(q["images"] for q in p[max_panels:])
            ab = sum(q["abnormal_images"] for q in p[max_panels:])
            lines.append(f"  the other {len(p) - max_panels} panels: {n} images, abnormal {_share(ab / n if n else None)}")
        top = p[0]
        rest_n = a.num_images - top["images"]
        rest_ab = a.images_abnormal - top["abnormal_images"]
        if rest_n and top["images"] >= 0.1 * a.num_images:
            lines.append(f"  {top['panel']} read {top['images'] / a.num_images:.0%} of the images and "
                         f"{top['abnormal_images']} of the {a.images_abnormal} abnormal ones: abnormal "
                         f"{_share(top['abnormal_share'])} of its images against {_share(rest_ab / rest_n)} of "
                         "everyone else's")
    st = a.styles
    if st is not None:
        size = "relative size" if st.relative else "size"
        lines.append(f"style groups (class mix and box {size}; average linkage of noise-corrected Jensen-Shannon "
                     f"divergences cut at {STYLE_CUT:g} bits):")
        for g in st.groups:
            top3 = ", ".join(f"{c} {v:.0%}" for c, v in list(g["class_mix"].items())[:3])
            med = (f"median box {g['median_box_size_rel']:.0%} of the image side" if st.relative
                   else f"median box {g['median_box_size_px']:.0f} px a side")
            bpi = g["boxes_per_abnormal_image"]
            lines.append(f"  {g['name']}: {'+'.join(g['readers'])} ({g['boxes']} boxes; {med}; "
                         + (f"{bpi:.1f} boxes per abnormal image; " if bpi is not None else "") + f"{top3})")
        if st.too_few_boxes:
            lines.append(f"  too few boxes to compare (< {MIN_STYLE_BOXES}): {', '.join(st.too_few_boxes)}")
    b = a.baseline
    hb = b.get(a.key)
    lines.append(f"human baseline ({a.key} of each reader against the fusion of its co-readers, pooled over the "
                 f"{b.get('images', 0)} images with a box; compare with a model's {a.key} on the same images): "
                 f"{_f(hb)}")
    for q in b.get("per_panel", []):
        lines.append(f"  {q['panel']}: {_f(q[a.key])} on {q['abnormal_images']} images with a box"
                     + (f" ({q['panels']} panels)" if "panels" in q else ""))
    n_scored = int(a.readers[col].notna().sum())
    lines.append(f"  (the mean reader {a.key} vs the others' fusion over all images, {n_scored} readers: "
                 f"{_f(a.human_baseline)}; normal images lift it: there a reader who also saw nothing scores 1)")
    lines.append(f"outliers: {', '.join(a.outliers) if a.outliers else 'none'} (paired: a reader whose F1 with its "
                 "co-readers falls below theirs with each other on significantly more images, one-sided sign test "
                 f"p < {PAIRED_ALPHA:g}/readers, mean difference <= -{PAIRED_DELTA:g}; or a robust z-score of {col} "
                 f"below {OUTLIER_Z:g} with {MIN_READERS_FOR_OUTLIERS}+ scored readers)")
    if a.kappa_note:
        lines.append(f"kappa: {a.kappa_note}")
    return "\n".join(lines)
