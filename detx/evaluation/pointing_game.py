"""The pointing game: does a heatmap's peak fall inside one of the radiologists' boxes?

A heatmap explains one output of the image classifier (``abnormal``, or one class) on one image; its peak is a
point in original pixels. For the ``abnormal`` output the image's boxes of any class count, for a class output
only that class's boxes. The pointing game is the share of labelled abnormal images (images with at least one
counting box) whose peak lies inside a counting box (edges included); per class, the share of the images having
that class whose peak lies inside a box of that class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Peak", "peak_hits", "pointing_game"]


@dataclass(frozen=True)
class Peak:
    """A heatmap's peak: the image, the explained output (``abnormal`` or a class name), (x, y) original pixels."""

    image_id: str
    target: str
    x: float
    y: float


def _inside(x: float, y: float, boxes: np.ndarray) -> bool:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return bool(np.any((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])))


def _counting(target: str, gt: tuple[np.ndarray, np.ndarray], classes: Sequence[str], only: str | None = None
              ) -> np.ndarray:
    boxes, cls = np.asarray(gt[0]).reshape(-1, 4), np.asarray(gt[1]).ravel()
    name = only if only is not None else (None if target == "abnormal" else target)
    if name is None:
        return boxes
    return boxes[cls == list(classes).index(name)] if name in classes else boxes[:0]


def peak_hits(peaks: Sequence[Peak], gt: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: Sequence[str]
              ) -> list[bool | None]:
    """Per peak: True/False when its image has a counting box, None when it has none (or no ground truth)."""
    out: list[bool | None] = []
    for p in peaks:
        if p.image_id not in gt:
            out.append(None)
            continue
        boxes = _counting(p.target, gt[p.image_id], classes)
        out.append(_inside(p.x, p.y, boxes) if len(boxes) else None)
    return out


def pointing_game(peaks: Sequence[Peak], gt: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
                  classes: Sequence[str]) -> dict:
    """``{"pointing_game": share or None, "num_images": n, "hits": h, "per_class": {class: {"pointing_game",
    "num_images", "hits"}}}``; everything None/empty without ground truth."""
    if gt is None:
        return {"pointing_game": None, "num_images": 0, "hits": 0, "per_class": {}}
    hits = [h for h in peak_hits(peaks, gt, classes) if h is not None]
    per_class = {}
    for c in classes:
        n = k = 0
        for p in peaks:
            if p.image_id not in gt or p.target not in ("abnormal", c):
                continue
            boxes = _counting(p.target, gt[p.image_id], classes, only=c)
            if len(boxes):
                n += 1
                k += _inside(p.x, p.y, boxes)
        if n:
            per_class[c] = {"pointing_game": k / n, "num_images": n, "hits": k}
    return {"pointing_game": (sum(hits) / len(hits)) if hits else None, "num_images": len(hits),
            "hits": int(sum(hits)), "per_class": per_class}
