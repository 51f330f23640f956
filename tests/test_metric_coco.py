"""COCO numbers: detx computes them with faster-coco-eval; pycocotools (a direct call on JSON files) is the reference.

Every one of the twelve ``summarize()`` stats, ``coco_mAP40`` and the per-class APs must agree to 1e-6 on hand-made
and random cases: empty images, no predictions, many classes, tied scores, more than ``maxDets`` detections.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detx.core.predictions import Predictions
from detx.evaluation.coco_map import STATS_KEYS, coco_metrics, summary_in_percent


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


def _direct(gt, preds, tmp_path, iou_thrs=None, num_classes=3):
    ids = {k: i + 1 for i, k in enumerate(gt)}
    anns, res = [], []
    for k, (b, c) in gt.items():
        for box, cls in zip(b, c):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": ids[k], "category_id": int(cls),
                         "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    for k, p in preds.items():
        for box, s, cls in zip(p.boxes, p.scores, p.classes):
            if cls < num_classes:
                res.append({"image_id": ids[k], "category_id": int(cls), "score": s,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": i} for i in ids.values()], "annotations": anns,
                                                  "categories": [{"id": c} for c in range(num_classes)]}))
    (tmp_path / "dt.json").write_text(json.dumps(res))
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(tmp_path / "gt.json"))
        if res:
            cd = cg.loadRes(str(tmp_path / "dt.json"))
        else:  # pycocotools' loadRes cannot take an empty list: an empty result set by hand
            cd = COCO()
            cd.dataset = {"images": cg.dataset["images"], "categories": cg.dataset["categories"], "annotations": []}
            cd.createIndex()
        ev = COCOeval(cg, cd, "bbox")
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


def _random_case(seed, n_images, num_classes, ties=False, crowded=False):
    """Random images of 0-5 boxes (a third empty), predictions near them and anywhere; ``ties``: scores rounded to one
    decimal (many equal); ``crowded``: one image with 150 detections of one class (beyond maxDets = 100)."""
    rng = np.random.default_rng(seed)
    gt, preds = {}, {}
    for i in range(n_images):
        m = 0 if rng.random() < 0.33 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.choice([12.0, 60.0, 200.0], (m, 1)) * rng.uniform(0.7, 1.3, (m, 2))
        gb, gc = np.hstack([xy, xy + wh]), rng.integers(0, num_classes, m)
        gt[f"im{i}"] = (gb, gc)
        n = int(rng.integers(0, 25))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(4, 220, (n, 2))])
        classes = rng.integers(0, num_classes + 1, n)
        k = min(n, m)
        boxes[:k] = gb[:k] + rng.normal(0, 5, (k, 4))
        boxes[:k, 2:] = np.maximum(boxes[:k, 2:], boxes[:k, :2] + 1)
        classes[:k] = gc[:k]
        scores = rng.uniform(0, 1, n)
        if ties:
            scores = np.round(scores, 1)
        preds[f"im{i}"] = Predictions(boxes, scores, classes)
    if crowded:
        b = gt["im0"][0]
        gt["im0"] = (np.vstack([b, [[10, 10, 60, 60]]]), np.r_[gt["im0"][1], 0])
        n = 150
        boxes = np.array([[10, 10, 60, 60]], float) + rng.normal(0, 8, (n, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = np.round(rng.uniform(0, 1, n), 1)
        preds["im0"] = Predictions.concatenate([preds["im0"], Predictions(boxes, scores, np.zeros(n, int))])
    return gt, preds


def _assert_equal_to_pycocotools(gt, preds, tmp_path, num_classes):
    ours = coco_metrics(gt, preds, num_classes=num_classes)
    ev = _direct(gt, preds, tmp_path, num_classes=num_classes)
    for key, stat in zip(STATS_KEYS, ev.stats):
        if stat == -1:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(stat, abs=1e-6), key
    for c in range(num_classes):
        pr = ev.eval["precision"][:, :, c, 0, -1]
        expect = float(np.mean(pr[pr > -1])) if (pr > -1).any() else None
        assert ours["AP_per_class"][c] == (pytest.approx(expect, abs=1e-6) if expect is not None else None), c
    ev40 = _direct(gt, preds, tmp_path, iou_thrs=[0.4], num_classes=num_classes)
    assert (ours["coco_mAP40"] is None) == (ev40.stats[0] == -1)
    if ours["coco_mAP40"] is not None:
        assert ours["coco_mAP40"] == pytest.approx(ev40.stats[0], abs=1e-6)
    for c in range(num_classes):
        pr = ev40.eval["precision"][0, :, c, 0, -1]
        expect = float(np.mean(pr[pr > -1])) if (pr > -1).any() else None
        assert ours["AP40_per_class"][c] == (pytest.approx(expect, abs=1e-6) if expect is not None else None), c
    return ours


@pytest.mark.parametrize(
    "seed,n_images,num_classes,ties,crowded",
    [(0, 30, 3, False, False), (1, 60, 14, False, False), (2, 60, 14, True, False), (3, 40, 5, True, True),
     (4, 200, 14, False, True), (5, 25, 30, True, False)],
)
def test_all_stats_equal_pycocotools_random(tmp_path, seed, n_images, num_classes, ties, crowded):
    gt, preds = _random_case(seed, n_images, num_classes, ties, crowded)
    ours = _assert_equal_to_pycocotools(gt, preds, tmp_path, num_classes)
    assert ours["AP"] is not None and 0 < ours["AP"] < 1  # the case exercises real matching


def test_all_stats_equal_pycocotools_hand_made(tmp_path):
    # ties: two detections of equal score on one box (the first in input order takes it); an empty image with a
    # false positive; an image without predictions; a class without ground truth but with predictions
    gt = {
        "a": (np.array([[0, 0, 10, 10], [20, 20, 60, 60], [100, 100, 300, 300]], float), np.array([0, 0, 1])),
        "b": (np.zeros((0, 4)), np.zeros(0, int)),
        "c": (np.array([[5, 5, 15, 15]], float), np.array([1])),
    }
    preds = {
        "a": Predictions([[0, 0, 10, 10], [1, 0, 10, 10], [22, 20, 60, 62], [100, 100, 290, 300]],
                         [0.5, 0.5, 0.5, 0.9], [0, 0, 0, 1]),
        "b": Predictions([[0, 0, 50, 50], [0, 0, 50, 50]], [0.7, 0.2], [0, 2]),
    }
    ours = _assert_equal_to_pycocotools(gt, preds, tmp_path, num_classes=3)
    assert ours["AP_per_class"][2] is None  # no ground truth of class 2


def test_empty_cases_equal_pycocotools(tmp_path):
    gt = {"a": (np.array([[0, 0, 10, 10]], float), np.array([0])), "b": (np.zeros((0, 4)), np.zeros(0, int))}
    _assert_equal_to_pycocotools(gt, {}, tmp_path, num_classes=2)  # no predictions at all
    _assert_equal_to_pycocotools(gt, {"a": Predictions([[0, 0, 10, 10]], [0.3], [2])}, tmp_path,
                                 num_classes=2)  # only a No-finding entry


def test_workers_share_the_categories_with_the_same_numbers():
    # coco_metrics(workers=2) evaluates the categories in two forked processes: the same numbers, to the bit, as one
    # process (the random case of 14 classes with ties and a crowded image)
    gt, preds = _random_case(4, 200, 14, ties=True, crowded=True)
    one = coco_metrics(gt, preds, num_classes=14)
    two = coco_metrics(gt, preds, num_classes=14, workers=2)
    assert json.dumps(two, sort_keys=True) == json.dumps(one, sort_keys=True)
    assert one["AP"] is not None and 0 < one["AP"] < 1
