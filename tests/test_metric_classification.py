"""Image-level metrics: AUC against scikit-learn, hand-computed operating points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detx.core.image_scores import image_scores_from_predictions
from detx.core.predictions import Predictions
from detx.evaluation.image_level import image_level_metrics, per_class_auc

Y = np.array([1, 1, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05])


def test_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) * 0.5 + 0.4 * y, 2)  # ties on purpose
    assert image_level_metrics(y, s)["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-15)
    ys = rng.integers(0, 2, (200, 3))
    ss = rng.random((200, 3)) + ys * 0.3
    ys[:, 2] = 0
    r = per_class_auc(ys, ss, ["a", "b", "c"])
    assert r["a"] == pytest.approx(roc_auc_score(ys[:, 0], ss[:, 0])) and r["c"] is None


def test_given_threshold():
    r = image_level_metrics(Y, S, threshold=0.5)  # called abnormal: .9 .8 .7 -> tp 2 fn 1 fp 1 tn 3
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 1, 3)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(3 / 4)
    assert r["accuracy"] == pytest.approx(5 / 7) and r["f1"] == pytest.approx(2 / 3)
    assert r["threshold_method"] == "given" and r["auc"] == pytest.approx(11 / 12)


def test_youden_threshold():
    # J = tpr - fpr: .9 -> 1/3, .8 -> 2/3, .7 -> 5/12, .3 -> 3/4 (best), .2 -> 1/2
    r = image_level_metrics(Y, S)
    assert r["threshold"] == pytest.approx(0.3) and r["threshold_method"] == "youden"
    assert r["sensitivity"] == 1.0 and r["specificity"] == 0.75 and r["f1"] == pytest.approx(6 / 7)


def test_one_class_only():
    r = image_level_metrics(np.zeros(3), np.array([0.1, 0.6, 0.2]))
    assert r["auc"] is None and r["threshold"] == 0.5 and r["sensitivity"] is None and r["specificity"] == 2 / 3
    with pytest.raises(ValueError, match="labels"):
        image_level_metrics([0, 2], [0.1, 0.2])


def test_p_abnormal_from_submission_entries():
    with_nf = Predictions([[0, 0, 5, 5], [0, 0, 1, 1]], [0.9, 0.8], [3, 14])
    assert image_scores_from_predictions(with_nf, 14) == pytest.approx(0.2)
    assert image_scores_from_predictions(Predictions([[0, 0, 5, 5]], [0.9], [3]), 14) == pytest.approx(0.9)
    assert image_scores_from_predictions(Predictions(), 14) == 0.0
