"""Weighted boxes fusion (WBF) of many small sets of boxes at once: the one home of detx's WBF.

``ensemble_boxes.weighted_boxes_fusion`` is the reference. It fuses one image per call with Python loops over boxes;
``weighted_boxes_fusion_batched`` runs the same greedy clustering for every set (an image, or any other grouping
passed as ``image_index``) in one call: boxes are filtered and sorted with numpy, the clustering loop is compiled
with numba (a dependency of ensemble-boxes). It reproduces ensemble-boxes exactly, including its float32 rounding of
fused boxes and its order of boxes with equal scores (tests/test_inference_ensemble.py and tests/test_fusion.py
compare the two).

Two users: model ensembling and TTA (:mod:`detx.inference.ensemble`) and the fusion of the readers' boxes of a
reader CSV (:mod:`detx.data.fusion`), which sit in different layers; the kernel lives here, below both.
Coordinates are normalized ``[x0, y0, x1, y1]`` in [0, 1], as ensemble-boxes expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["CONF_TYPES", "weighted_boxes_fusion", "weighted_boxes_fusion_batched"]

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
_CONF_CODE = {name: i for i, name in enumerate(CONF_TYPES)}
_MAX_MODELS = 62  # model membership of a cluster is a bit mask in an int64


@numba.njit(cache=True)
def _cluster_groups(coords, s, w, model, starts, lengths, iou_thr, conf_code, weights, weights_sum,
                    weights_max, num_models, allows_overflow):  # pragma: no cover - compiled
    """Greedy WBF clustering of each group (one image and label), boxes already sorted by score.

    Writes the clusters of group g at rows starts[g] .. starts[g] + n_clusters[g] - 1 of the outputs.
    """
    n = coords.shape[0]
    out_box = np.empty((n, 4), dtype=np.float64)
    out_score = np.empty(n, dtype=np.float64)
    n_clusters = np.zeros(lengths.shape[0], dtype=np.int64)
    sum32 = np.empty((n, 4), dtype=np.float32)
    conf = np.empty(n, dtype=np.float64)
    smax = np.empty(n, dtype=np.float64)
    wsum = np.empty(n, dtype=np.float64)
    count = np.empty(n, dtype=np.int64)
    mask = np.empty(n, dtype=np.int64)
    for g in range(lengths.shape[0]):
        st = starts[g]
        k = 0
        for j in range(lengths[g]):
            b = st + j
            bx0 = coords[b, 0]
            by0 = coords[b, 1]
            bx1 = coords[b, 2]
            by1 = coords[b, 3]
            area_b = (bx1 - bx0) * (by1 - by0)
            best = -1
            best_iou = -np.inf
            for c in range(st, st + k):
                xa = max(out_box[c, 0], bx0)
                ya = max(out_box[c, 1], by0)
                xb = min(out_box[c, 2], bx1)
                yb = min(out_box[c, 3], by1)
                inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
                area_a = (out_box[c, 2] - out_box[c, 0]) * (out_box[c, 3] - out_box[c, 1])
                iou = inter / (area_a + area_b - inter)
                if iou > best_iou:
                    best_iou = iou
                    best = c
            if best >= 0 and best_iou > iou_thr:
                c = best
                for d in range(4):
                    sum32[c, d] = np.float32(np.float64(sum32[c, d]) + s[b] * coords[b, d])
                conf[c] += s[b]
                smax[c] = max(smax[c], s[b])
                wsum[c] += w[b]
                count[c] += 1
                mask[c] |= np.int64(1) << model[b]
                for d in range(4):
                    out_box[c, d] = np.float64(np.float32(np.float64(sum32[c, d]) / conf[c]))
                if conf_code == 1:
                    out_score[c] = np.float64(np.float32(smax[c]))
                else:
                    out_score[c] = np.float64(np.float32(conf[c] / count[c]))
            else:
                c = st + k
                k += 1
                for d in range(4):
                    out_box[c, d] = coords[b, d]
                    sum32[c, d] = np.float32(s[b] * coords[b, d])
                out_score[c] = s[b]
                conf[c] = s[b]
                smax[c] = s[b]
                wsum[c] = w[b]
                count[c] = 1
                mask[c] = np.int64(1) << model[b]
        # rescale confidences by the number of models and boxes, as ensemble-boxes does
        for c in range(st, st + k):
            stored_w = wsum[c] if count[c] == 1 else np.float64(np.float32(wsum[c]))
            if conf_code == 2:  # box_and_model_avg
                present = 0.0
                for t in range(num_models):
                    if (mask[c] >> t) & 1:
                        present += weights[t]
                out_score[c] = out_score[c] * count[c] / stored_w
                out_score[c] = out_score[c] * present / weights_sum
            elif conf_code == 3:  # absent_model_aware_avg
                absent = 0.0
                for t in range(num_models):
                    if not (mask[c] >> t) & 1:
                        absent += weights[t]
                out_score[c] = out_score[c] * count[c] / (stored_w + absent)
            elif conf_code == 1:  # max
                out_score[c] = out_score[c] / weights_max
            elif not allows_overflow:
                out_score[c] = out_score[c] * min(num_models, count[c]) / weights_sum
            else:
                out_score[c] = out_score[c] * count[c] / weights_sum
        n_clusters[g] = k
    return out_box, out_score, n_clusters


@numba.njit(cache=True)
def _sort_groups(s, starts, lengths):  # pragma: no cover - compiled
    """Per group, the positions sorted by descending score (stable), and whether the group has tied scores."""
    perm = np.empty(s.shape[0], dtype=np.int64)
    tied = np.zeros(starts.shape[0], dtype=np.bool_)
    for g in range(starts.shape[0]):
        st = starts[g]
        o = np.argsort(-s[st:st + lengths[g]], kind="mergesort")
        for j in range(lengths[g]):
            perm[st + j] = st + o[j]
            if j > 0 and s[st + o[j]] == s[st + o[j - 1]]:
                tied[g] = True
    return perm, tied


def _prefilter(boxes: np.ndarray, scores: np.ndarray, skip_box_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """ensemble-boxes' box checks: order the corners, clip to [0, 1], drop low scores and zero areas.

    Returns the cleaned boxes and the boolean mask of boxes kept.
    """
    b = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    x0 = np.minimum(b[:, 0], b[:, 2])
    x1 = np.maximum(b[:, 0], b[:, 2])
    y0 = np.minimum(b[:, 1], b[:, 3])
    y1 = np.maximum(b[:, 1], b[:, 3])
    b = np.clip(np.stack([x0, y0, x1, y1], axis=1), 0.0, 1.0)
    keep = (np.asarray(scores, dtype=np.float64) >= skip_box_thr) & ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0.0)
    return b, keep


def weighted_boxes_fusion_batched(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    image_index: np.ndarray,
    model_index: np.ndarray,
    num_models: int,
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """WBF of many images at once, equal to ``ensemble_boxes.weighted_boxes_fusion`` image by image.

    Args:
        boxes: (N, 4) normalized xyxy boxes of all images and models.
        scores, labels: (N,) confidences and integer class ids.
        image_index: (N,) integer image of each box (0-based; images are fused independently).
        model_index: (N,) integer model (or TTA view) of each box, in ``range(num_models)``.
        num_models: number of models; a model with no box in an image still counts (as in ensemble-boxes).
        weights: per-model weights (default all 1).
        iou_thr, skip_box_thr, conf_type, allows_overflow: as in ensemble-boxes.

    Returns:
        boxes (K, 4), scores (K,), labels (K,) int64 and image_index (K,), ordered by image, then as
        ensemble-boxes orders one image's output (descending score).
    """
    if conf_type not in _CONF_CODE:
        raise ValueError(f"unknown conf_type {conf_type!r}; expected one of {CONF_TYPES}")
    if not 1 <= num_models <= _MAX_MODELS:
        raise ValueError(f"num_models must be in [1, {_MAX_MODELS}], got {num_models}")
    w_models = np.ones(num_models) if weights is None else np.asarray(weights, dtype=np.float64)
    if w_models.shape != (num_models,):
        raise ValueError(f"expected {num_models} model weights, got {len(w_models)}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(np.int64)
    image_index = np.asarray(image_index).ravel().astype(np.int64)
    model_index = np.asarray(model_index).ravel().astype(np.int64)
    n = len(boxes)
    if not (len(scores) == len(labels) == len(image_index) == len(model_index) == n):
        raise ValueError("boxes, scores, labels, image_index and model_index must have the same length")
    if n and (model_index.min() < 0 or model_index.max() >= num_models):
        raise ValueError(f"model_index outside [0, {num_models})")
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if n == 0:
        return empty

    # ensemble-boxes reads model 0's boxes first, then model 1's ...: put the boxes in that order.
    key = image_index * num_models + model_index
    if (np.diff(key) < 0).any():
        order = np.argsort(key, kind="stable")
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        image_index, model_index = image_index[order], model_index[order]
    boxes, keep = _prefilter(boxes, scores, skip_box_thr)
    boxes, labels, image_index, model_index = boxes[keep], labels[keep], image_index[keep], model_index[keep]
    w = w_models[model_index]
    s = scores[keep] * w
    if len(s) == 0:
        return empty

    # groups of one image and label, each sorted by descending score (ties as ensemble-boxes sorts them)
    lab0 = labels.min()
    by_group = np.argsort(image_index * (labels.max() - lab0 + 1) + (labels - lab0), kind="stable")
    gi, gl = image_index[by_group], labels[by_group]
    new_group = np.r_[True, (gi[1:] != gi[:-1]) | (gl[1:] != gl[:-1])]
    starts = np.flatnonzero(new_group)
    lengths = np.diff(np.r_[starts, len(s)])
    sorted_idx, tied = _sort_groups(s[by_group], starts, lengths)
    sorted_idx = by_group[sorted_idx]
    for g in np.flatnonzero(tied):  # numpy's (unstable) argsort orders ties: call it as ensemble-boxes does
        sl = slice(starts[g], starts[g] + lengths[g])
        members = np.sort(sorted_idx[sl])
        sorted_idx[sl] = members[np.argsort(s[members])[::-1]]

    out_box, out_score, n_clusters = _cluster_groups(
        boxes[sorted_idx], s[sorted_idx], w[sorted_idx], model_index[sorted_idx], starts, lengths,
        float(iou_thr), _CONF_CODE[conf_type], w_models, float(w_models.sum()), float(w_models.max()),
        num_models, bool(allows_overflow))

    # per image: clusters of its labels in order of first appearance, then sorted by descending score
    g_image = gi[starts]
    g_first = by_group[starts]  # labels of one image appear in ensemble-boxes' dict in input order
    g_order = np.lexsort((g_first, g_image))
    rows = np.concatenate([np.arange(starts[g], starts[g] + n_clusters[g]) for g in g_order])
    row_image = np.repeat(g_image[g_order], n_clusters[g_order])
    row_label = np.repeat(gl[starts][g_order], n_clusters[g_order])
    r_box, r_score = out_box[rows], out_score[rows]
    bounds = np.flatnonzero(np.r_[True, row_image[1:] != row_image[:-1], True])
    final = np.empty(len(rows), dtype=np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        final[a:b] = a + np.argsort(r_score[a:b])[::-1]
    return r_box[final], r_score[final], row_label[final], row_image[final]


def weighted_boxes_fusion(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, ensemble-boxes' signature: one entry per model in each list; returns boxes, scores, labels."""
    m = len(boxes_list)
    sizes = [len(np.asarray(b).reshape(-1, 4)) for b in boxes_list]
    def cat(xs):
        return (np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in xs]) if xs else np.zeros(0))
    boxes = cat(boxes_list).reshape(-1, 4)
    b, s, lab, _ = weighted_boxes_fusion_batched(
        boxes, cat(scores_list), cat(labels_list), np.zeros(len(boxes), dtype=np.int64),
        np.repeat(np.arange(m), sizes), m, weights, iou_thr, skip_box_thr, conf_type, allows_overflow)
    return b, s, lab
