"""Fusing the boxes of several readers into one set of boxes per image, and per-image labels.

Fusion works per image and per class with ensemble-boxes (boxes of two classes never fuse):

* ``wbf``: weighted boxes fusion; every reader's box has weight 1 (or its reader's weight, ``reader_weights``),
  so a fused box is the (weighted) mean of the boxes of its cluster (boxes with IoU > ``iou_thr`` join a cluster);
* ``nms``: non-maximum suppression; one reader's box survives per cluster, unchanged (with weights: the box of
  the cluster's highest-weighted reader);
* ``none``: every reader's box is kept as it is.

Per-reader weights are passed to ensemble-boxes as each box's score, which is what its per-model ``weights``
come to (a box's confidence there is score x model weight): the fused coordinates are the same.

Images annotated by a single reader (or with an unknown ``rad_id``, such as the PhysioNet test
consensus) are not fused: their boxes are already one opinion. An image where no box survives gets a
single "No finding" row. Fused rows have ``rad_id == "fused"`` and ``row == -1``. Who drew a fused box:
ensemble-boxes does not say which input boxes formed a cluster, so membership is re-derived: ``readers``
(``"R1|R5"``) are the distinct readers with a box of the same class at IoU > ``iou_thr`` with the fused box
(for NMS exactly the boxes it suppressed, plus the kept one), ``n_readers`` their number; a box kept as it is
(``none``, a single reader) has its own reader. On "No finding" rows both describe the image's readers.
:func:`keep_min_readers` then keeps only the boxes drawn by at least K readers.

Image-level label when readers disagree (:func:`image_labels`): with the default ``rule="any"`` an
image is abnormal when at least one reader drew a valid box, i.e. a box that survived validation and
fusion (WBF and NMS keep at least one box per class that any reader drew, so the rule gives the same
answer on raw and fused tables), and a class is present when any reader drew a box of it. This is the
Kaggle VinBigData convention, where "No finding" means every reader found nothing. ``rule="majority"``
instead asks for at least half of the image's readers to have drawn a box (of that class).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from ensemble_boxes import nms, weighted_boxes_fusion

from detx.core.boxes import box_iou
from detx.core.classes import NO_FINDING
from detx.core.errors import InputError
from detx.core.wbf import weighted_boxes_fusion_batched
from detx.data.readers import BOX_COLUMNS, join_readers, make_table, reader_sort_key

logger = logging.getLogger(__name__)

FUSION_METHODS: tuple[str, ...] = ("wbf", "nms", "none")


def _fuse_class(boxes: np.ndarray, method: str, iou_thr: float, scale: np.ndarray,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Fuse the boxes (original px) of one class of one image, each weighted by its reader's weight (default 1);
    returns fused boxes in original px."""
    norm = np.clip(boxes / scale, 0.0, 1.0)
    area = (norm[:, 2] - norm[:, 0]) * (norm[:, 3] - norm[:, 1])
    # ensemble-boxes averages a cluster in float32 and, of two tied boxes, takes the second first: the fast paths
    # below give its numbers to the bit (tests/test_fusion.py checks them against it)
    if len(norm) == 1 and area[0] > 0:  # one box: every method returns it as it is
        return norm * scale
    if len(norm) == 2 and method == "wbf" and (weights is None or weights[0] == weights[1]) and (area > 0).all():
        # two boxes of equal weight, the common case of two readers: one cluster, their mean, when IoU > iou_thr
        a, b = norm
        iw = min(a[2], b[2]) - max(a[0], b[0])
        ih = min(a[3], b[3]) - max(a[1], b[1])
        inter = max(iw, 0.0) * max(ih, 0.0)
        if inter / (area[0] + area[1] - inter) > iou_thr:
            acc = np.zeros(4, np.float32)
            acc += b
            acc += a
            acc /= 2.0
            fused = acc.astype(np.float64)[None] * scale
        else:
            fused = norm * scale
        return fused[np.lexsort((fused[:, 1], fused[:, 0]))]
    scores = np.ones(len(norm)) if weights is None else np.asarray(weights, dtype=float)
    labels = np.zeros(len(norm))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ensemble-boxes warns about boxes clipped to [0, 1]
        if method == "wbf":
            fused, _, _ = weighted_boxes_fusion([norm.tolist()], [scores.tolist()], [labels.tolist()],
                                                iou_thr=iou_thr, skip_box_thr=0.0)
        else:
            fused, _, _ = nms([norm], [scores], [labels], iou_thr=iou_thr)
    fused = np.asarray(fused, dtype=float).reshape(-1, 4) * scale
    return fused[np.lexsort((fused[:, 1], fused[:, 0]))]


def _fuse_sets(pending: list[tuple], boxes_all: np.ndarray, method: str, iou_thr: float) -> list[np.ndarray]:
    """The fused boxes (original px, sorted by x_min then y_min) of each set ``(image_id, members, class id, scale,
    weights, study)`` of :func:`fuse_readers`: WBF sets all in one call of the batched, compiled WBF
    (:func:`detx.core.wbf.weighted_boxes_fusion_batched`: ensemble-boxes' numbers to the bit, each set one "image",
    each box's score its reader's weight), NMS sets one by one through ensemble-boxes."""
    if method != "wbf" or not pending:
        return [_fuse_class(boxes_all[m], method, iou_thr, sc, w) for _, m, _, sc, w, _ in pending]
    sizes = np.array([len(p[1]) for p in pending], dtype=np.int64)
    members = np.concatenate([p[1] for p in pending])
    scale = np.repeat(np.stack([p[3] for p in pending]), sizes, axis=0)
    scores = np.concatenate([np.ones(len(p[1])) if p[4] is None else np.asarray(p[4], dtype=float) for p in pending])
    norm = np.clip(boxes_all[members] / scale, 0.0, 1.0)
    group = np.repeat(np.arange(len(pending)), sizes)
    fb, _, _, fg = weighted_boxes_fusion_batched(norm, scores, np.zeros(len(norm), np.int64), group,
                                                 np.zeros(len(norm), np.int64), 1, iou_thr=iou_thr, skip_box_thr=0.0)
    bounds = np.searchsorted(fg, np.arange(len(pending) + 1))
    out = []
    for k, p in enumerate(pending):
        fused = fb[bounds[k]:bounds[k + 1]] * p[3]
        out.append(fused[np.lexsort((fused[:, 1], fused[:, 0]))])
    return out


def fuse_box_groups(
    group: np.ndarray,
    boxes: np.ndarray,
    scale: np.ndarray,
    method: str = "wbf",
    iou_thr: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse many small sets of boxes at once, the boxes only (no reader membership): the rows of ``boxes`` with one
    value of ``group`` (an image x class) fuse together, as :func:`fuse_readers` fuses one image's boxes of one class
    (every box weighs 1). Sets of one box, and WBF sets of two, are answered with array operations (the same numbers
    as ensemble-boxes, to the bit); larger WBF sets go through the batched, compiled WBF
    (:mod:`detx.core.wbf`, ensemble-boxes' numbers to the bit) in one call, larger NMS sets through ensemble-boxes.

    Args:
        group: (N,) integer set of each box.
        boxes: (N, 4) xyxy boxes.
        scale: (N, 4) the ``[w, h, w, h]`` each box is divided by for ensemble-boxes (one value per set).
        method: "wbf" or "nms" ("none" returns the boxes).
        iou_thr: boxes with IoU above this join one cluster.

    Returns:
        (the set of each fused box, the fused boxes), sorted by set, then by x_min and y_min.
    """
    group = np.asarray(group, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 4)
    if method not in FUSION_METHODS:
        raise InputError(f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")
    order = np.argsort(group, kind="stable")
    group, boxes, scale = group[order], boxes[order], scale[order]
    if method == "none" or not len(group):
        out_g, out_b = group, boxes
    else:
        norm = np.clip(boxes / scale, 0.0, 1.0)
        area = (norm[:, 2] - norm[:, 0]) * (norm[:, 3] - norm[:, 1])
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        counts = np.diff(np.r_[starts, len(group)])
        ok = np.minimum.reduceat(area > 0, starts).astype(bool)
        parts_g, parts_b = [], []
        one = starts[(counts == 1) & ok]
        parts_g.append(group[one])
        parts_b.append(norm[one] * scale[one])
        if method == "wbf":
            two = starts[(counts == 2) & ok]
        else:
            two = np.zeros(0, np.int64)
        if len(two):
            a, b = norm[two], norm[two + 1]
            iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
            ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
            inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
            merged = inter / (area[two] + area[two + 1] - inter) > iou_thr
            m = two[merged]
            # ensemble-boxes: the second box first, summed in float32, divided by the summed weight (2)
            acc = (norm[m + 1].astype(np.float32).astype(np.float64) + norm[m]).astype(np.float32) / np.float32(2.0)
            parts_g.append(group[m])
            parts_b.append(acc.astype(np.float64) * scale[m])
            apart = two[~merged]
            idx = np.concatenate([apart, apart + 1])
            parts_g.append(group[idx])
            parts_b.append(norm[idx] * scale[idx])
        done = np.zeros(len(starts), bool)
        done[np.searchsorted(starts, one)] = True
        done[np.searchsorted(starts, two)] = True
        rest = np.flatnonzero(~done)
        if method == "wbf" and len(rest):  # the larger sets: all at once through the batched, compiled WBF
            sel = np.concatenate([np.arange(starts[k], starts[k] + counts[k]) for k in rest])
            fb, _, _, fg = weighted_boxes_fusion_batched(norm[sel], np.ones(len(sel)), np.zeros(len(sel), np.int64),
                                                         group[sel], np.zeros(len(sel), np.int64), 1,
                                                         iou_thr=iou_thr, skip_box_thr=0.0)
            first = np.searchsorted(group, fg)  # a row of each fused box's set, for its scale
            parts_g.append(fg)
            parts_b.append(fb * scale[first])
            rest = rest[:0]
        for k in rest:
            a0, a1 = starts[k], starts[k] + counts[k]
            fused = _fuse_class(boxes[a0:a1], method, iou_thr, scale[a0])
            parts_g.append(np.full(len(fused), group[a0]))
            parts_b.append(fused)
        out_g = np.concatenate(parts_g)
        out_b = np.concatenate(parts_b).reshape(-1, 4)
    final = np.lexsort((out_b[:, 1], out_b[:, 0], out_g))
    return out_g[final], out_b[final]


def fuse_readers(
    table: pd.DataFrame,
    method: str = "wbf",
    iou_thr: float = 0.4,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    reader_weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Fuse the readers' boxes per image and class (see the module docstring for the rules).

    Args:
        table: normalized reader table (:mod:`detx.data.readers`).
        method: "wbf", "nms" or "none".
        iou_thr: boxes with IoU above this join one cluster.
        image_sizes: image_id -> (width, height), used to normalize boxes for ensemble-boxes; when None
            (or an image is missing) an image's boxes are divided by its largest x and y coordinates
            (IoU and weighted means do not change under axis scaling).
        reader_weights: rad_id -> positive weight of that reader's boxes in WBF (NMS: the highest-weighted
            reader's box survives); None: every reader weighs 1. Every reader of a fused image needs one.

    Returns:
        A table with the columns of ``table`` plus ``n_readers`` and ``readers``, in original pixels.

    Raises:
        InputError: an unknown method, or a reader without a weight or with one that is not positive.
    """
    if method not in FUSION_METHODS:
        raise InputError(f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")
    if reader_weights is not None:
        bad = sorted((r for r, w in reader_weights.items() if not np.isfinite(w) or w <= 0), key=reader_sort_key)
        if bad:
            raise InputError(f"reader weights must be positive; reader(s) {', '.join(bad)} have "
                             f"{[reader_weights[r] for r in bad]}")
        known = {str(r) for r in table["rad_id"] if str(r)}
        missing = sorted(known - set(reader_weights), key=reader_sort_key)
        if missing and method != "none":
            raise InputError(f"no fusion weight for reader(s) {', '.join(missing)}")
    classes = table.attrs.get("classes")
    nf_id = len(classes) if classes is not None else None
    # plain numpy arrays, sorted by image then class: pandas indexing per group is far too slow at 15k images
    order = np.lexsort((table["class_id"].to_numpy(), table["image_id"].to_numpy().astype(str)))
    image_ids = table["image_id"].to_numpy().astype(str)[order]
    rads = table["rad_id"].to_numpy().astype(str)[order]
    names = table["class_name"].to_numpy().astype(str)[order]
    cids = table["class_id"].to_numpy()[order]
    boxes_all = table[list(BOX_COLUMNS)].to_numpy(dtype=float)[order]
    studies = table["study_id"].to_numpy().astype(str)[order]
    lines = table["row"].to_numpy()[order]
    is_nf = names == NO_FINDING
    if nf_id is None and is_nf.any():
        nf_id = int(cids[is_nf][0])
    # each entry: (row, n_readers, readers), or the index of a set of boxes to fuse (expanded below)
    entries: list[tuple | int] = []
    pending: list[tuple] = []  # (image_id, members, class id, scale, weights, study) of each set to fuse
    starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]]) if len(image_ids) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(image_ids)]
    for a, b in zip(starts, ends):
        image_id = image_ids[a]
        study = next((v for v in studies[a:b] if v), "")
        readers = set(rads[a:b])
        finding = np.flatnonzero(~is_nf[a:b]) + a
        if method == "none" or len(readers) < 2 or "" in readers:
            for i in finding:
                entries.append(((image_id, rads[i], names[i], int(cids[i]), *boxes_all[i].tolist(), studies[i],
                                 int(lines[i])), 1, rads[i]))
        elif len(finding):
            fb = boxes_all[finding]
            if image_sizes is not None and image_id in image_sizes:
                w, h = image_sizes[image_id]
            else:
                w, h = max(fb[:, [0, 2]].max(), 1e-6), max(fb[:, [1, 3]].max(), 1e-6)
            scale = np.array([w, h, w, h], dtype=float)
            fc = cids[finding]
            for cid in np.unique(fc):
                members = finding[fc == cid]
                weights = None if reader_weights is None else np.array([reader_weights[r] for r in rads[members]])
                entries.append(len(pending))
                pending.append((image_id, members, int(cid), scale, weights, study))
        if len(finding) == 0:
            entries.append(((image_id, "fused" if len(readers) > 1 else next(iter(readers)), NO_FINDING,
                             nf_id if nf_id is not None else -1, np.nan, np.nan, np.nan, np.nan, study, -1),
                            len(readers), join_readers(readers)))
    fused_sets = _fuse_sets(pending, boxes_all, method, iou_thr)
    rows: list[tuple] = []
    n_readers_col: list[int] = []
    readers_col: list[str] = []
    for e in entries:
        if not isinstance(e, int):
            rows.append(e[0])
            n_readers_col.append(e[1])
            readers_col.append(e[2])
            continue
        image_id, members, cid, _, _, study = pending[e]
        fused = fused_sets[e]
        member_rads = rads[members]
        iou = box_iou(fused, boxes_all[members])
        for k, box in enumerate(fused):
            drew = member_rads[iou[k] > iou_thr]
            if len(drew) == 0:  # cannot happen with ensemble-boxes' clustering; the closest box's reader
                drew = member_rads[[int(np.argmax(iou[k]))]]
            rows.append((image_id, "fused", names[members[0]], cid, *box.tolist(), study, -1))
            n_readers_col.append(len(set(drew)))
            readers_col.append(join_readers(drew))
    out = make_table(rows, dataset=table.attrs.get("dataset", ""), classes=tuple(classes or ()))
    out["n_readers"] = np.asarray(n_readers_col, dtype=np.int64)
    out["readers"] = pd.Series(readers_col, dtype=object)
    out.attrs = dict(table.attrs)
    return out


def keep_min_readers(fused: pd.DataFrame, min_readers: int) -> tuple[pd.DataFrame, int]:
    """Keep only the finding boxes of a fused table drawn by at least ``min_readers`` readers (``n_readers``).

    An image left without a box gets a single "No finding" row (its ``readers`` and ``n_readers`` are those of
    the image), as :func:`fuse_readers` gives an image nobody drew on.

    Returns:
        (the table, the number of boxes dropped).
    """
    if min_readers < 1:
        raise InputError(f"--min-readers {min_readers} must be at least 1")
    if "n_readers" not in fused.columns:
        raise InputError("keep_min_readers needs a fused table (with n_readers); pass fuse_readers' output")
    finding = (fused["class_name"] != NO_FINDING).to_numpy()
    drop = finding & (fused["n_readers"].to_numpy() < min_readers)
    if not drop.any():
        return fused, 0
    kept = fused[~drop]
    emptied = sorted(set(fused["image_id"]) - set(kept.loc[kept["class_name"] != NO_FINDING, "image_id"])
                     - set(kept.loc[kept["class_name"] == NO_FINDING, "image_id"]))
    classes = fused.attrs.get("classes") or ()
    nf_id = len(classes) if classes else -1
    extra = []
    for image_id in emptied:
        rows = fused[fused["image_id"] == image_id]
        readers = sorted({r for v in rows["readers"] for r in str(v).split("|") if r}, key=reader_sort_key)
        study = next((v for v in rows["study_id"] if v), "")
        extra.append({"image_id": image_id, "rad_id": "fused" if len(readers) > 1 else (readers[0] if readers else ""),
                      "class_name": NO_FINDING, "class_id": nf_id, "x_min": np.nan, "y_min": np.nan,
                      "x_max": np.nan, "y_max": np.nan, "study_id": study, "row": -1,
                      "n_readers": len(readers), "readers": "|".join(readers)})
    out = pd.concat([kept, pd.DataFrame(extra, columns=list(fused.columns))], ignore_index=True) if extra else kept
    out = out.sort_values(["image_id", "class_id"], kind="stable").reset_index(drop=True)
    out["n_readers"] = out["n_readers"].astype(np.int64)
    out["class_id"] = out["class_id"].astype(np.int64)
    out["row"] = out["row"].astype(np.int64)
    out.attrs = dict(fused.attrs)
    return out, int(drop.sum())


def image_labels(
    table: pd.DataFrame,
    classes: tuple[str, ...] | list[str] | None = None,
    rule: str = "any",
) -> pd.DataFrame:
    """Per-image labels: image_id, abnormal (0/1), n_readers, then one 0/1 column per class name.

    Args:
        table: raw or fused normalized table (every image of the dataset must have a row; normal
            images have a "No finding" row).
        classes: class names (default ``table.attrs["classes"]``).
        rule: "any" (abnormal when any reader drew a box) or "majority" (when at least half of the
            image's readers did; the same per class). See the module docstring.
    """
    if rule not in ("any", "majority"):
        raise InputError(f"unknown image label rule {rule!r}; expected 'any' or 'majority'")
    classes = tuple(classes if classes is not None else table.attrs.get("classes", ()))
    if not classes:
        raise InputError("image_labels needs the class names (pass classes= or a table with attrs['classes'])")
    if rule == "majority" and (table["rad_id"] == "fused").any():
        raise InputError("rule='majority' needs the readers' own boxes: pass the table before fusion")
    image_ids = sorted(set(table["image_id"]))
    pos = {i: k for k, i in enumerate(image_ids)}
    votes = np.zeros((len(image_ids), len(classes)), dtype=np.int64)
    n_readers = table.groupby("image_id")["rad_id"].nunique().reindex(image_ids).to_numpy(dtype=np.int64)
    if "n_readers" in table.columns:  # a fused table: the readers behind its rows
        n_readers = np.maximum(n_readers, table.groupby("image_id")["n_readers"].max().reindex(image_ids).to_numpy())
    finding = table[table["class_name"] != NO_FINDING]
    for (image_id, cid), grp in finding.groupby(["image_id", "class_id"]):
        votes[pos[image_id], int(cid)] = grp["rad_id"].nunique()
    if rule == "any":
        present = votes > 0
    else:
        present = votes >= np.maximum(np.ceil(n_readers / 2.0), 1)[:, None]
    abnormal = present.any(axis=1)
    out = pd.DataFrame(present.astype(np.int64), columns=list(classes))
    out.insert(0, "n_readers", n_readers)
    out.insert(0, "abnormal", abnormal.astype(np.int64))
    out.insert(0, "image_id", image_ids)
    return out
