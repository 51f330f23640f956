"""COCO-style detection numbers through pycocotools' ``COCOeval``.

One ``COCOeval`` run with the IoU thresholds ``0.4, 0.5, 0.55, ..., 0.95`` gives both the standard COCO
numbers (AP@[.5:.95], AP50, AP75, APs/m/l over the default ten thresholds; thresholds are evaluated
independently, so the extra 0.4 changes none of them) and ``coco_mAP40``: the 101-point interpolated
AP at IoU >= 0.4 (COCO's matching: a detection may take the best *unmatched* box, unlike VOC's).
"No finding" is not a box category and is left out. Category ids are the 0-based class ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detx.core.predictions import GroundTruth, Predictions
from detx.evaluation.matching import flatten_ground_truth, flatten_predictions

logger = logging.getLogger(__name__)

__all__ = ["coco_metrics", "build_coco_objects"]

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def build_coco_objects(
    gt: GroundTruth, preds: Mapping[str, Predictions], num_classes: int
) -> tuple[COCO, COCO, list[str]]:
    """In-memory pycocotools ground truth and results (image ids 1..N in ``gt`` order).

    Returns:
        (coco_gt, coco_dt, image_ids) where ``image_ids[k - 1]`` is COCO image ``k``.
    """
    g = flatten_ground_truth(gt, num_classes, add_no_finding=False)
    p = flatten_predictions(preds, g.image_ids, max_class=num_classes)
    keep = p.classes < num_classes  # "No finding" is not a box category
    p = p.select(keep)

    def xywh(b: np.ndarray) -> np.ndarray:
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)

    gwh = xywh(g.boxes)
    dataset = {
        "images": [{"id": k + 1} for k in range(len(g.image_ids))],
        "categories": [{"id": c, "name": str(c)} for c in range(num_classes)],
        "annotations": [
            {"id": j + 1, "image_id": int(g.image[j]) + 1, "category_id": int(g.classes[j]),
             "bbox": gwh[j].tolist(), "area": float(gwh[j, 2] * gwh[j, 3]), "iscrowd": 0}
            for j in range(len(g.classes))
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if len(p.classes) == 0:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            coco_dt.createIndex()
            return coco_gt, coco_dt, g.image_ids
        pwh = xywh(p.boxes)
        results = [
            {"image_id": int(p.image[j]) + 1, "category_id": int(p.classes[j]), "bbox": pwh[j].tolist(),
             "score": float(p.scores[j])}
            for j in range(len(p.classes))
        ]
        coco_dt = coco_gt.loadRes(results)
    return coco_gt, coco_dt, g.image_ids


def _mean_valid(x: np.ndarray) -> float | None:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else None


def coco_metrics(
    gt: GroundTruth,
    preds: Mapping[str, Predictions],
    num_classes: int,
    extra_iou_thr: float = 0.4,
) -> dict[str, Any]:
    """COCO numbers of box predictions, as fractions in [0, 1] (None where undefined).

    Args:
        gt: image_id -> (boxes xyxy, classes) finding boxes only.
        preds: image_id -> Predictions; the No-finding class ``num_classes`` is ignored.
        num_classes: the number of finding classes.
        extra_iou_thr: the threshold of the extra 101-point AP (``coco_mAP40`` for 0.4).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "coco_mAP40", "AP_per_class": {class_id: AP@[.5:.95]},
        "AP40_per_class": {class_id: AP at extra_iou_thr}}`` (key names follow ``extra_iou_thr``).
    """
    coco_gt, coco_dt, _ = build_coco_objects(gt, preds, num_classes)
    extra_name = f"coco_mAP{round(extra_iou_thr * 100):d}"
    extra_per_class = f"AP{round(extra_iou_thr * 100):d}_per_class"
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        default_thrs = ev.params.iouThrs.copy()
        ev.params.iouThrs = np.concatenate([[extra_iou_thr], default_thrs])
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [T, R, K, A, M]; T index 0 is the extra threshold
    std = precision[1:]
    area = {lbl: i for i, lbl in enumerate(ev.params.areaRngLbl)}
    m100 = len(ev.params.maxDets) - 1
    out: dict[str, Any] = {
        "AP": _mean_valid(std[:, :, :, area["all"], m100]),
        "AP50": _mean_valid(std[np.where(default_thrs == 0.5)[0], :, :, area["all"], m100]),
        "AP75": _mean_valid(std[np.where(default_thrs == 0.75)[0], :, :, area["all"], m100]),
        "APs": _mean_valid(std[:, :, :, area["small"], m100]),
        "APm": _mean_valid(std[:, :, :, area["medium"], m100]),
        "APl": _mean_valid(std[:, :, :, area["large"], m100]),
        extra_name: _mean_valid(precision[0, :, :, area["all"], m100]),
    }
    cat_ids = list(ev.params.catIds)
    out["AP_per_class"] = {c: _mean_valid(std[:, :, cat_ids.index(c), area["all"], m100]) for c in range(num_classes)}
    out[extra_per_class] = {
        c: _mean_valid(precision[0, :, cat_ids.index(c), area["all"], m100]) for c in range(num_classes)
    }
    return out


def summary_in_percent(metrics: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """detectron2's ``COCOEvaluator`` shape: AP, AP50, ... and ``AP-<class>`` in percent, NaN where undefined."""

    def pct(v: float | None) -> float:
        return float("nan") if v is None else 100.0 * float(v)

    out = {k: pct(metrics[k]) for k in SUMMARY_KEYS}
    out.update({f"AP-{name}": pct(metrics["AP_per_class"][c]) for c, name in enumerate(class_names)})
    return out
