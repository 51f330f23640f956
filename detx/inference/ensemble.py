"""Weighted boxes fusion (WBF) across models, folds and TTA views, per image and class.

``ensemble_boxes.weighted_boxes_fusion`` is the reference. It fuses one image per call with Python
loops over boxes; for a test set (3,000 images x 5 models x 2 TTA views x 100 boxes) that costs minutes.
The batched WBF (:func:`detx.core.wbf.weighted_boxes_fusion_batched`, re-exported here) runs the same greedy
clustering for every image in one call, compiled with numba, and reproduces ensemble-boxes exactly
(tests/test_inference_ensemble.py compares the two); it lives in :mod:`detx.core.wbf` because the reader fusion of
:mod:`detx.data.fusion` uses it too.

Coordinates here are normalized ``[x0, y0, x1, y1]`` in [0, 1], as ensemble-boxes expects;
``ensemble_predictions`` converts from and to original pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from detx.core.predictions import Predictions
from detx.core.wbf import CONF_TYPES, weighted_boxes_fusion, weighted_boxes_fusion_batched

logger = logging.getLogger(__name__)

__all__ = ["CONF_TYPES", "ensemble_predictions", "weighted_boxes_fusion", "weighted_boxes_fusion_batched"]


def ensemble_predictions(
    prediction_sets: Sequence[Mapping[str, object]],
    image_sizes: Mapping[str, tuple[float, float]],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    max_detections: int | None = None,
) -> dict:
    """Fuse several models' (or TTA views') predictions per image and class with WBF.

    Args:
        prediction_sets: one ``{image_id: Predictions}`` per model, boxes in original pixels; an image
            missing from a model counts as no boxes from it.
        image_sizes: ``image_id -> (width, height)`` in original pixels, to normalize the boxes.
        weights, iou_thr, skip_box_thr, conf_type: WBF parameters (ensemble-boxes' meaning).
        max_detections: keep at most this many fused boxes per image (highest scores), None for all.

    Returns:
        ``{image_id: Predictions}`` for every image of ``image_sizes``, boxes in original pixels.
    """
    ids = list(image_sizes)
    index = {image_id: i for i, image_id in enumerate(ids)}
    wh = np.array([image_sizes[i] for i in ids], dtype=np.float64).reshape(-1, 2)
    if len(wh) and (wh <= 0).any():
        raise ValueError("image sizes must be positive")
    parts_b, parts_s, parts_c, parts_i, parts_m = [], [], [], [], []
    for m, preds in enumerate(prediction_sets):
        for image_id, p in preds.items():
            if image_id not in index:
                raise ValueError(f"model {m} predicts image {image_id!r} that has no size")
            k = len(p.scores)
            if k == 0:
                continue
            i = index[image_id]
            parts_b.append(np.asarray(p.boxes, dtype=np.float64) / np.tile(wh[i], 2))
            parts_s.append(np.asarray(p.scores, dtype=np.float64))
            parts_c.append(np.asarray(p.classes, dtype=np.int64))
            parts_i.append(np.full(k, i, dtype=np.int64))
            parts_m.append(np.full(k, m, dtype=np.int64))
    def cat(xs, shape):
        return (np.concatenate(xs) if xs else np.zeros(shape))
    b, s, c, im = weighted_boxes_fusion_batched(
        cat(parts_b, (0, 4)), cat(parts_s, 0), cat(parts_c, 0), cat(parts_i, 0), cat(parts_m, 0),
        len(prediction_sets), weights, iou_thr, skip_box_thr, conf_type)
    bounds = np.searchsorted(im, np.arange(len(ids) + 1))
    out = {}
    for i, image_id in enumerate(ids):
        sl = slice(bounds[i], bounds[i + 1])
        if max_detections is not None:
            sl = slice(bounds[i], min(bounds[i + 1], bounds[i] + max_detections))
        out[image_id] = Predictions(boxes=b[sl] * np.tile(wh[i], 2), scores=s[sl].astype(np.float64),
                                    classes=c[sl].astype(np.int64))
    return out
