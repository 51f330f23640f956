"""The one reader of a prepared dataset (``datasets/prepare_*.py --out ROOT``), and PNG <-> original pixels.

Layout (DESIGN section 2)::

    ROOT/images/<image_id>.png            aspect kept, longest side = the recorded size
    ROOT/meta.csv                         image_id, orig_width, orig_height, width, height, ...
    ROOT/annotations/<split>.json         COCO; images carry image_uid, orig_width, orig_height;
                                          info carries dataset, classes and size

A prepared PNG keeps the original aspect ratio, so a box moves between the PNG frame and the original
(DICOM) frame by one scale factor per axis: :func:`rescale_boxes` is that conversion, used by everything that
crosses the two frames (COCO writing and reading, the detectron2 evaluator, overlays).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detx.core.errors import InputError

IMAGES_DIR = "images"
ANNOTATIONS_DIR = "annotations"
META_CSV = "meta.csv"
#: image keys of a prepared COCO JSON that detectron2's ``load_coco_json`` drops and detx keeps
IMAGE_KEYS: tuple[str, ...] = ("image_uid", "orig_width", "orig_height", "study_id", "abnormal", "body_part",
                               "patient_id", "image_labels")


class PreparedDatasetError(InputError):
    """A path that is not a usable prepared dataset (the message names the path and the problem)."""


# ----------------------------------------------------------------------------------------- scaling

def rescale_boxes(boxes: np.ndarray | Sequence, from_size: tuple[float, float], to_size: tuple[float, float]
                  ) -> np.ndarray:
    """xyxy boxes from a ``(width, height)`` frame to another (e.g. PNG pixels -> original pixels).

    Returns:
        (N, 4) float64; the input is not modified.
    """
    fw, fh = (float(v) for v in from_size)
    tw, th = (float(v) for v in to_size)
    if not (fw > 0 and fh > 0 and tw > 0 and th > 0):
        raise ValueError(f"image sizes must be positive, got {from_size} -> {to_size}")
    sx, sy = tw / fw, th / fh
    return np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


def original_size(entry: dict[str, Any]) -> tuple[int, int] | None:
    """``(orig_width, orig_height)`` of a COCO image entry or dataset dict, None when it does not record them."""
    ow, oh = entry.get("orig_width"), entry.get("orig_height")
    return (int(ow), int(oh)) if ow and oh else None


# ----------------------------------------------------------------------------------------- image labels

def has_image_labels(record: dict[str, Any]) -> bool:
    """Whether a prepared image (COCO entry or detectron2 dataset dict) carries its image-level label: preparation
    from a reader CSV records ``abnormal``; a test split prepared without annotations does not."""
    return record.get("abnormal") is not None


def image_level_targets(record: dict[str, Any], num_classes: int = 0,
                        label_names: Sequence[str] | None = None) -> np.ndarray:
    """The image-level targets of a prepared image: ``[abnormal, present(class 0), ..., present(class K-1)]``.

    ``abnormal`` is the image's recorded label (the preparation's label rule); a class is present when the image
    has a (fused) box of it, read from ``annotations`` (detectron2 dicts) before any augmentation. With
    ``label_names`` the K targets are instead the image's recorded ``image_labels`` of those names (PhysioNet
    VinDr-CXR's local and global labels; a label the image does not record counts as 0).

    Raises:
        PreparedDatasetError: the image has no ``abnormal`` label (see :func:`has_image_labels`).
    """
    if not has_image_labels(record):
        raise PreparedDatasetError(f"image {record.get('image_uid', record.get('file_name', '?'))} has no image-level "
                                   "label ('abnormal'); was the dataset prepared without --csv?")
    out = np.zeros(1 + num_classes, np.float32)
    out[0] = float(record["abnormal"])
    if label_names:
        labels = record.get("image_labels")
        if labels is None:
            raise PreparedDatasetError(f"image {record.get('image_uid', record.get('file_name', '?'))} has no "
                                       "image_labels (prepare PhysioNet VinDr-CXR with its image_labels_*.csv)")
        for k, name in enumerate(list(label_names)[:num_classes]):
            out[1 + k] = float(labels.get(name, 0) > 0)
        return out
    for a in record.get("annotations", []):
        c = int(a["category_id"])
        if 0 <= c < num_classes:
            out[1 + c] = 1.0
    return out


# ----------------------------------------------------------------------------------------- files

def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """A prepared COCO JSON as a dict.

    Raises:
        PreparedDatasetError: unreadable, or not a COCO file (no ``images``/``categories``).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PreparedDatasetError(f"cannot read COCO json {path}: {e}") from e
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise PreparedDatasetError(f"{path} is not a COCO json of a prepared dataset (no images/categories)")
    return data


def image_extras(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """COCO image id -> the :data:`IMAGE_KEYS` its entry carries."""
    return {img["id"]: {k: img[k] for k in IMAGE_KEYS if k in img} for img in data["images"]}


def annotation_files(root: str | os.PathLike) -> list[Path]:
    """The ``annotations/*.json`` of a prepared dataset root.

    Raises:
        PreparedDatasetError: ``root`` does not exist or holds no annotations/images.
    """
    root = Path(root)
    if not str(root) or not root.is_dir():
        raise PreparedDatasetError(
            f"DETX.DATA_ROOT {str(root)!r} does not exist; prepare a dataset first "
            "(datasets/prepare_vindr_cxr.py --out DIR) and pass DETX.DATA_ROOT DIR")
    files = sorted((root / ANNOTATIONS_DIR).glob("*.json"))
    if not files or not (root / IMAGES_DIR).is_dir():
        raise PreparedDatasetError(
            f"{root} is not a prepared dataset: expected images/ and annotations/*.json "
            "(written by datasets/prepare_vindr_cxr.py or datasets/prepare_spinexr.py --out)")
    return files


def recorded_size(info: dict[str, Any]) -> int | None:
    """The longest PNG side a prepared JSON's ``info`` records (``--size``), None when it records none."""
    size = info.get("size")
    try:
        return int(size) if size else None
    except (TypeError, ValueError):
        return None


def dataset_image_size(root: str | os.PathLike) -> int | None:
    """The image size recorded by preparation for a dataset root (the first annotation file that has one).

    Raises:
        PreparedDatasetError: the files disagree on the size (a root written by two runs with other sizes).
    """
    sizes = {}
    for path in annotation_files(root):
        size = recorded_size(read_coco_json(path).get("info") or {})
        if size is not None:
            sizes[path.name] = size
    if len(set(sizes.values())) > 1:
        raise PreparedDatasetError(f"{root}: the annotation files record different image sizes {sizes}; "
                                   "prepare the dataset again into an empty folder")
    return next(iter(sizes.values()), None)


def read_meta_sizes(folder: str | os.PathLike) -> dict[str, tuple[int, int, int, int]]:
    """``meta.csv`` beside (or inside) a PNG folder: image_id -> (orig_w, orig_h, png_w, png_h); {} without one.

    A missing PNG size is -1.

    Raises:
        PreparedDatasetError: a meta.csv without the size columns.
    """
    import pandas as pd

    folder = Path(folder)
    for meta in (folder / META_CSV, folder.parent / META_CSV):
        if meta.is_file():
            df = pd.read_csv(meta, dtype={"image_id": str})
            need = {"image_id", "orig_width", "orig_height"}
            if not need <= set(df.columns):
                raise PreparedDatasetError(f"{meta}: needs the columns {sorted(need)}, has {list(df.columns)}")
            w = df["width"] if "width" in df else pd.Series([-1] * len(df))
            h = df["height"] if "height" in df else pd.Series([-1] * len(df))
            return {str(i): (int(ow), int(oh), int(pw), int(ph))
                    for i, ow, oh, pw, ph in zip(df["image_id"], df["orig_width"], df["orig_height"], w, h)}
    return {}


# ----------------------------------------------------------------------------------------- splits

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

    @property
    def unreadable(self) -> dict[str, str]:
        """image_id -> reason, for the images of a test split that preparation could not convert: they have no
        PNG and no image entry, but a submission still owes them a row."""
        return {str(k): str(v) for k, v in (self.info.get("unreadable") or {}).items()}

    @property
    def size(self) -> int | None:
        """The longest PNG side preparation recorded (``--size``)."""
        return recorded_size(self.info)

    def image_path(self, image_uid: str) -> Path:
        return self.image_dir / self.images[image_uid]["file_name"]


def load_prepared_coco(json_path: str | os.PathLike) -> PreparedCoco:
    """Read a prepared COCO JSON; boxes are scaled back from PNG to original pixels."""
    json_path = Path(json_path)
    coco = read_coco_json(json_path)
    info = coco.get("info", {})
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    classes = tuple(info.get("classes") or [c["name"] for c in cats])
    by_id: dict[int, dict] = {}
    images: dict[str, dict] = {}
    for im in coco["images"]:
        uid = str(im.get("image_uid", Path(im["file_name"]).stem))
        if "orig_width" not in im or "orig_height" not in im:
            raise PreparedDatasetError(f"{json_path}: image {uid} has no orig_width/orig_height (not a prepared "
                                       "dataset?)")
        images[uid] = im
        by_id[im["id"]] = im
    per_image: dict[str, tuple[list, list]] = {uid: ([], []) for uid in images}
    for ann in coco.get("annotations", []):
        im = by_id.get(ann["image_id"])
        if im is None:
            raise PreparedDatasetError(f"{json_path}: annotation {ann.get('id')} refers to unknown image id "
                                       f"{ann['image_id']}")
        x, y, w, h = ann["bbox"]
        uid = str(im.get("image_uid", Path(im["file_name"]).stem))
        box = rescale_boxes([x, y, x + w, y + h], (im["width"], im["height"]), original_size(im))
        per_image[uid][0].append(box[0])
        per_image[uid][1].append(int(ann["category_id"]))
    gt = {uid: (np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(c, dtype=np.int64))
          for uid, (b, c) in per_image.items()}
    image_dir = json_path.parent.parent / IMAGES_DIR
    return PreparedCoco(path=json_path, image_dir=image_dir, info=info, classes=classes, images=images, gt=gt)


def test_split_unreadable(png_folder: str | os.PathLike) -> dict[str, str]:
    """The unreadable images recorded by a test-set preparation for its ``images/`` folder (the sibling
    ``annotations/test.json``); {} when there is none."""
    test_json = Path(png_folder).parent / ANNOTATIONS_DIR / "test.json"
    if not test_json.is_file():
        return {}
    info = read_coco_json(test_json).get("info") or {}
    return {str(k): str(v) for k, v in (info.get("unreadable") or {}).items()}
