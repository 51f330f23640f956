"""FROC on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from detx.core.predictions import Predictions
from detx.evaluation.froc import froc

A, B, C = [0, 0, 10, 10], [50, 50, 70, 70], [20, 20, 40, 40]
JUNK = [200, 200, 210, 210]


def test_froc_hand_made():
    gt = {"im1": (np.array([A, B], float), np.array([0, 1])), "im2": (np.array([C], float), np.array([0])),
          "im3": (np.zeros((0, 4)), np.zeros(0, int))}
    # in descending confidence: TP FP TP FP FP TP (+ a No-finding entry, ignored)
    preds = {
        "im1": Predictions([A, B, JUNK, [0, 0, 1, 1]], [0.9, 0.7, 0.6, 0.95], [0, 1, 0, 2]),
        "im2": Predictions([JUNK, JUNK, C], [0.8, 0.5, 0.4], [0, 1, 0]),
    }
    r = froc(gt, preds, num_classes=2)
    # 3 images; (FP/image, sensitivity) after each: (0, 1/3) (1/3, 1/3) (1/3, 2/3) (2/3, 2/3) (1, 2/3) (1, 1)
    # at 1/8, 1/4: 1/3; at 1/2: 2/3; at 1 FP/image and beyond: 1
    expect = [1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1]
    np.testing.assert_allclose(r["sensitivity"], expect)
    assert r["mean"] == pytest.approx(np.mean(expect)) and r["num_lesions"] == 3
    np.testing.assert_allclose(r["curve"]["fp_per_image"], [0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1])


def test_froc_class_aware_ties_and_empty():
    gt = {"im1": (np.array([A], float), np.array([0]))}
    # a box on the lesion with the wrong class is a false positive; equal scores enter together
    preds = {"im1": Predictions([A, A], [0.5, 0.5], [1, 0])}
    r = froc(gt, preds, num_classes=2, fp_rates=(0.5, 1.0))
    assert r["sensitivity"] == [0.0, 1.0]
    assert froc(gt, {}, num_classes=2)["sensitivity"] == [0.0] * 7
    r = froc({"im1": (np.zeros((0, 4)), np.zeros(0, int))}, preds, num_classes=2)
    assert r["mean"] is None and r["num_lesions"] == 0
    # the IoU threshold is strict, as in the challenge metric
    r = froc(gt, {"im1": Predictions([[0, 0, 10, 4]], [0.9], [0])}, num_classes=2, fp_rates=(8,))
    assert r["sensitivity"] == [0.0]
