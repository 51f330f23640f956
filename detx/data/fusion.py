"""Fusing the boxes of several readers into one set of boxes per image, and per-image labels.

Fusion works per image and per class with ensemble-boxes (boxes of two classes never fuse):

* ``wbf``: weighted boxes fusion; every reader's box has weight 1 and score 1, so a fused box is the
  mean of the boxes of its cluster (boxes with IoU > ``iou_thr`` join a cluster);
* ``nms``: non-maximum suppression; one reader's box survives per cluster, unchanged;
* ``none``: every reader's box is kept as it is.

Images annotated by a single reader (or with an unknown ``rad_id``, such as the PhysioNet test
consensus) are not fused: their boxes are already one opinion. An image where no box survives gets a
single "No finding" row. Fused rows have ``rad_id == "fused"`` and ``row == -1``; ``n_readers`` counts
the distinct readers with a box of the same class at IoU > ``iou_thr`` with the fused box (1 for
``none``; the number of readers of the image on "No finding" rows).

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

import numpy as np
import pandas as pd
from ensemble_boxes import nms, weighted_boxes_fusion

from detx.core.boxes import box_iou
from detx.core.classes import NO_FINDING
from detx.core.errors import InputError
from detx.data.readers import BOX_COLUMNS, make_table

logger = logging.getLogger(__name__)

FUSION_METHODS: tuple[str, ...] = ("wbf", "nms", "none")


def _fuse_class(boxes: np.ndarray, method: str, iou_thr: float, scale: np.ndarray) -> np.ndarray:
    """Fuse the boxes (original px) of one class of one image; returns fused boxes in original px."""
    norm = np.clip(boxes / scale, 0.0, 1.0)
    scores = np.ones(len(norm))
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


def fuse_readers(
    table: pd.DataFrame,
    method: str = "wbf",
    iou_thr: float = 0.4,
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Fuse the readers' boxes per image and class (see the module docstring for the rules).

    Args:
        table: normalized reader table (:mod:`detx.data.readers`).
        method: "wbf", "nms" or "none".
        iou_thr: boxes with IoU above this join one cluster.
        image_sizes: image_id -> (width, height), used to normalize boxes for ensemble-boxes; when None
            (or an image is missing) an image's boxes are divided by its largest x and y coordinates
            (IoU and weighted means do not change under axis scaling).

    Returns:
        A table with the columns of ``table`` plus ``n_readers``, in original pixels.
    """
    if method not in FUSION_METHODS:
        raise InputError(f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")
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
    rows: list[tuple] = []
    n_readers_col: list[int] = []
    starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]]) if len(image_ids) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(image_ids)]
    for a, b in zip(starts, ends):
        image_id = image_ids[a]
        study = next((v for v in studies[a:b] if v), "")
        readers = set(rads[a:b])
        finding = np.flatnonzero(~is_nf[a:b]) + a
        if method == "none" or len(readers) < 2 or "" in readers:
            for i in finding:
                rows.append((image_id, rads[i], names[i], int(cids[i]), *boxes_all[i].tolist(), studies[i],
                             int(lines[i])))
                n_readers_col.append(1)
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
                boxes = boxes_all[members]
                fused = _fuse_class(boxes, method, iou_thr, scale)
                iou = box_iou(fused, boxes)
                member_rads = rads[members]
                for k, box in enumerate(fused):
                    n = len(set(member_rads[iou[k] > iou_thr]))
                    rows.append((image_id, "fused", names[members[0]], int(cid), *box.tolist(), study, -1))
                    n_readers_col.append(max(n, 1))
        if len(finding) == 0:
            rows.append((image_id, "fused" if len(readers) > 1 else next(iter(readers)), NO_FINDING,
                         nf_id if nf_id is not None else -1, np.nan, np.nan, np.nan, np.nan, study, -1))
            n_readers_col.append(len(readers))
    out = make_table(rows, dataset=table.attrs.get("dataset", ""), classes=tuple(classes or ()))
    out["n_readers"] = np.asarray(n_readers_col, dtype=np.int64)
    out.attrs = dict(table.attrs)
    return out


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
