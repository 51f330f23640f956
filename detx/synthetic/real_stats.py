"""Aggregate annotation statistics of a Kaggle-format VinBigData reader CSV, and a real-vs-other comparison.

:func:`annotation_stats` turns a ``train.csv`` (image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max)
into facts about the annotations, not the annotations: the normal fraction, class mix and co-occurrence, boxes per
abnormal image per reader, per-class box size and centre (relative to the image), the reader panels, the panel
styles and the inter-reader disagreement. ``tools/real_stats.py`` runs it on the real Kaggle ``train.csv`` shipped in
the ``torchxrayvision`` wheel and writes :data:`REAL_STATS_PATH` (package data); the generator draws from that file
and ``python -m detx.synthetic --compare-real CSV`` prints :func:`compare_stats` of any reader CSV against it.

**Image sizes.** The Kaggle train.csv has no image sizes and torchxrayvision ships no VinBigData metadata table, so
the real aggregates divide by one image size for every image, :data:`REAL_IMAGE_SIZE` (width 2,388, height 2,847:
the median VinBigData training image as the issue quotes it; an assumption, stated in the JSON). A CSV whose image
sizes are known (the synthetic one, sizes read from its DICOM headers or given) is divided per image.

**The panel** is the reader trio that reads the most images together (R8+R9+R10 on the real data); "others" are all
the remaining images. Disagreement: a finding box is *lonely* when no other reader of its image drew a box of its
class there; *best IoU* is, for a box that is not lonely, its highest IoU with another reader's box of its class.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import NO_FINDING, VINDR_CXR_CLASSES
from detx.core.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["REAL_STATS_PATH", "REAL_READERS_PATH", "REAL_IMAGE_SIZE", "annotation_stats", "load_real_stats",
           "load_real_readers_verdict", "read_kaggle_csv",
           "compare_stats", "compare_csv", "dicom_image_sizes", "format_comparison", "js_divergence"]

#: the committed aggregates of the real Kaggle VinBigData train.csv (written by tools/real_stats.py)
REAL_STATS_PATH = Path(__file__).with_name("vinbigdata_stats.json")
#: what the readers tool concludes on the real Kaggle VinBigData train.csv
#: (``detx.evaluation.reader_agreement.readers_verdict``; written by tools/real_stats.py)
REAL_READERS_PATH = Path(__file__).with_name("vinbigdata_readers.json")
#: (width, height) every real image is assumed to have (the CSV carries no sizes; see the module docstring)
REAL_IMAGE_SIZE = (2388.0, 2847.0)
KAGGLE_COLUMNS = ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max")
BOX = ["x_min", "y_min", "x_max", "y_max"]
IOU_BINS = np.linspace(0.0, 1.0, 11)
PANEL_SIZE = 3


def read_kaggle_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Kaggle-format reader CSV (``.csv`` or ``.csv.gz``) with the columns the statistics need.

    Raises:
        InputError: the file is missing, unreadable, lacks a column, names an unknown class, or a finding row has
            no box.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such reader CSV")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "rad_id": str, "class_name": str})
    except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas' ParserError is a ValueError
        raise InputError(f"{path}: not a readable CSV ({e})") from e
    missing = [c for c in KAGGLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not a Kaggle VinBigData reader CSV: missing column(s) {missing} (has "
                         f"{sorted(map(str, df.columns))}); expected image_id, class_name, class_id, rad_id, x_min, "
                         "y_min, x_max, y_max")
    if df.empty:
        raise InputError(f"{path}: no rows")
    df["class_name"] = df["class_name"].astype(str).str.strip()
    known = set(VINDR_CXR_CLASSES) | {NO_FINDING}
    bad = ~df["class_name"].isin(known)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {i + 2}: unknown class {df['class_name'].iloc[i]!r}")
    finding = (df["class_name"] != NO_FINDING).to_numpy()
    coords = df.loc[finding, BOX].apply(pd.to_numeric, errors="coerce")
    if coords.isna().any(axis=None):
        i = int(np.flatnonzero(finding)[np.flatnonzero(coords.isna().any(axis=1).to_numpy())[0]])
        raise InputError(f"{path}: row {i + 2}: a {df['class_name'].iloc[i]!r} box without numeric coordinates")
    df.loc[finding, BOX] = coords
    df["rad_id"] = df["rad_id"].fillna("").astype(str).str.strip()
    df["image_id"] = df["image_id"].astype(str)
    return df


def js_divergence(p: Mapping[str, float] | Sequence[float], q: Mapping[str, float] | Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two distributions (dicts over the union of their keys, or
    equal-length sequences); each is normalized to sum 1."""
    if isinstance(p, Mapping):
        keys = sorted(set(p) | set(q))
        p, q = [p.get(k, 0.0) for k in keys], [q.get(k, 0.0) for k in keys]
    a, b = np.asarray(p, float), np.asarray(q, float)
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return 0.5 * kl(a) + 0.5 * kl(b)


def _quantiles(v: np.ndarray) -> dict[str, float] | None:
    if len(v) == 0:
        return None
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return {"q25": round(float(q[0]), 4), "median": round(float(q[1]), 4), "q75": round(float(q[2]), 4)}


def _mix(names: pd.Series) -> dict[str, float]:
    counts = names.value_counts()
    total = int(counts.sum())
    return {c: round(int(counts.get(c, 0)) / total, 4) for c in VINDR_CXR_CLASSES} if total else {}


def _disagreement(boxes: pd.DataFrame) -> dict[str, Any]:
    """Lonely boxes (no other reader drew the class on the image) and each other box's best IoU with another
    reader's box of its class."""
    b = boxes[["image_id", "class_name", "rad_id", *BOX]].reset_index(drop=True)
    b["k"] = np.arange(len(b))
    pairs = b.merge(b, on=["image_id", "class_name"], suffixes=("", "_o"))
    pairs = pairs[pairs["rad_id"] != pairs["rad_id_o"]]
    ix0 = np.maximum(pairs["x_min"].to_numpy(), pairs["x_min_o"].to_numpy())
    iy0 = np.maximum(pairs["y_min"].to_numpy(), pairs["y_min_o"].to_numpy())
    ix1 = np.minimum(pairs["x_max"].to_numpy(), pairs["x_max_o"].to_numpy())
    iy1 = np.minimum(pairs["y_max"].to_numpy(), pairs["y_max_o"].to_numpy())
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = ((pairs["x_max"] - pairs["x_min"]) * (pairs["y_max"] - pairs["y_min"])).to_numpy()
    area_o = ((pairs["x_max_o"] - pairs["x_min_o"]) * (pairs["y_max_o"] - pairs["y_min_o"])).to_numpy()
    union = area + area_o - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter, dtype=float), where=union > 0)
    best = pd.Series(iou).groupby(pairs["k"].to_numpy()).max()
    lonely = np.ones(len(b), bool)
    lonely[best.index.to_numpy()] = False
    by_class = pd.Series(lonely).groupby(b["class_name"].to_numpy()).mean()
    hist, _ = np.histogram(best.to_numpy(), bins=IOU_BINS)
    return {
        "lonely_fraction": round(float(lonely.mean()), 4) if len(b) else None,
        "lonely_fraction_by_class": {c: round(float(by_class[c]), 4) for c in VINDR_CXR_CLASSES if c in by_class},
        "best_iou": _quantiles(best.to_numpy()),
        "best_iou_above_0.4": round(float((best.to_numpy() > 0.4).mean()), 4) if len(best) else None,
        "best_iou_hist": [round(float(x), 4) for x in hist / max(1, hist.sum())],
    }


def _style(rows: pd.DataFrame, boxes: pd.DataFrame, rel: pd.DataFrame) -> dict[str, Any]:
    """Box scale, class mix and boxes per abnormal image per reader of one group of images."""
    reads = rows.drop_duplicates(["image_id", "rad_id"])
    abnormal_reads = boxes.drop_duplicates(["image_id", "rad_id"])
    size = np.sqrt(rel["w"] * rel["h"]).to_numpy()
    per_class = pd.Series(size).groupby(boxes["class_name"].to_numpy()).median()
    return {
        "images": int(rows["image_id"].nunique()),
        "reads": len(reads), "boxes": len(boxes),
        "boxes_per_abnormal_image_per_reader": round(len(boxes) / len(abnormal_reads), 4) if len(abnormal_reads) else None,
        "class_mix": _mix(boxes["class_name"]),
        "median_box_size_rel": round(float(np.median(size)), 4) if len(size) else None,
        "median_box_size_rel_by_class": {c: round(float(per_class[c]), 4) for c in VINDR_CXR_CLASSES if c in per_class},
    }


def annotation_stats(df: pd.DataFrame, image_sizes: Mapping[str, tuple[float, float]] | None = None,
                     source: str = "") -> dict[str, Any]:
    """The aggregates of a Kaggle-format reader table (:func:`read_kaggle_csv`); module docstring.

    Args:
        df: the reader rows.
        image_sizes: image_id -> (width, height); None divides every box by :data:`REAL_IMAGE_SIZE`.
        source: a note on where ``df`` came from, stored in the result.
    """
    finding = (df["class_name"] != NO_FINDING).to_numpy()
    boxes = df[finding].reset_index(drop=True)
    if image_sizes is None:
        wh = np.tile(np.array(REAL_IMAGE_SIZE), (len(boxes), 1))
    else:
        missing = sorted(set(boxes["image_id"]) - set(image_sizes))
        if missing:
            raise InputError(f"no image size for {len(missing)} image(s) with boxes, e.g. {missing[0]}")
        wh = np.array([image_sizes[i] for i in boxes["image_id"]], dtype=float).reshape(-1, 2)
    x0, y0, x1, y1 = (boxes[c].to_numpy(dtype=float) for c in BOX)
    rel = pd.DataFrame({"w": (x1 - x0) / wh[:, 0], "h": (y1 - y0) / wh[:, 1],
                        "cx": (x0 + x1) / 2 / wh[:, 0], "cy": (y0 + y1) / 2 / wh[:, 1]})
    images = pd.Index(sorted(df["image_id"].unique()))
    abnormal_ids = set(boxes["image_id"])
    # readers per image and the unanimity of the normal/abnormal call
    readers = df[df["rad_id"] != ""].groupby("image_id")["rad_id"].agg(
        lambda s: tuple(sorted(set(s), key=lambda r: (len(r), r))))
    callers = boxes.groupby("image_id")["rad_id"].nunique()
    n_readers = readers.map(len).reindex(images).fillna(0).astype(int)
    split_calls = int(((callers.reindex(images).fillna(0) > 0) & (callers.reindex(images).fillna(0) < n_readers)).sum())
    # panels: the trio that reads the most images together; the rest are "others"
    panel_counts = readers.value_counts()
    trio = next((p for p in panel_counts.index if len(p) == PANEL_SIZE), None)
    in_trio = readers.reindex(images).map(lambda p: p == trio).to_numpy(dtype=bool) if trio else np.zeros(len(images), bool)
    trio_ids = set(images[in_trio])
    abnormal = images.isin(list(abnormal_ids))
    other_reads = df[~df["image_id"].isin(trio_ids) & (df["rad_id"] != "")].drop_duplicates(["image_id", "rad_id"])
    other_ab = other_reads["image_id"].isin(abnormal_ids)

    def shares(s: pd.Series) -> dict[str, float]:
        c = s.value_counts()
        return {r: round(int(c[r]) / int(c.sum()), 4) for r in sorted(c.index, key=lambda r: (len(r), r))}

    # classes per abnormal image (union over its readers) and the image-level class prior / co-occurrence
    img_cls = boxes.drop_duplicates(["image_id", "class_name"])
    n_ab = len(abnormal_ids)
    k_hist = img_cls.groupby("image_id").size().value_counts().sort_index()
    onehot = pd.crosstab(img_cls["image_id"], img_cls["class_name"]).reindex(columns=list(VINDR_CXR_CLASSES),
                                                                             fill_value=0).clip(upper=1)
    co = onehot.T.to_numpy() @ onehot.to_numpy() / max(1, n_ab)
    trio_box = boxes["image_id"].isin(trio_ids).to_numpy()
    trio_rows = df["image_id"].isin(trio_ids).to_numpy()
    per_reader = boxes.groupby(["image_id", "rad_id"]).size()
    size_stats, centre_stats = {}, {}
    for c in VINDR_CXR_CLASSES:
        m = (boxes["class_name"] == c).to_numpy()
        if m.any():
            size_stats[c] = {"w": _quantiles(rel["w"].to_numpy()[m]), "h": _quantiles(rel["h"].to_numpy()[m])}
            centre_stats[c] = {"x": _quantiles(rel["cx"].to_numpy()[m]), "y": _quantiles(rel["cy"].to_numpy()[m])}
    styles = {"trio": _style(df[trio_rows], boxes[trio_box], rel[trio_box]),
              "others": _style(df[~trio_rows], boxes[~trio_box], rel[~trio_box])}
    scale = {}
    for c in VINDR_CXR_CLASSES:
        a = styles["trio"]["median_box_size_rel_by_class"].get(c)
        b = styles["others"]["median_box_size_rel_by_class"].get(c)
        if a and b:
            scale[c] = round(a / b, 4)
    styles["trio_scale_by_class"] = scale
    return {
        "source": source,
        "image_size_note": ("box sizes and centres are fractions of the image; "
                            + (f"every image taken as width {REAL_IMAGE_SIZE[0]:.0f} x height {REAL_IMAGE_SIZE[1]:.0f} px (the CSV has no sizes)"
                               if image_sizes is None else "divided by each image's own size")),
        "images": len(images), "finding_boxes": len(boxes),
        "normal_fraction": round(1.0 - n_ab / len(images), 4),
        "readers_per_image": {str(k): int(v) for k, v in n_readers.value_counts().sort_index().items()},
        "split_normal_abnormal_images": split_calls,
        "class_mix": _mix(boxes["class_name"]),
        "class_image_prior": {c: round(float(onehot[c].sum()) / max(1, n_ab), 4) for c in VINDR_CXR_CLASSES},
        "class_cooccurrence": [[round(float(x), 4) for x in row] for row in co],
        "classes_per_abnormal_image": {str(int(k)): round(int(v) / max(1, n_ab), 4) for k, v in k_hist.items()},
        "boxes_per_abnormal_image_per_reader": {
            "mean": round(float(per_reader.mean()), 4) if len(per_reader) else None,
            **(_quantiles(per_reader.to_numpy().astype(float)) or {})},
        "box_size_rel": size_stats,
        "box_centre_rel": centre_stats,
        "panels": {
            "trio": {"readers": list(trio or ()), "image_share": round(float(in_trio.mean()), 4),
                     "abnormal_share": round(float(abnormal[in_trio].mean()), 4) if in_trio.any() else None},
            "others": {"image_share": round(float(1 - in_trio.mean()), 4),
                       "abnormal_share": round(float(abnormal[~in_trio].mean()), 4) if (~in_trio).any() else None,
                       "reader_share_normal": shares(other_reads.loc[~other_ab, "rad_id"]),
                       "reader_share_abnormal": shares(other_reads.loc[other_ab, "rad_id"])},
        },
        "styles": styles,
        "disagreement": _disagreement(boxes),
    }


@lru_cache(maxsize=1)
def _load(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_real_stats(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The committed real aggregates (:data:`REAL_STATS_PATH`), or another file of the same shape."""
    p = Path(path) if path is not None else REAL_STATS_PATH
    if not p.is_file():
        raise InputError(f"{p}: no aggregates file (tools/real_stats.py writes it)")
    return json.loads(_load(str(p)))


def load_real_readers_verdict(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The readers tool's verdict on the real train.csv (:data:`REAL_READERS_PATH`)."""
    p = Path(path) if path is not None else REAL_READERS_PATH
    if not p.is_file():
        raise InputError(f"{p}: no readers verdict file (tools/real_stats.py writes it)")
    return json.loads(_load(str(p)))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def compare_stats(real: Mapping[str, Any], other: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per statistic: ``statistic``, ``real``, ``other``, ``distance`` and ``measure`` (``JS`` = Jensen-Shannon
    divergence in bits for mixes, ``ratio`` = other / real for sizes and counts, ``diff`` = other - real for
    fractions)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, a: Any, b: Any, measure: str) -> None:
        if measure == "JS":
            d = round(js_divergence(a, b), 4) if a and b else None
        elif measure == "ratio":
            d = _ratio(a, b)
        else:
            d = round(b - a, 4) if a is not None and b is not None else None
        rows.append({"statistic": name, "real": a, "other": b, "distance": d, "measure": measure})

    add("normal fraction", real["normal_fraction"], other["normal_fraction"], "diff")
    add("readers per image (share with 3)", _share3(real), _share3(other), "diff")
    add("images split normal/abnormal", real["split_normal_abnormal_images"], other["split_normal_abnormal_images"],
        "diff")
    add("class mix of boxes", real["class_mix"], other["class_mix"], "JS")
    add("classes per abnormal image", real["classes_per_abnormal_image"], other["classes_per_abnormal_image"], "JS")
    add("class co-occurrence (pairs on an abnormal image)", _pairs(real), _pairs(other), "JS")
    add("boxes per abnormal image per reader (mean)", real["boxes_per_abnormal_image_per_reader"]["mean"],
        other["boxes_per_abnormal_image_per_reader"]["mean"], "ratio")
    for c in VINDR_CXR_CLASSES:
        rs, os_ = real["box_size_rel"].get(c), other["box_size_rel"].get(c)
        rc, oc = real["box_centre_rel"].get(c), other["box_centre_rel"].get(c)
        for ax, key in (("w", "size"), ("h", "size"), ("x", "centre"), ("y", "centre")):
            a = (rs if key == "size" else rc)
            b = (os_ if key == "size" else oc)
            add(f"{c}: median {key} {ax}", a[ax]["median"] if a else None, b[ax]["median"] if b else None,
                "ratio" if key == "size" else "diff")
    rp, op = real["panels"], other["panels"]
    add("panel: trio image share", rp["trio"]["image_share"], op["trio"]["image_share"], "diff")
    add("panel: trio abnormal share", rp["trio"]["abnormal_share"], op["trio"]["abnormal_share"], "diff")
    add("panel: others abnormal share", rp["others"]["abnormal_share"], op["others"]["abnormal_share"], "diff")
    for g in ("trio", "others"):
        rg, og = real["styles"][g], other["styles"][g]
        add(f"style {g}: class mix", rg["class_mix"], og["class_mix"], "JS")
        add(f"style {g}: median box size (sqrt area / image)", rg["median_box_size_rel"], og["median_box_size_rel"],
            "ratio")
        add(f"style {g}: boxes per abnormal image per reader", rg["boxes_per_abnormal_image_per_reader"],
            og["boxes_per_abnormal_image_per_reader"], "ratio")
    rd, od = real["disagreement"], other["disagreement"]
    add("lonely boxes (class no other reader drew)", rd["lonely_fraction"], od["lonely_fraction"], "diff")
    add("best IoU with another reader: median", (rd["best_iou"] or {}).get("median"),
        (od["best_iou"] or {}).get("median"), "diff")
    add("best IoU with another reader: share > 0.4", rd["best_iou_above_0.4"], od["best_iou_above_0.4"], "diff")
    return rows


def _pairs(s: Mapping[str, Any]) -> dict[str, float] | None:
    """The co-occurrence matrix's pairs of distinct classes as a distribution (for a Jensen-Shannon distance)."""
    co = s.get("class_cooccurrence")
    if not co:
        return None
    return {f"{VINDR_CXR_CLASSES[i]} + {VINDR_CXR_CLASSES[j]}": float(co[i][j])
            for i in range(len(co)) for j in range(i + 1, len(co))}


def _share3(s: Mapping[str, Any]) -> float:
    counts = s["readers_per_image"]
    return round(counts.get("3", 0) / max(1, sum(counts.values())), 4)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Mapping):
        top = sorted(v.items(), key=lambda kv: -kv[1])[:3]
        return ", ".join(f"{k} {x:.1%}" if x <= 1 else f"{k} {x}" for k, x in top)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_comparison(rows: Sequence[Mapping[str, Any]], other_name: str = "CSV") -> str:
    """The comparison as a Markdown table (mixes shown by their three largest parts)."""
    lines = [f"| statistic | real VinBigData | {other_name} | distance |", "|---|---|---|---|"]
    for r in rows:
        d = "-" if r["distance"] is None else f"{r['distance']:.4g} ({r['measure']})"
        lines.append(f"| {r['statistic']} | {_fmt(r['real'])} | {_fmt(r['other'])} | {d} |")
    return "\n".join(lines)


def dicom_image_sizes(csv: str | os.PathLike, image_ids: Sequence[str]) -> dict[str, tuple[float, float]] | None:
    """image_id -> (width, height) from ``image_sizes.csv`` beside a Kaggle-layout CSV (an annotations-only
    generator run) or else from the DICOM headers (``train/`` or ``test/`` next to it, ``<image_id>.dicom``); None
    when some image has no size there."""
    import pydicom

    root = Path(csv).parent
    table = root / "image_sizes.csv"  # written by an annotations-only run of the generator
    if table.is_file():
        t = pd.read_csv(table, dtype={"image_id": str})
        sizes = {str(i): (float(w), float(h)) for i, w, h in zip(t["image_id"], t["width"], t["height"])}
        return sizes if set(image_ids) <= set(sizes) else None
    sizes: dict[str, tuple[float, float]] = {}
    for i in image_ids:
        f = next((p for p in (root / "train" / f"{i}.dicom", root / "test" / f"{i}.dicom") if p.is_file()), None)
        if f is None:
            return None
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        sizes[i] = (float(ds.Columns), float(ds.Rows))
    return sizes


def compare_csv(csv: str | os.PathLike, real: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Compare a Kaggle-format reader CSV with the real aggregates: (rows of :func:`compare_stats`, a note on how
    its box sizes were made relative).

    Raises:
        InputError: ``csv`` is not a Kaggle-format reader CSV (:func:`read_kaggle_csv`).
    """
    real = load_real_stats() if real is None else real
    df = read_kaggle_csv(csv)
    ids = sorted(set(df.loc[df["class_name"] != NO_FINDING, "image_id"]))
    sizes = dicom_image_sizes(csv, ids)
    note = ("box sizes divided by each image's size (DICOM headers or image_sizes.csv)" if sizes is not None else
            f"no DICOMs beside {Path(csv).name}: every image taken as {REAL_IMAGE_SIZE[0]:.0f} x "
            f"{REAL_IMAGE_SIZE[1]:.0f} px, as for the real CSV")
    return compare_stats(real, annotation_stats(df, sizes, source=str(csv))), note
