"""Batched WBF against ensemble-boxes image by image; ensembling identical models is a no-op."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion as eb_wbf

from detx.inference.ensemble import (
    ensemble_predictions,
    weighted_boxes_fusion,
    weighted_boxes_fusion_batched,
)


def _random_model_outputs(rng, num_models, num_classes, max_boxes, tie_scores=False):
    """Per model: clustered boxes (several models see the same objects, jittered), random classes/scores."""
    objects = rng.uniform(0, 0.8, size=(6, 2))
    sizes = rng.uniform(0.05, 0.3, size=(6, 2))
    out = []
    for _ in range(num_models):
        k = int(rng.integers(0, max_boxes + 1))
        obj = rng.integers(0, 6, size=k)
        xy0 = objects[obj] + rng.normal(0, 0.02, size=(k, 2))
        xy1 = xy0 + sizes[obj] * rng.uniform(0.8, 1.2, size=(k, 2))
        boxes = np.concatenate([xy0, xy1], axis=1)
        if k:
            boxes[0] = [0.5, 0.5, 0.5, 0.7]  # zero area: dropped by both
        scores = rng.uniform(0, 1, size=k)
        if tie_scores:
            scores = np.round(scores, 1)
        labels = rng.integers(0, num_classes, size=k)
        out.append((boxes, scores, labels))
    return out


def _reference(outputs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eb_wbf([o[0].tolist() for o in outputs], [o[1].tolist() for o in outputs],
                      [o[2].tolist() for o in outputs], **kw)


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
@pytest.mark.parametrize("tie_scores", [False, True])
def test_batched_equals_ensemble_boxes(conf_type, tie_scores):
    rng = np.random.default_rng(7)
    num_models, num_images = 4, 25
    weights = [1.0, 2.0, 0.5, 1.3]
    kw = {"weights": weights, "iou_thr": 0.5, "skip_box_thr": 0.05, "conf_type": conf_type}
    images = [_random_model_outputs(rng, num_models, 3, 30, tie_scores) for _ in range(num_images)]
    parts = []
    for i, outputs in enumerate(images):
        for m, (b, s, lab) in enumerate(outputs):
            parts.append((b, s, lab, np.full(len(s), i), np.full(len(s), m)))
    # input ordered by model, then image: only the order within one model and image matters
    cat = [np.concatenate([p[j] for p in parts]) for j in range(5)]
    cat = [c[np.lexsort((np.arange(len(cat[1])), cat[3], cat[4]))] for c in cat]
    b, s, lab, im = weighted_boxes_fusion_batched(*cat, num_models=num_models, **kw)
    for i, outputs in enumerate(images):
        rb, rs, rl = _reference(outputs, **kw)
        sel = im == i
        assert sel.sum() == len(rs)
        np.testing.assert_array_equal(lab[sel], rl.astype(np.int64))
        np.testing.assert_allclose(b[sel], rb, rtol=0, atol=1e-12)
        np.testing.assert_allclose(s[sel], rs, rtol=1e-12, atol=0)


def test_single_image_signature_matches_reference():
    rng = np.random.default_rng(3)
    outputs = _random_model_outputs(rng, 3, 2, 40)
    rb, rs, rl = _reference(outputs, iou_thr=0.55)
    b, s, lab = weighted_boxes_fusion([o[0] for o in outputs], [o[1] for o in outputs],
                                      [o[2] for o in outputs], iou_thr=0.55)
    np.testing.assert_array_equal(b, rb)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(lab, rl)


def test_hand_computed_fusion():
    # two models, one object each, IoU 0.6 > 0.55: fused box is the score-weighted mean, score the mean
    boxes = [np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([[0.0, 0.0, 0.5, 0.3]])]
    b, s, lab = weighted_boxes_fusion(boxes, [np.array([0.9]), np.array([0.3])], [np.array([1]), np.array([1])])
    np.testing.assert_allclose(b, [[0.0, 0.0, 0.5, (0.9 * 0.5 + 0.3 * 0.3) / 1.2]], atol=1e-7)
    np.testing.assert_allclose(s, [0.6], atol=1e-7)
    # a box of another class never fuses; a lone box of 2 models keeps half its score
    b, s, lab = weighted_boxes_fusion(boxes, [np.array([0.9]), np.array([0.3])], [np.array([1]), np.array([2])])
    np.testing.assert_allclose(sorted(s), [0.15, 0.45])


def test_empty_inputs():
    b, s, lab, im = weighted_boxes_fusion_batched(np.zeros((0, 4)), [], [], [], [], num_models=2)
    assert b.shape == (0, 4) and len(s) == len(lab) == len(im) == 0
    with pytest.raises(ValueError, match="conf_type"):
        weighted_boxes_fusion_batched(np.zeros((0, 4)), [], [], [], [], num_models=1, conf_type="mean")
    with pytest.raises(ValueError, match="weights"):
        weighted_boxes_fusion_batched(np.zeros((0, 4)), [], [], [], [], num_models=2, weights=[1.0])


def test_identical_models_equal_single_model():
    from detx.core.predictions import Predictions

    rng = np.random.default_rng(0)
    sizes = {"a": (2000.0, 1500.0), "b": (1800.0, 2400.0), "empty": (1000.0, 1000.0)}
    preds = {}
    for image_id, (w, h) in sizes.items():
        k = 0 if image_id == "empty" else 12
        # boxes of one class never overlap by IoU > 0.5 within a model (as after the detector's NMS)
        x0 = np.arange(k) * w / 13
        boxes = np.stack([x0, np.full(k, 0.1 * h), x0 + w / 14, np.full(k, 0.6 * h)], axis=1)
        preds[image_id] = Predictions(boxes=boxes, scores=rng.uniform(0.01, 1, k),
                                      classes=rng.integers(0, 3, k).astype(np.int64))
    fused = ensemble_predictions([preds] * 5, sizes, iou_thr=0.55)
    for image_id, p in preds.items():
        f = fused[image_id]
        order = np.argsort(-p.scores, kind="stable")
        np.testing.assert_allclose(f.boxes, p.boxes[order], atol=1e-3)  # fused coordinates are float32
        np.testing.assert_allclose(f.scores, p.scores[order], rtol=1e-6)
        np.testing.assert_array_equal(f.classes, p.classes[order])
