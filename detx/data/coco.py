"""COCO JSON of a prepared dataset: writing it from the fused table, reading it back in original pixels.

Layout (DESIGN section 2): ``images`` entries carry ``id`` (int, the same in every split file of a
dataset), ``file_name`` (``<image_id>.png``), ``width``/``height`` of the PNG, ``image_uid`` (the
dataset's string image id), ``orig_width``/``orig_height`` of the DICOM, ``study_id`` and ``abnormal``;
annotations hold ``bbox = [x, y, w, h]`` in PNG pixels, ``category_id`` = 0-based class index. Normal
images are present with no annotations; "No finding" is not a category. ``info`` holds the dataset
key, the class names and the preparation settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detx.data.classes import NO_FINDING
from detx.data.readers import BOX_COLUMNS
from detx.utils.io import write_json

#: image-level columns of meta.csv copied into the COCO image entries when present
IMAGE_EXTRA_KEYS: tuple[str, ...] = ("study_id", "abnormal", "fold")


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
        boxes: normalized (fused) table in original pixels; "No finding" rows are ignored.
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
        raise ValueError(f"images not in meta.csv: {sorted(missing)[:5]}")
    images = []
    scale: dict[str, tuple[float, float]] = {}
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
        images.append(entry)
        scale[uid] = (r.width / r.orig_width, r.height / r.orig_height)
    annotations = []
    finding = boxes[(boxes["class_name"] != NO_FINDING) & boxes["image_id"].isin(wanted)]
    finding = finding.assign(_id=finding["image_id"].map(ids)).sort_values(["_id", "class_id"], kind="stable")
    for uid, cid, x0, y0, x1, y1 in zip(finding["image_id"], finding["class_id"],
                                        *(finding[c] for c in BOX_COLUMNS)):
        if not 0 <= int(cid) < len(classes):
            raise ValueError(f"image {uid}: class id {cid} outside the {len(classes)} classes")
        sx, sy = scale[uid]
        bx0, by0, bx1, by1 = x0 * sx, y0 * sy, x1 * sx, y1 * sy
        ann = {
            "id": len(annotations) + 1, "image_id": ids[uid], "category_id": int(cid),
            "bbox": [round(bx0, 3), round(by0, 3), round(bx1 - bx0, 3), round(by1 - by0, 3)],
            "area": round((bx1 - bx0) * (by1 - by0), 3), "iscrowd": 0,
        }
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


@dataclass
class PreparedCoco:
    """A prepared split read back, with ground truth in original DICOM pixels.

    Attributes:
        path: the JSON file.
        image_dir: the folder of its PNGs (``<root>/images`` next to ``<root>/annotations``).
        info: the JSON's ``info``.
        classes: class names, index = class id.
        images: image_uid -> the COCO image entry.
        gt: image_uid -> (boxes (M, 4) float64 xyxy in original pixels, classes (M,) int64); normal
            images map to empty arrays.
    """

    path: Path
    image_dir: Path
    info: dict
    classes: tuple[str, ...]
    images: dict[str, dict] = field(default_factory=dict)
    gt: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def image_path(self, image_uid: str) -> Path:
        return self.image_dir / self.images[image_uid]["file_name"]


def load_prepared_coco(json_path: str | os.PathLike) -> PreparedCoco:
    """Read a prepared COCO JSON; boxes are scaled back from PNG to original pixels."""
    json_path = Path(json_path)
    with open(json_path, encoding="utf-8") as f:
        coco = json.load(f)
    info = coco.get("info", {})
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    classes = tuple(info.get("classes") or [c["name"] for c in cats])
    by_id: dict[int, dict] = {}
    images: dict[str, dict] = {}
    for im in coco["images"]:
        uid = str(im.get("image_uid", Path(im["file_name"]).stem))
        if "orig_width" not in im or "orig_height" not in im:
            raise ValueError(f"{json_path}: image {uid} has no orig_width/orig_height (not a prepared dataset?)")
        images[uid] = im
        by_id[im["id"]] = im
    per_image: dict[str, tuple[list, list]] = {uid: ([], []) for uid in images}
    for ann in coco.get("annotations", []):
        im = by_id.get(ann["image_id"])
        if im is None:
            raise ValueError(f"{json_path}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}")
        sx = im["orig_width"] / im["width"]
        sy = im["orig_height"] / im["height"]
        x, y, w, h = ann["bbox"]
        uid = str(im.get("image_uid", Path(im["file_name"]).stem))
        per_image[uid][0].append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
        per_image[uid][1].append(int(ann["category_id"]))
    gt = {uid: (np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(c, dtype=np.int64))
          for uid, (b, c) in per_image.items()}
    image_dir = json_path.parent.parent / "images"
    return PreparedCoco(path=json_path, image_dir=image_dir, info=info, classes=classes, images=images, gt=gt)
