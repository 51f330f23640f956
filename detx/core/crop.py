"""A crop of an image (e.g. to its lung fields) and the exact mapping of boxes between the original image and the
crop, so that boxes predicted on a (resized) crop come back in original pixels.

A :class:`Crop` is the integer rectangle ``[x0, x1) x [y0, y1)`` of the original image (what ``image[y0:y1, x0:x1]``
keeps), optionally resized to ``out_size`` (width, height). Boxes are xyxy, continuous coordinates: original
``x`` -> crop ``(x - x0) * sx`` with ``sx = out_width / (x1 - x0)``, and back ``x / sx + x0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Crop", "boxes_from_crop", "boxes_to_crop", "crop_around"]


@dataclass(frozen=True)
class Crop:
    """The kept rectangle of the original image (``x0 <= x < x1``, ``y0 <= y < y1``), the original size, and the size
    the crop was resized to (None: not resized)."""

    x0: int
    y0: int
    x1: int
    y1: int
    orig_width: int
    orig_height: int
    out_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.x0 < self.x1 <= self.orig_width and 0 <= self.y0 < self.y1 <= self.orig_height):
            raise ValueError(f"crop [{self.x0}, {self.x1}) x [{self.y0}, {self.y1}) is empty or outside the "
                             f"{self.orig_width} x {self.orig_height} image")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the crop as stored (after the resize, if any)."""
        return self.out_size or (self.x1 - self.x0, self.y1 - self.y0)

    @property
    def scale(self) -> tuple[float, float]:
        w, h = self.size
        return w / (self.x1 - self.x0), h / (self.y1 - self.y0)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The cropped pixels (not resized)."""
        return image[self.y0:self.y1, self.x0:self.x1]

    def to_dict(self) -> dict:
        return {"crop_x0": self.x0, "crop_y0": self.y0, "crop_x1": self.x1, "crop_y1": self.y1,
                "orig_width": self.orig_width, "orig_height": self.orig_height,
                "crop_width": self.size[0], "crop_height": self.size[1]}


def crop_around(box: Sequence[float], orig_size: tuple[int, int], margin: float = 0.05,
                out_size: tuple[int, int] | None = None) -> Crop:
    """The crop of a region (e.g. the lung fields' bounding box) widened by ``margin`` x its width / height on each
    side, to whole pixels, clipped to the image."""
    w, h = orig_size
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return Crop(max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my))), min(w, int(np.ceil(x1 + mx))),
                min(h, int(np.ceil(y1 + my))), int(w), int(h), out_size)


def boxes_to_crop(boxes: np.ndarray | Sequence, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
    """Original-pixel xyxy boxes in the crop's frame.

    Returns:
        (the boxes in crop pixels, clipped to the crop; a boolean mask of the boxes that were not wholly inside the
        crop: a caller names and counts them rather than silently moving them).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    outside = (b[:, 0] < crop.x0) | (b[:, 1] < crop.y0) | (b[:, 2] > crop.x1) | (b[:, 3] > crop.y1)
    sx, sy = crop.scale
    out = (b - np.array([crop.x0, crop.y0, crop.x0, crop.y0])) * np.array([sx, sy, sx, sy])
    w, h = crop.size
    out = np.clip(out, 0, np.array([w, h, w, h], np.float64))
    return out, outside


def boxes_from_crop(boxes: np.ndarray | Sequence, crop: Crop) -> np.ndarray:
    """Crop-pixel xyxy boxes (e.g. predicted on the crop) back in original pixels."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    sx, sy = crop.scale
    return b / np.array([sx, sy, sx, sy]) + np.array([crop.x0, crop.y0, crop.x0, crop.y0])
