"""COCO numbers: equal to a direct pycocotools call on files."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detx.core.predictions import Predictions
from detx.evaluation.coco_map import coco_metrics, summary_in_percent


def _case(seed=0):
    rng = np.random.default_rng(seed)
    gt, preds = {}, {}
    for i in range(8):
        m = int(rng.integers(0, 4))
        xy = rng.uniform(0, 300, (m, 2))
        wh = rng.choice([10.0, 50.0, 150.0], (m, 1)) * rng.uniform(0.8, 1.2, (m, 2))  # small, medium, large
        gt[f"img{i}"] = (np.hstack([xy, xy + wh]), rng.integers(0, 3, m))
        n = int(rng.integers(0, 10))
        boxes = np.hstack([rng.uniform(0, 300, (n, 2)), np.zeros((n, 2))])
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(5, 160, (n, 2))
        if m:
            k = min(n, m)
            boxes[:k] = gt[f"img{i}"][0][:k] + rng.normal(0, 4, (k, 4))
        classes = rng.integers(0, 4, n)  # class 3 = "No finding", ignored by COCO
        if m:
            classes[: min(n, m)] = gt[f"img{i}"][1][: min(n, m)]
        preds[f"img{i}"] = Predictions(boxes, rng.uniform(0, 1, n), classes)
    return gt, preds


def _direct(gt, preds, tmp_path, iou_thrs=None):
    ids = {k: i + 1 for i, k in enumerate(gt)}
    anns, res = [], []
    for k, (b, c) in gt.items():
        for box, cls in zip(b, c):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": ids[k], "category_id": int(cls),
                         "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    for k, p in preds.items():
        for box, s, cls in zip(p.boxes, p.scores, p.classes):
            if cls < 3:
                res.append({"image_id": ids[k], "category_id": int(cls), "score": s,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": i} for i in ids.values()], "annotations": anns,
                                                  "categories": [{"id": c} for c in range(3)]}))
    (tmp_path / "dt.json").write_text(json.dumps(res))
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(cg, cg.loadRes(str(tmp_path / "dt.json")), "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_direct_pycocotools(tmp_path, seed):
    gt, preds = _case(seed)
    ours = coco_metrics(gt, preds, num_classes=3)
    ev = _direct(gt, preds, tmp_path)
    for key, stat in zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], ev.stats[:6]):
        if stat == -1:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(stat, abs=1e-12), key
    for c in range(3):
        pr = ev.eval["precision"][:, :, c, 0, -1]
        expect = float(np.mean(pr[pr > -1])) if (pr > -1).any() else None
        assert ours["AP_per_class"][c] == (pytest.approx(expect, abs=1e-12) if expect is not None else None)
    ev40 = _direct(gt, preds, tmp_path, iou_thrs=[0.4])
    assert ours["coco_mAP40"] == pytest.approx(ev40.stats[0], abs=1e-12)


def test_coco_matching_falls_back_to_free_box_and_percent_summary():
    # the VOC test's case: the second detection's best box is taken; COCO gives it the free one
    gt = {"a": (np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float), np.array([0, 0]))}
    preds = {"a": Predictions([[0, 0, 10, 10], [2, 0, 12, 10]], [0.9, 0.8], [0, 0])}
    r = coco_metrics(gt, preds, num_classes=2)
    assert r["coco_mAP40"] == pytest.approx(1.0) and r["AP_per_class"][1] is None
    s = summary_in_percent(r, ["x", "y"])
    assert s["AP-x"] == pytest.approx(100 * r["AP"]) and np.isnan(s["AP-y"])


def test_no_predictions_and_no_ground_truth():
    gt = {"a": (np.array([[0, 0, 10, 10]], float), np.array([0])), "b": (np.zeros((0, 4)), np.zeros(0, int))}
    r = coco_metrics(gt, {}, num_classes=2)
    assert r["AP"] == 0.0 and r["coco_mAP40"] == 0.0 and r["AP_per_class"] == {0: 0.0, 1: None}
    r = coco_metrics({"b": gt["b"]}, {"b": Predictions([[0, 0, 5, 5]], [0.5], [1])}, num_classes=2)
    assert r["AP"] is None and r["coco_mAP40"] is None
