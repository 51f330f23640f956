"""COCO JSON of a prepared dataset, written from the fused table (read back by :mod:`detx.core.prepared`).

Layout (DESIGN section 2): ``images`` entries carry ``id`` (int, the same in every split file of a
dataset), ``file_name`` (``<image_id>.png``), ``width``/``height`` of the PNG, ``image_uid`` (the
dataset's string image id), ``orig_width``/``orig_height`` of the DICOM, ``study_id`` and ``abnormal``;
annotations hold ``bbox = [x, y, w, h]`` in PNG pixels, ``category_id`` = 0-based class index and, from a fused
table, ``n_readers`` and ``readers`` (the list of rad_ids who drew the box, :mod:`detx.data.fusion`). Normal
images are present with no annotations; "No finding" is not a category. ``info`` holds the dataset
key, the class names and the preparation settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import NO_FINDING
from detx.core.errors import InputError
from detx.core.io import write_json
from detx.core.prepared import CROP_COLUMNS, original_to_png
from detx.data.readers import BOX_COLUMNS

#: image-level columns of meta.csv copied into the COCO image entries when present
IMAGE_EXTRA_KEYS: tuple[str, ...] = ("study_id", "abnormal", "fold", "body_part", "patient_id", "split")


def _plain(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if np.isnan(v) else float(v)
    return v


def build_coco(
    meta: pd.DataFrame,
    boxes: pd.DataFrame,
    classes: Iterable[str],
    info: dict | None = None,
    image_ids: Iterable[str] | None = None,
    box_masks: bool = False,
    image_labels: dict[str, dict[str, int]] | None = None,
) -> dict:
    """The COCO dict of (a subset of) a prepared dataset.

    Args:
        meta: meta.csv frame: image_id, orig_width, orig_height, width, height (+ study_id, abnormal, fold).
            Its row order fixes the integer image ids (row i -> id i + 1), so every split file of the
            dataset numbers an image the same way.
        boxes: normalized (fused) table in original pixels; "No finding" rows are ignored. Its ``n_readers`` and
            ``readers`` columns, when present, become each annotation's ``n_readers`` and ``readers`` (a list).
        classes: class names; category_id = index.
        info: extra ``info`` entries (dataset, size, fusion, ...).
        image_ids: the images of this split (default: all of ``meta``).
        box_masks: add each box as a rectangle polygon ``segmentation`` (for Mask R-CNN on box data).
        image_labels: optional image_id -> {label: 0/1} (e.g. PhysioNet global labels), stored as
            ``image_labels`` in the image entry.
    """
    classes = list(classes)
    meta = meta.reset_index(drop=True)
    ids = {uid: i + 1 for i, uid in enumerate(meta["image_id"].astype(str))}
    wanted = set(ids) if image_ids is None else {str(i) for i in image_ids}
    missing = wanted - set(ids)
    if missing:
        raise InputError(f"images not in meta.csv: {sorted(missing)[:5]}")
    images = []
    frames: dict[str, dict[str, Any]] = {}  # uid -> its image entry (original and PNG sizes, crop)
    for r in meta.itertuples(index=False):
        uid = str(r.image_id)
        if uid not in wanted:
            continue
        entry = {
            "id": ids[uid], "file_name": f"{uid}.png", "width": int(r.width), "height": int(r.height),
            "image_uid": uid, "orig_width": int(r.orig_width), "orig_height": int(r.orig_height),
        }
        for key in IMAGE_EXTRA_KEYS:
            if hasattr(r, key):
                v = _plain(getattr(r, key))
                entry[key] = "" if key == "study_id" and (v is None or v != v) else v
        if image_labels is not None and uid in image_labels:
            entry["image_labels"] = {k: int(v) for k, v in image_labels[uid].items()}
        if all(hasattr(r, k) for k in CROP_COLUMNS) and not pd.isna(getattr(r, CROP_COLUMNS[0])):
            entry["crop"] = [int(getattr(r, k)) for k in CROP_COLUMNS]  # --crop lungs: the PNG is this rectangle
        images.append(entry)
        frames[uid] = entry
    annotations = []
    finding = boxes[(boxes["class_name"] != NO_FINDING) & boxes["image_id"].isin(wanted)]
    finding = finding.assign(_id=finding["image_id"].map(ids)).sort_values(["_id", "class_id"], kind="stable")
    n_readers = finding["n_readers"].tolist() if "n_readers" in finding.columns else [None] * len(finding)
    readers = finding["readers"].tolist() if "readers" in finding.columns else [None] * len(finding)
    for uid, cid, x0, y0, x1, y1, n_read, who in zip(finding["image_id"], finding["class_id"],
                                                     *(finding[c] for c in BOX_COLUMNS), n_readers, readers):
        if not 0 <= int(cid) < len(classes):
            raise InputError(f"image {uid}: class id {cid} outside the {len(classes)} classes")
        e = frames[uid]
        png, outside = original_to_png([x0, y0, x1, y1], (e["width"], e["height"]), e)
        if outside[0]:
            raise InputError(f"image {uid}: box {[x0, y0, x1, y1]} of class {cid} reaches outside the image's crop "
                             f"{e['crop']}; clip it to the crop (and report it) first")
        bx0, by0, bx1, by1 = (float(v) for v in png[0])
        ann = {
            "id": len(annotations) + 1, "image_id": ids[uid], "category_id": int(cid),
            "bbox": [round(bx0, 3), round(by0, 3), round(bx1 - bx0, 3), round(by1 - by0, 3)],
            "area": round((bx1 - bx0) * (by1 - by0), 3), "iscrowd": 0,
        }
        if n_read is not None:
            ann["n_readers"] = int(n_read)
        if who is not None:
            ann["readers"] = [r for r in str(who).split("|") if r] if who == who else []
        if box_masks:
            ann["segmentation"] = [[round(v, 3) for v in (bx0, by0, bx1, by0, bx1, by1, bx0, by1)]]
        annotations.append(ann)
    return {
        "info": {**(info or {}), "classes": classes},
        "categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
        "images": images,
        "annotations": annotations,
    }


def write_coco(path: str | os.PathLike, coco: dict) -> None:
    """Write a COCO dict atomically."""
    write_json(path, coco)
