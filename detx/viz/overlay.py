"""Box overlays on X-rays: predictions (one colour per class, with confidences) and ground truth.

Boxes come in original DICOM pixels and are drawn on the image as prediction reads it (the prepared
PNG or the decoded DICOM), moved to its frame by :func:`detx.core.prepared.rescale_boxes`. Ground truth is drawn
white and dashed, predictions solid in their class colour.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from detx.core.predictions import Predictions
from detx.core.prepared import rescale_boxes

logger = logging.getLogger(__name__)


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct BGR colour per class (matplotlib's tab20, then repeated)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    out = []
    for k in range(num_classes):
        r, g, b, _ = cmap((2 * k) % 20 + (2 * k // 20) % 2)
        out.append((int(b * 255), int(g * 255), int(r * 255)))
    return out


def _dashed_rect(img: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], color, thickness: int,
                 dash: int = 8) -> None:
    (x0, y0), (x1, y1) = p0, p1
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False), (y0, y1, x1, False)):
        for s in range(min(a, b), max(a, b), 2 * dash):
            e = min(s + dash, max(a, b))
            q0, q1 = ((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e))
            cv2.line(img, q0, q1, color, thickness, cv2.LINE_AA)


def draw_overlay(
    image: np.ndarray,
    pred: Predictions | None,
    classes: Sequence[str],
    orig_size: tuple[float, float],
    gt: tuple[np.ndarray, np.ndarray] | None = None,
    score_thr: float = 0.3,
    min_side: int = 512,
) -> np.ndarray:
    """A BGR copy of ``image`` with boxes drawn (enlarged by an integer factor when its longest side is
    under ``min_side``).

    Args:
        image: HxW gray or HxWx3 BGR uint8.
        pred: detections in original pixels; entries of class >= len(classes) (No finding) and below
            ``score_thr`` are not drawn.
        classes: class names (label text and colour index).
        orig_size: (width, height) of the original image the boxes refer to.
        gt: (boxes (M, 4) original pixels, classes (M,)) drawn white and dashed.
    """
    img = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.ascontiguousarray(image[:, :, :3]).copy()
    h, w = img.shape[:2]
    if max(h, w) < min_side:  # small images: enlarge so that labels stay readable
        f = int(np.ceil(min_side / max(h, w)))
        img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        h, w = img.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    font = max(0.35, max(h, w) / 1600)
    colors = class_colors(len(classes))
    if gt is not None:
        for box, c in zip(rescale_boxes(gt[0], orig_size, (w, h)), np.asarray(gt[1]).ravel()):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            _dashed_rect(img, (x0, y0), (x1, y1), (255, 255, 255), thick)
            cv2.putText(img, f"GT {classes[int(c)]}", (x0, min(h - 3, y1 + int(14 * font * 2))),
                        cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    if pred is not None:
        finding = (pred.classes >= 0) & (pred.classes < len(classes))
        keep = finding & (pred.scores >= score_thr)
        if not keep.any():  # say so on the image: an overlay without boxes is not a normal prediction
            draw_banner(img, empty_overlay_note(pred, classes, score_thr), font)
        order = np.argsort(pred.scores[keep])  # highest confidence drawn last (on top)
        boxes = rescale_boxes(pred.boxes[keep], orig_size, (w, h))
        for box, s, c in zip(boxes[order], pred.scores[keep][order], pred.classes[keep][order]):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            color = colors[int(c)]
            cv2.rectangle(img, (x0, y0), (x1, y1), color, thick, cv2.LINE_AA)
            cv2.putText(img, f"{classes[int(c)]} {s:.2f}", (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, font,
                        color, 1, cv2.LINE_AA)
    return img


def empty_overlay_note(pred: Predictions, classes: Sequence[str], score_thr: float) -> str:
    """What an overlay without a drawn box says: no finding box at all, or none at or above ``score_thr`` (with the
    best one's confidence and class)."""
    finding = (pred.classes >= 0) & (pred.classes < len(classes))
    if not finding.any():
        return "no box predicted"
    best = int(np.flatnonzero(finding)[np.argmax(pred.scores[finding])])
    return (f"no box >= {score_thr:g} (best {pred.scores[best]:.2f} {classes[int(pred.classes[best])]}; "
            "lower --vis-score)")


def draw_banner(img: np.ndarray, text: str, font: float) -> None:
    """``text`` in yellow on a black strip across the top of ``img`` (in place)."""
    h = int(30 * font * 2)
    cv2.rectangle(img, (0, 0), (img.shape[1] - 1, h), (0, 0, 0), -1)
    cv2.putText(img, text, (4, int(h * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 255, 255), 1, cv2.LINE_AA)


def reader_colors(readers: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A distinct BGR colour per reader (matplotlib's Set1, then Dark2), in the given order."""
    from matplotlib import colormaps

    palette = [colormaps["Set1"](k) for k in range(9)] + [colormaps["Dark2"](k) for k in range(8)]
    out = {}
    for k, r in enumerate(readers):
        red, green, blue, _ = palette[k % len(palette)]
        out[r] = (int(blue * 255), int(green * 255), int(red * 255))
    return out


def draw_comparison(
    image: np.ndarray,
    pred: Predictions | None,
    classes: Sequence[str],
    orig_size: tuple[float, float],
    truth: dict[str, tuple[np.ndarray, np.ndarray]],
    score_thr: float = 0.3,
    title: str = "",
) -> np.ndarray:
    """Predictions (solid, class colours, as :func:`draw_overlay`) against ``truth`` drawn dashed: one entry
    ``{"GT": (boxes, classes)}`` for a fused ground truth (white), or one per reader (``{"R8": ...}``, each reader a
    colour of :func:`reader_colors`, its id beside each box and in a legend); ``title`` on a strip at the bottom."""
    img = draw_overlay(image, pred, classes, orig_size, None, score_thr)
    h, w = img.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    font = max(0.35, max(h, w) / 1600)
    colors = {"GT": (255, 255, 255)} if list(truth) == ["GT"] else reader_colors(list(truth))
    for k, (who, (boxes, cls)) in enumerate(truth.items()):
        color = colors[who]
        below = int(14 * font * 2) * (k + 1)  # each reader's labels on a line of their own
        for box, c in zip(rescale_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), orig_size, (w, h)),
                          np.asarray(cls).ravel()):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            _dashed_rect(img, (x0, y0), (x1, y1), color, thick)
            name = classes[int(c)] if 0 <= int(c) < len(classes) else str(c)
            cv2.putText(img, f"{who} {name}", (x0, min(h - 3, y1 + below)), cv2.FONT_HERSHEY_SIMPLEX, font, color,
                        1, cv2.LINE_AA)
    strip = int(30 * font * 2)
    cv2.rectangle(img, (0, h - strip), (w - 1, h - 1), (0, 0, 0), -1)
    x = 4
    if title:
        cv2.putText(img, title, (x, h - strip // 3), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
        x += cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] + 12
    for who, color in colors.items():  # the legend: who drew the dashed boxes
        cv2.putText(img, who, (x, h - strip // 3), cv2.FONT_HERSHEY_SIMPLEX, font, color, 1, cv2.LINE_AA)
        x += cv2.getTextSize(who, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] + 8
    return img
