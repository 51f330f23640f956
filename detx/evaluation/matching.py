"""Ground truth and predictions as flat arrays, IoU, and the PASCAL VOC (devkit) detection matching.

The matching is the VOC 2010 devkit's: detections of one class over all images in descending
confidence; each is compared with the single ground-truth box of highest IoU in its image (continuous
coordinates, no +1); IoU > threshold and that box not yet matched: true positive, otherwise false
positive (the detection does not fall back to its second-best box). Because a detection's fate depends
only on whether an earlier candidate took the same box, the greedy loop reduces to "the first
candidate of each box wins", which is computed with numpy over the (detection, ground truth) pairs that
share an image, without a Python loop over detections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detx.core.boxes import paired_iou
from detx.core.predictions import WHOLE_IMAGE_BOX, GroundTruth, Predictions


@dataclass
class FlatBoxes:
    """All boxes of a set of images as flat arrays; ``image`` indexes ``image_ids``."""

    image_ids: list[str]
    boxes: np.ndarray  # (N, 4) float64
    classes: np.ndarray  # (N,) int64
    image: np.ndarray  # (N,) int64
    scores: np.ndarray | None = None  # (N,) float64, predictions only

    def select(self, mask: np.ndarray) -> FlatBoxes:
        return FlatBoxes(self.image_ids, self.boxes[mask], self.classes[mask], self.image[mask],
                         None if self.scores is None else self.scores[mask])


def flatten_ground_truth(gt: GroundTruth, num_classes: int, add_no_finding: bool = True) -> FlatBoxes:
    """Concatenate per-image ground truth; optionally add the no-finding box (class ``num_classes``, box
    ``0 0 1 1``) to every image without a finding box.

    Raises:
        ValueError: a box with a class outside ``0 .. num_classes - 1`` or a malformed array, naming the image.
    """
    image_ids = [str(k) for k in gt]
    boxes, classes, image = [], [], []
    for i, (image_id, value) in enumerate(gt.items()):
        b, c = value
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        c = np.asarray(c, dtype=np.int64).reshape(-1)
        if len(b) != len(c):
            raise ValueError(f"ground truth of image {image_id}: {len(b)} boxes but {len(c)} classes")
        if len(c) and (c.min() < 0 or c.max() >= num_classes):
            raise ValueError(
                f"ground truth of image {image_id}: class {int(c[(c < 0) | (c >= num_classes)][0])} outside "
                f"0-{num_classes - 1} (the no-finding box is added by the metric, do not pass it)"
            )
        if len(c) == 0 and add_no_finding:
            b = np.asarray([WHOLE_IMAGE_BOX], np.float64)
            c = np.asarray([num_classes], np.int64)
        boxes.append(b)
        classes.append(c)
        image.append(np.full(len(c), i, np.int64))
    return FlatBoxes(
        image_ids,
        np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        np.concatenate(classes) if classes else np.zeros(0, np.int64),
        np.concatenate(image) if image else np.zeros(0, np.int64),
    )


def flatten_predictions(preds: Mapping[str, Predictions], image_ids: Sequence[str], max_class: int) -> FlatBoxes:
    """Concatenate the predictions of ``image_ids`` (images absent from ``preds`` have none).

    Raises:
        ValueError: ``preds`` has an image outside ``image_ids`` or a class outside ``0 .. max_class``.
    """
    index = {k: i for i, k in enumerate(image_ids)}
    extra = [k for k in preds if k not in index]
    if extra:
        raise ValueError(f"predictions for {len(extra)} image(s) not in the ground truth, e.g. {extra[0]}")
    boxes, scores, classes, image = [], [], [], []
    for image_id, p in preds.items():
        if len(p) == 0:
            continue
        if p.classes.min() < 0 or p.classes.max() > max_class:
            raise ValueError(f"predictions of image {image_id}: class outside 0-{max_class}")
        boxes.append(p.boxes)
        scores.append(p.scores)
        classes.append(p.classes)
        image.append(np.full(len(p), index[image_id], np.int64))
    if not boxes:
        return FlatBoxes(list(image_ids), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(0))
    return FlatBoxes(list(image_ids), np.concatenate(boxes), np.concatenate(classes), np.concatenate(image),
                     np.concatenate(scores))


@dataclass
class MatchResult:
    """Detections of one class in descending confidence, each marked true or false positive.

    ``order`` maps back to the input detections; ``gt_index`` is the matched ground-truth box (input
    index) of each true positive, -1 otherwise; ``iou`` the detection's best IoU (-inf without a box).
    """

    order: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    gt_index: np.ndarray
    iou: np.ndarray
    num_gt: int


def match_detections(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_image: np.ndarray,
    iou_thr: float = 0.4,
) -> MatchResult:
    """VOC devkit matching of one class's detections to its ground truth over all images.

    Args:
        gt_boxes, gt_image: ground-truth boxes (M, 4) xyxy and their image index (M,).
        det_boxes, det_scores, det_image: detections (N, 4), confidences (N,), image index (N,).
        iou_thr: a detection matches when its best IoU is strictly greater.

    Returns:
        The detections sorted by descending confidence (stable for ties: input order), with TP flags.
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_image = np.asarray(gt_image, np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    order = np.argsort(-det_scores, kind="stable")
    d_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)[order]
    d_image = np.asarray(det_image, np.int64).reshape(-1)[order]
    n_det = len(order)

    # Ground truth grouped by image (stable: file order within an image, which decides IoU ties).
    g_order = np.argsort(gt_image, kind="stable")
    g_boxes = gt_boxes[g_order]
    n_images = int(max(gt_image.max(initial=-1), d_image.max(initial=-1))) + 1
    start = np.searchsorted(gt_image[g_order], np.arange(n_images), side="left")
    end = np.searchsorted(gt_image[g_order], np.arange(n_images), side="right")

    ovmax = np.full(n_det, -np.inf)
    jmax = np.full(n_det, -1, np.int64)  # index into g_boxes
    if n_det and len(g_boxes):
        n_pairs = end[d_image] - start[d_image]
        has = n_pairs > 0
        total = int(n_pairs.sum())
        if total:
            first_pair = np.cumsum(n_pairs) - n_pairs
            pair_det = np.repeat(np.arange(n_det), n_pairs)
            pair_gt = np.repeat(start[d_image], n_pairs) + (np.arange(total) - np.repeat(first_pair, n_pairs))
            iou = paired_iou(d_boxes[pair_det], g_boxes[pair_gt])
            ovmax[has] = np.maximum.reduceat(iou, first_pair[has])
            # the first ground-truth box reaching the maximum, like MATLAB's max()
            at_max = np.flatnonzero(iou == ovmax[pair_det])
            dets_at_max, first = np.unique(pair_det[at_max], return_index=True)
            jmax[dets_at_max] = pair_gt[at_max[first]]

    tp = np.zeros(n_det, bool)
    gt_index = np.full(n_det, -1, np.int64)
    cand = np.flatnonzero(ovmax > iou_thr)
    if len(cand):
        _, first = np.unique(jmax[cand], return_index=True)
        winners = cand[first]
        tp[winners] = True
        gt_index[winners] = g_order[jmax[winners]]
    return MatchResult(order, det_scores[order], tp, gt_index, ovmax, len(gt_boxes))
