"""Lung-field masks in the public layouts users have, paired with their images and checked, and the lung fields'
bounding box (what a lung crop keeps).

Layouts (``layout``), each an image folder and PNG/GIF masks of the same size:

- ``montgomery`` (NLM Montgomery County set): ``CXR_png/<id>.png``, ``ManualMask/leftMask/<id>.png`` and
  ``ManualMask/rightMask/<id>.png``;
- ``shenzhen`` (NLM Shenzhen set with its public lung masks): ``CXR_png/<id>.png``, ``mask/<id>_mask.png`` (both lungs);
- ``folders`` (JSRT converted to PNG with the SCR masks, or any other): ``--images DIR`` of ``<id>.png`` (or DICOM
  files ``<id>.dicom`` / ``<id>.dcm``, e.g. the synthetic generator's ``--lung-masks``) and ``--masks DIR`` holding
  ``<id>.png`` / ``<id>_mask.png`` (both lungs), or ``left lung/<id>.*`` and ``right lung/<id>.*`` (SCR's folder
  names) / ``left/``, ``right/``.

Bad pairs are named, counted and skipped (``ProblemLog``; ``--strict`` stops at the first): an image without a mask
(``missing_mask``), a mask whose size differs from its image's (``mask_size``), an unreadable file
(``bad_mask`` / ``bad_image``), an empty mask (``empty_mask``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detx.core.errors import InputError, MissingFileError
from detx.data.readers import ProblemLog

__all__ = ["LAYOUTS", "LUNG_CLASSES", "LungPair", "lung_box", "lung_boxes_from_masks", "mask_files", "mask_polygons",
           "read_lung_mask", "read_lung_pairs", "read_lung_sides"]

#: the lung segmenter's classes (the patient's sides: the left lung is on the image's right in a PA view)
LUNG_CLASSES: tuple[str, ...] = ("left lung", "right lung")

LAYOUTS = ("montgomery", "shenzhen", "folders")
MASK_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
#: image files of the ``folders`` layout besides PNGs
DICOM_SUFFIXES = (".dicom", ".dcm")


@dataclass(frozen=True)
class LungPair:
    """An image and its lung mask file(s): one with both lungs, or ``(left, right)``."""

    image_id: str
    image: Path
    masks: tuple[Path, ...]
    width: int
    height: int


def _image_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file (a DICOM's from its header), None when unreadable."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception:  # noqa: BLE001 - pydicom raises several types for broken files
            return None
    im = _read_gray(path)
    return None if im is None else im.shape[:2]


def _read_gray(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None and path.suffix.lower() == ".gif":  # OpenCV builds without GIF support
        try:
            from PIL import Image

            img = np.asarray(Image.open(path).convert("L"))
        except OSError:
            return None
    return img


def read_lung_mask(paths: tuple[Path, ...]) -> np.ndarray:
    """The union of the mask files as a boolean array (a pixel is lung where any file is non-zero).

    Raises:
        InputError: a file cannot be read, or the files differ in size.
    """
    out = None
    for p in paths:
        m = _read_gray(p)
        if m is None:
            raise InputError(f"mask {p}: cannot be read")
        m = m > 0
        if out is not None and m.shape != out.shape:
            raise InputError(f"mask {p}: {m.shape[1]} x {m.shape[0]} differs from the other lung's "
                             f"{out.shape[1]} x {out.shape[0]}")
        out = m if out is None else out | m
    if out is None:
        raise InputError("no mask file")
    return out


def read_lung_sides(pair: LungPair) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) lung masks of a pair, bool arrays of the image's size: the two files of a left/right layout, or
    a both-lungs mask split into its two largest connected parts (the one on the image's left is the patient's right
    lung; a mask of one part is split at that part's middle column).

    Raises:
        InputError: a file cannot be read.
    """
    if len(pair.masks) == 2:
        return read_lung_mask(pair.masks[:1]), read_lung_mask(pair.masks[1:])
    both = read_lung_mask(pair.masks)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(both.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda k: -stats[k, cv2.CC_STAT_AREA])[:2]
    if len(order) == 2:
        a, b = sorted(order, key=lambda k: centroids[k][0])  # a: image left = the patient's right lung
        return labels == b, labels == a
    x0, _, x1, _ = lung_box(both)
    cut = (x0 + x1) // 2
    cols = np.arange(both.shape[1])[None, :]
    return both & (cols >= cut), both & (cols < cut)


def mask_polygons(mask: np.ndarray, scale: tuple[float, float] = (1.0, 1.0), min_points: int = 3
                  ) -> list[list[float]]:
    """A bool mask's outer contours as COCO polygons ``[x0, y0, x1, y1, ...]`` (pixel corners, so that the polygon
    rasterizes back to about the mask), each coordinate multiplied by ``scale`` (sx, sy)."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5
        if len(pts) < min_points:
            continue
        pts *= np.asarray(scale, np.float64)
        out.append([round(float(v), 3) for v in pts.ravel()])
    return out


def lung_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box ``(x0, y0, x1, y1)`` (exclusive ends, pixels) of a mask's non-zero pixels, None if empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _find(folder: Path, stem: str, suffixes: tuple[str, ...] = ("", "_mask")) -> Path | None:
    for suffix in suffixes:
        for ext in MASK_SUFFIXES:
            for e in (ext, ext.upper()):
                p = folder / f"{stem}{suffix}{e}"
                if p.is_file():
                    return p
    return None


def mask_files(masks: str | os.PathLike, image_id: str) -> tuple[Path, ...] | None:
    """The mask file(s) of an image in a ``folders`` layout mask folder, None when it has none."""
    return _mask_files("folders", Path(masks), Path(masks), image_id)


def _mask_files(layout: str, root: Path, masks: Path | None, stem: str) -> tuple[Path, ...] | None:
    if layout == "montgomery":
        left, right = _find(root / "ManualMask" / "leftMask", stem), _find(root / "ManualMask" / "rightMask", stem)
        return (left, right) if left and right else None
    if layout == "shenzhen":
        m = _find(root / "mask", stem)
        return (m,) if m else None
    assert masks is not None
    for left_dir, right_dir in (("left lung", "right lung"), ("left", "right")):
        if (masks / left_dir).is_dir():
            left, right = _find(masks / left_dir, stem), _find(masks / right_dir, stem)
            return (left, right) if left and right else None
    m = _find(masks, stem)
    return (m,) if m else None


def read_lung_pairs(layout: str, images: str | os.PathLike, masks: str | os.PathLike | None = None,
                    strict: bool = False) -> tuple[list[LungPair], ProblemLog]:
    """Pair each image of a layout (module docstring) with its mask(s), checking them.

    Args:
        layout: ``montgomery``, ``shenzhen`` (``images`` is the set's root) or ``folders`` (``images`` and ``masks``).

    Raises:
        InputError / MissingFileError: an unknown layout or a missing folder; DataError: a bad pair under strict.
    """
    if layout not in LAYOUTS:
        raise InputError(f"lung-mask layout {layout!r}: expected one of {LAYOUTS}")
    root = Path(images)
    img_dir = root / "CXR_png" if layout in ("montgomery", "shenzhen") else root
    mask_dir = Path(masks) if masks is not None else None
    if layout == "folders" and (mask_dir is None or not mask_dir.is_dir()):
        raise MissingFileError(f"masks folder {mask_dir} does not exist")
    if not img_dir.is_dir():
        raise MissingFileError(f"image folder {img_dir} does not exist (layout {layout})")
    log = ProblemLog(strict)
    pairs = []
    suffixes = (".png",) + (DICOM_SUFFIXES if layout == "folders" else ())
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith(".")):
        stem = img.stem
        files = _mask_files(layout, root, mask_dir, stem)
        if files is None:
            log.add("missing_mask", str(img), f"image {stem} has no lung mask ({layout} layout)", stem)
            continue
        shape = _image_shape(img)
        if shape is None:
            log.add("bad_image", str(img), f"image {stem} cannot be read", stem)
            continue
        if _check_mask(log, files, shape, stem) is None:
            continue
        pairs.append(LungPair(stem, img, files, int(shape[1]), int(shape[0])))
    return pairs, log


def _check_mask(log: ProblemLog, files: tuple[Path, ...], shape: tuple[int, int], stem: str) -> np.ndarray | None:
    """The mask of an image of ``shape`` (height, width), or None after logging why it is unusable."""
    try:
        mask = read_lung_mask(files)
    except InputError as e:
        log.add("bad_mask", str(files[0]), str(e), stem)
        return None
    if mask.shape != tuple(shape):
        log.add("mask_size", str(files[0]), f"mask of {stem} is {mask.shape[1]} x {mask.shape[0]} but the image "
                f"is {shape[1]} x {shape[0]}", stem)
        return None
    if not mask.any():
        log.add("empty_mask", str(files[0]), f"mask of {stem} marks no lung pixel", stem)
        return None
    return mask


def lung_boxes_from_masks(masks: str | os.PathLike, sizes: dict[str, tuple[int, int]], log: ProblemLog
                          ) -> dict[str, tuple[int, int, int, int]]:
    """The lung fields' box (original pixels, :func:`lung_box`) of each image, from a ``folders`` layout mask folder.

    Args:
        masks: the mask folder (``left/``, ``right/`` or ``<id>.png`` / ``<id>_mask.png``).
        sizes: image_id -> (width, height) of the original image.
        log: receives ``missing_mask``, ``bad_mask``, ``mask_size``, ``empty_mask`` (the image has no box).

    Raises:
        MissingFileError: ``masks`` is not a folder.
    """
    masks = Path(masks)
    if not masks.is_dir():
        raise MissingFileError(f"lung mask folder {masks} does not exist")
    out = {}
    for image_id, (w, h) in sizes.items():
        files = mask_files(masks, image_id)
        if files is None:
            log.add("missing_mask", f"image {image_id}", f"image {image_id} has no lung mask in {masks}", image_id)
            continue
        mask = _check_mask(log, files, (h, w), image_id)
        if mask is not None:
            out[image_id] = lung_box(mask)
    return out
