"""Per-image error of a submission against its ground truth, to find the images worth looking at.

The error of an image is ``missed + false_positives``: its ground-truth boxes that no prediction found, plus its
predicted boxes that found none, counting predictions of confidence ``>= score_thr`` only and matching within a
class at IoU ``> iou_thr`` by the challenge's rule (:func:`detx.evaluation.matching.match_detections`: descending
confidence, each prediction against its best ground-truth box, one prediction per box). The No-finding entry is
not a box and is left out. Unlike the challenge metric this needs a confidence threshold, since a ranking metric
has no per-image count of mistakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from detx.core.predictions import Predictions
from detx.evaluation.matching import match_detections

__all__ = ["ImageError", "per_image_errors"]


@dataclass(frozen=True)
class ImageError:
    """One image's counts: ground-truth boxes, predicted boxes at or above the threshold, and the mistakes."""

    image_id: str
    gt_boxes: int
    pred_boxes: int
    missed: int
    false_positives: int

    @property
    def error(self) -> int:
        return self.missed + self.false_positives

    def to_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "error": self.error}


def per_image_errors(
    gt: Mapping[str, tuple[np.ndarray, np.ndarray]],
    preds: Mapping[str, Predictions],
    image_ids: Sequence[str],
    num_classes: int,
    score_thr: float = 0.3,
    iou_thr: float = 0.4,
) -> list[ImageError]:
    """:class:`ImageError` of each of ``image_ids``, worst first (ties: in ``image_ids`` order).

    Args:
        gt: image_id -> (boxes (M, 4) xyxy original pixels, classes (M,)) of the findings.
        preds: image_id -> predictions in original pixels (an image absent predicts nothing).
        num_classes: finding classes; entries of class >= num_classes (No finding) are left out.
    """
    index = {i: k for k, i in enumerate(image_ids)}
    n = len(image_ids)
    gt_parts, pred_parts = [], []
    for i, k in index.items():
        boxes, classes = gt.get(i, (np.zeros((0, 4)), np.zeros(0, np.int64)))
        classes = np.asarray(classes, np.int64).reshape(-1)
        gt_parts.append((np.asarray(boxes, np.float64).reshape(-1, 4), classes, np.full(len(classes), k)))
        p = preds.get(i, Predictions())
        keep = (p.classes < num_classes) & (p.scores >= score_thr)
        pred_parts.append((p.boxes[keep], p.scores[keep], p.classes[keep], np.full(int(keep.sum()), k)))
    g_boxes = np.concatenate([g[0] for g in gt_parts]) if n else np.zeros((0, 4))
    g_cls = np.concatenate([g[1] for g in gt_parts]) if n else np.zeros(0, np.int64)
    g_img = np.concatenate([g[2] for g in gt_parts]) if n else np.zeros(0, np.int64)
    p_boxes = np.concatenate([p[0] for p in pred_parts]) if n else np.zeros((0, 4))
    p_scores = np.concatenate([p[1] for p in pred_parts]) if n else np.zeros(0)
    p_cls = np.concatenate([p[2] for p in pred_parts]) if n else np.zeros(0, np.int64)
    p_img = np.concatenate([p[3] for p in pred_parts]) if n else np.zeros(0, np.int64)
    tp = np.zeros(n, np.int64)
    for c in np.union1d(np.unique(g_cls), np.unique(p_cls)):
        gm, pm = g_cls == c, p_cls == c
        m = match_detections(g_boxes[gm], g_img[gm], p_boxes[pm], p_scores[pm], p_img[pm], iou_thr)
        np.add.at(tp, p_img[pm][m.order][m.tp], 1)
    n_gt = np.bincount(g_img.astype(np.int64), minlength=n)
    n_pred = np.bincount(p_img.astype(np.int64), minlength=n)
    errors = [ImageError(i, int(n_gt[k]), int(n_pred[k]), int(n_gt[k] - tp[k]), int(n_pred[k] - tp[k]))
              for i, k in index.items()]
    return sorted(errors, key=lambda e: -e.error)  # stable: ties keep image_ids order
