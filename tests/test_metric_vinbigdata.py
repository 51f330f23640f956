"""The challenge metric (VOC 2010 mAP at IoU > 0.4): hand-computed cases and a loop transcription of the devkit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detx.core.boxes import box_iou
from detx.core.predictions import Predictions
from detx.evaluation.matching import match_detections
from detx.evaluation.vinbigdata import vinbigdata_map, voc_ap


def P(*entries):
    """Predictions from (class, score, x0, y0, x1, y1) tuples."""
    a = np.asarray(entries, np.float64).reshape(-1, 6)
    return Predictions(a[:, 2:], a[:, 1], a[:, 0].astype(int))


def G(*entries):
    """Ground truth from (class, x0, y0, x1, y1) tuples."""
    a = np.asarray(entries, np.float64).reshape(-1, 5)
    return a[:, 1:], a[:, 0].astype(int)


def test_iou_continuous_coordinates():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    assert box_iou([[0, 0, 10, 10]], [[10, 0, 20, 10]])[0, 0] == 0.0  # touching: no +1 overlap
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0  # empty union


def test_duplicate_detection_is_false_positive():
    gt = {"a": G((0, 0, 0, 10, 10)), "b": G((0, 20, 20, 40, 40))}
    preds = {"a": P((0, 0.9, 0, 0, 10, 10), (0, 0.8, 0, 0, 10, 10)), "b": P((0, 0.7, 20, 20, 40, 40))}
    r = vinbigdata_map(gt, preds, num_classes=1, include_no_finding=False)
    # TP FP TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3
    assert r["AP_per_class"][0] == pytest.approx(0.5 + 1 / 3)
    np.testing.assert_allclose(r["curves"][0]["precision"], [1, 0.5, 2 / 3])


def test_detection_on_already_taken_box_does_not_fall_back():
    # A and B overlap; the second detection's best box is A (IoU 2/3), taken by the first detection.
    # VOC marks it FP even though B (IoU 7/13 > 0.4) is free; COCO matching would give AP 1.
    gt = {"a": G((0, 0, 0, 10, 10), (0, 5, 0, 15, 10))}
    preds = {"a": P((0, 0.9, 0, 0, 10, 10), (0, 0.8, 2, 0, 12, 10))}
    m = match_detections(*[gt["a"][0], np.zeros(2, int)], preds["a"].boxes, preds["a"].scores, np.zeros(2, int))
    assert m.tp.tolist() == [True, False] and m.gt_index.tolist() == [0, -1]
    assert m.iou[1] == pytest.approx(80 / 120)
    r = vinbigdata_map(gt, preds, num_classes=1, include_no_finding=False)
    assert r["AP_per_class"][0] == pytest.approx(0.5)


def test_class_without_detections_scores_zero_and_class_without_gt_is_excluded():
    gt = {"a": G((0, 0, 0, 10, 10), (1, 50, 50, 60, 60))}
    preds = {"a": P((0, 0.9, 0, 0, 10, 10), (2, 0.9, 0, 0, 5, 5))}
    r = vinbigdata_map(gt, preds, num_classes=3, include_no_finding=False)
    assert r["AP_per_class"] == {0: 1.0, 1: 0.0, 2: None}
    assert r["mAP"] == pytest.approx(0.5) and r["mAP40"] == r["mAP"]
    assert r["num_gt"] == {0: 1, 1: 1, 2: 0} and r["num_pred"] == {0: 1, 1: 0, 2: 1}


def test_all_point_envelope():
    # 5 ground-truth boxes on 5 images; detections in descending confidence: T F F T T F T
    gt = {f"i{k}": G((0, 0, 0, 10, 10)) for k in range(5)}
    hits = [("i0", True), ("i0", False), ("i1", False), ("i1", True), ("i2", True), ("i2", False), ("i3", True)]
    preds: dict[str, list] = {}
    for rank, (img, hit) in enumerate(hits):
        box = (0, 0, 10, 10) if hit else (50, 50, 60, 60)
        preds.setdefault(img, []).append((0, 1.0 - 0.1 * rank, *box))
    r = vinbigdata_map(gt, {k: P(*v) for k, v in preds.items()}, num_classes=1, include_no_finding=False)
    # precision 1 .5 .33 .5 .6 .5 .571 at recall .2 .2 .2 .4 .6 .6 .8; envelope 1, .6, .6, 4/7, 0
    assert r["AP_per_class"][0] == pytest.approx(0.2 * 1 + 0.2 * 0.6 + 0.2 * 0.6 + 0.2 * 4 / 7)
    ap, precision, recall = voc_ap(np.array([1, 0, 0, 1, 1, 0, 1], bool), 5)
    assert ap == pytest.approx(0.5542857142857143)
    np.testing.assert_allclose(recall, [0.2, 0.2, 0.2, 0.4, 0.6, 0.6, 0.8])


def test_iou_exactly_threshold_is_not_a_match():
    gt = {"a": G((0, 0, 0, 10, 10))}
    preds = {"a": P((0, 0.9, 0, 0, 10, 4))}  # IoU 40 / 100 = 0.4 exactly
    assert box_iou(gt["a"][0], preds["a"].boxes)[0, 0] == 0.4
    assert vinbigdata_map(gt, preds, num_classes=1, include_no_finding=False)["AP_per_class"][0] == 0.0
    r = vinbigdata_map(gt, preds, num_classes=1, iou_thr=0.39, include_no_finding=False)
    assert r["AP_per_class"][0] == 1.0 and "mAP39" in r


def test_no_finding_class_scoring():
    gt = {"normal": G(), "sick": G((0, 10, 10, 50, 50))}
    preds = {"normal": P((14, 0.9, 0, 0, 1, 1)), "sick": P((14, 0.6, 0, 0, 1, 1), (0, 0.8, 10, 10, 50, 50))}
    r = vinbigdata_map(gt, preds)
    assert r["num_gt"][14] == 1 and r["AP_per_class"][14] == 1.0 and r["AP_per_class"][0] == 1.0
    assert r["mAP40"] == 1.0 and all(r["AP_per_class"][c] is None for c in range(1, 14))
    # the abnormal image now ranks above the normal one for No finding: FP then TP -> AP 1/2
    preds["sick"] = P((14, 0.95, 0, 0, 1, 1), (0, 0.8, 10, 10, 50, 50))
    r = vinbigdata_map(gt, preds)
    assert r["AP_per_class"][14] == 0.5 and r["mAP40"] == 0.75
    # findings only
    assert vinbigdata_map(gt, preds, include_no_finding=False)["mAP40"] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="image x not in|e.g. x"):
        vinbigdata_map({"a": G()}, {"x": P((0, 0.5, 0, 0, 1, 1))})
    with pytest.raises(ValueError, match="image a: class 14 outside"):
        vinbigdata_map({"a": G((14, 0, 0, 1, 1))}, {})
    assert math.isnan(vinbigdata_map({"a": G()}, {}, include_no_finding=False)["mAP40"])


def _devkit_reference(gt, preds, num_classes, thr):
    """A loop transcription of VOCevaldet.m + VOCap.m (with the no-finding box added)."""
    aps = {}
    for c in range(num_classes + 1):
        gts = {}
        for k, (b, cl) in gt.items():
            gts[k] = [tuple(x) for x in b[cl == c]] if len(cl) else ([(0, 0, 1, 1)] if c == num_classes else [])
        npos = sum(len(v) for v in gts.values())
        dets = [(k, s, tuple(b)) for k, p in preds.items() for s, b, cl in zip(p.scores, p.boxes, p.classes) if cl == c]
        if npos == 0:
            aps[c] = None
            continue
        order = sorted(range(len(dets)), key=lambda i: -dets[i][1])  # stable, like MATLAB sort
        taken = {k: [False] * len(v) for k, v in gts.items()}
        tp, fp = [], []
        for i in order:
            k, _, bb = dets[i]
            ovmax, jmax = -math.inf, -1
            for j, g in enumerate(gts[k]):
                iw = min(bb[2], g[2]) - max(bb[0], g[0])
                ih = min(bb[3], g[3]) - max(bb[1], g[1])
                if iw > 0 and ih > 0:
                    ua = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax > thr and not taken[k][jmax]:
                taken[k][jmax] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = list(ctp / npos)
        prec = [a / (a + b) for a, b in zip(ctp, cfp)]
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        aps[c] = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return aps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_devkit_loop_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_classes, gt, preds = 3, {}, {}
    for i in range(30):
        m = int(rng.integers(0, 4)) if i % 3 else 0
        xy = rng.integers(0, 80, (m, 2))
        gt[f"im{i}"] = (np.hstack([xy, xy + rng.integers(5, 30, (m, 2))]).astype(float), rng.integers(0, 3, m))
        n = int(rng.integers(0, 12))
        xy = rng.integers(0, 80, (n, 2))
        boxes = np.hstack([xy, xy + rng.integers(5, 30, (n, 2))]).astype(float)
        if m and n:  # some detections near ground truth, with jitter
            pick = rng.integers(0, m, n)
            near = rng.random(n) < 0.6
            boxes[near] = gt[f"im{i}"][0][pick[near]] + rng.integers(-3, 4, (int(near.sum()), 4))
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        scores = rng.integers(0, 20, n) / 20  # ties on purpose
        classes = np.where(rng.random(n) < 0.1, num_classes, rng.integers(0, 3, n))
        preds[f"im{i}"] = Predictions(boxes, scores, classes)
    ref = _devkit_reference(gt, preds, num_classes, 0.4)
    r = vinbigdata_map(gt, preds, num_classes=num_classes)
    assert set(r["AP_per_class"]) == set(ref)
    for c in ref:
        if ref[c] is None:
            assert r["AP_per_class"][c] is None
        else:
            assert r["AP_per_class"][c] == pytest.approx(ref[c], abs=1e-12)
