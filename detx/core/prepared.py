"""The one reader of a prepared dataset (``datasets/prepare_*.py --out ROOT``), and PNG <-> original pixels.

Layout (DESIGN section 2)::

    ROOT/images/<image_id>.png            aspect kept, longest side = the recorded size
    ROOT/meta.csv                         image_id, orig_width, orig_height, width, height, ...
    ROOT/annotations/<split>.json         COCO; images carry image_uid, orig_width, orig_height;
                                          info carries dataset, classes and size

A prepared PNG keeps the original aspect ratio, so a box moves between the PNG frame and the original
(DICOM) frame by one scale factor per axis: :func:`rescale_boxes` is that conversion, used by everything that
crosses the two frames (COCO writing and reading, the detectron2 evaluator, overlays). A dataset prepared with
``--crop lungs`` holds crops instead: each image records its :class:`~detx.core.crop.Crop` (``crop`` =
``[x0, y0, x1, y1]`` in original pixels in the COCO entry, ``crop_x0 .. crop_y1`` in meta.csv), and
:func:`png_to_original` / :func:`original_to_png` move boxes through it (:func:`image_crop`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detx.core.crop import Crop, boxes_from_crop, boxes_to_crop
from detx.core.errors import InputError

IMAGES_DIR = "images"
ANNOTATIONS_DIR = "annotations"
META_CSV = "meta.csv"
#: image keys of a prepared COCO JSON that detectron2's ``load_coco_json`` drops and detx keeps
IMAGE_KEYS: tuple[str, ...] = ("image_uid", "orig_width", "orig_height", "study_id", "abnormal", "body_part",
                               "patient_id", "image_labels", "crop")
#: meta.csv columns of a cropped image's :class:`~detx.core.crop.Crop` (original pixels, exclusive ends)
CROP_COLUMNS: tuple[str, ...] = ("crop_x0", "crop_y0", "crop_x1", "crop_y1")


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


def image_crop(entry: dict[str, Any], png_size: tuple[int, int] | None = None) -> Crop | None:
    """The crop a prepared image was cut to (``--crop lungs``), None for a whole image.

    Args:
        entry: a COCO image entry or dataset dict (``crop`` = ``[x0, y0, x1, y1]``) or a meta.csv row as a dict
            (``crop_x0 .. crop_y1``); both need ``orig_width`` / ``orig_height``.
        png_size: (width, height) of the stored crop (default the entry's ``width`` / ``height``).
    """
    box = entry.get("crop")
    if box is None and all(k in entry for k in CROP_COLUMNS):
        box = [entry[k] for k in CROP_COLUMNS]
    if box is None or any(v is None or v != v for v in box):  # None / NaN: not cropped
        return None
    orig = original_size(entry)
    if orig is None:
        raise ValueError(f"image {entry.get('image_uid', entry.get('image_id', '?'))}: a crop without orig_width / "
                         "orig_height")
    if png_size is None and entry.get("width") and entry.get("height"):
        png_size = (int(entry["width"]), int(entry["height"]))
    x0, y0, x1, y1 = (int(v) for v in box)
    return Crop(x0, y0, x1, y1, orig[0], orig[1], tuple(int(v) for v in png_size) if png_size else None)


def png_to_original(boxes: np.ndarray | Sequence, png_size: tuple[float, float], entry: dict[str, Any]
                    ) -> np.ndarray:
    """xyxy boxes in a prepared PNG's pixels (of size ``png_size``) in original pixels: through the image's crop when
    it has one (:func:`image_crop`), else :func:`rescale_boxes`."""
    crop = image_crop(entry, (int(png_size[0]), int(png_size[1])))
    if crop is not None:
        return boxes_from_crop(boxes, crop)
    return rescale_boxes(boxes, png_size, original_size(entry))


def original_to_png(boxes: np.ndarray | Sequence, png_size: tuple[float, float], entry: dict[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`png_to_original`: (boxes in PNG pixels, clipped to a crop; a bool flag per box that
    reached outside the crop, all False for a whole image)."""
    crop = image_crop(entry, (int(png_size[0]), int(png_size[1])))
    if crop is not None:
        return boxes_to_crop(boxes, crop)
    out = rescale_boxes(boxes, original_size(entry), png_size)
    return out, np.zeros(len(out), bool)


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


def read_meta_crops(folder: str | os.PathLike) -> dict[str, tuple[int, int, int, int]]:
    """``meta.csv`` beside (or inside) a PNG folder: image_id -> its crop ``(x0, y0, x1, y1)`` in original pixels, for
    the images prepared with ``--crop lungs``; {} without a meta.csv or crop columns."""
    import pandas as pd

    folder = Path(folder)
    for meta in (folder / META_CSV, folder.parent / META_CSV):
        if meta.is_file():
            df = pd.read_csv(meta, dtype={"image_id": str})
            if not set(CROP_COLUMNS) <= set(df.columns):
                return {}
            df = df.dropna(subset=list(CROP_COLUMNS))
            return {str(r[0]): tuple(int(v) for v in r[1:]) for r in df[["image_id", *CROP_COLUMNS]].itertuples(
                index=False)}
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
        box = png_to_original([x, y, x + w, y + h], (im["width"], im["height"]), im)
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
