"""Heatmap overlays: a classifier's attribution map blended over the X-ray, with the radiologists' boxes and the
heatmap's peak. Boxes and the peak come in original pixels and are moved to the image's frame with
:func:`detx.core.prepared.rescale_boxes`."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detx.core.prepared import rescale_boxes


def draw_heatmap(image: np.ndarray, heat: np.ndarray, orig_size: tuple[float, float],
                 gt: tuple[np.ndarray, np.ndarray] | None = None, peak: tuple[float, float] | None = None,
                 title: str = "", classes: Sequence[str] = (), alpha: float = 0.45, min_side: int = 512) -> np.ndarray:
    """A BGR picture: ``image`` (HxW gray or HxWx3 BGR uint8) with ``heat`` (any size, resized to the image; its
    positive part scaled to its maximum, or, when nothing is positive, the whole map scaled to its range) blended in
    the jet colormap, ground-truth boxes (white, labelled), the peak (a
    cross) and ``title``; enlarged by an integer factor when the longest side is under ``min_side``."""
    img = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.ascontiguousarray(image[:, :, :3]).copy()
    h, w = img.shape[:2]
    f = int(np.ceil(min_side / max(h, w))) if max(h, w) < min_side else 1
    if f > 1:
        img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        h, w = img.shape[:2]
    hm = cv2.resize(np.asarray(heat, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    top, low = float(hm.max()), float(hm.min())
    if top > 0:
        hm = np.clip(hm / top, 0, 1)
    else:  # no positive evidence anywhere: show where it is least negative
        hm = (hm - low) / (top - low) if top > low else np.zeros_like(hm)
    color = cv2.applyColorMap((hm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(img, 1.0 - alpha, color, alpha, 0)
    thick = max(1, round(max(h, w) / 400))
    font = max(0.4, max(h, w) / 1400)
    if gt is not None:
        for box, c in zip(rescale_boxes(gt[0], orig_size, (w, h)), np.asarray(gt[1]).ravel()):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 255), thick, cv2.LINE_AA)
            label = classes[int(c)] if int(c) < len(classes) else str(int(c))
            cv2.putText(out, label, (x0, max(12, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                        cv2.LINE_AA)
    if peak is not None:
        (px, py), = rescale_boxes([peak[0], peak[1], peak[0], peak[1]], orig_size, (w, h))[:, :2]
        size = max(6, max(h, w) // 40)
        cv2.drawMarker(out, (int(round(px)), int(round(py))), (0, 255, 0), cv2.MARKER_CROSS, size, thick + 1)
    if title:
        cv2.putText(out, title, (5, int(20 * font * 1.5)), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 255, 255), 1,
                    cv2.LINE_AA)
    return out
