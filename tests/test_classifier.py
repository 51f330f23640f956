"""Image-level classifier: rules, features, the fitted logistic model, thresholds, JSON, the 2-class filter."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from detx.core.image_scores import p_abnormal_rule
from detx.core.predictions import Predictions
from detx.evaluation.image_level import choose_threshold
from detx.inference.classifier import (
    ImageClassifier,
    apply_nofinding_filter,
    feature_names,
    fit_classifier,
    image_features,
    read_probability_csv,
)


def _pred(scores, classes):
    k = len(scores)
    return Predictions(np.tile([10.0, 20.0, 30.0, 40.0], (k, 1)), scores, classes)


def test_rules_hand_computed():
    assert p_abnormal_rule([]) == 0.0
    assert p_abnormal_rule([0.2, 0.5]) == 0.5
    assert p_abnormal_rule([0.2, 0.5], "noisy-or") == pytest.approx(1 - 0.8 * 0.5)
    with pytest.raises(ValueError, match="rule"):
        p_abnormal_rule([0.1], "mean")


def test_features_hand_computed():
    # class 2 = "No finding" entry of a submission: ignored
    x = image_features([_pred([0.6, 0.2, 0.35, 0.9], [0, 0, 1, 2]), _pred([], [])], num_classes=2)
    names = feature_names(2)
    assert x.shape == (2, len(names))
    row = dict(zip(names, x[0]))
    assert row["max_score_0"] == 0.6 and row["max_score_1"] == 0.35
    assert row["max_score"] == 0.6
    assert row["noisy_or"] == pytest.approx(1 - 0.4 * 0.8 * 0.65)
    assert row["top3_mean"] == pytest.approx((0.6 + 0.35 + 0.2) / 3)
    assert row["log1p_count_ge_0.1"] == pytest.approx(np.log(4))
    assert row["log1p_count_ge_0.5"] == pytest.approx(np.log(2))
    assert row["classes_ge_0.3"] == 2
    np.testing.assert_array_equal(x[1], np.zeros(len(names)))


def test_choose_threshold_hand_computed():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert choose_threshold(y, p, "youden") == 0.8  # J = 0.5 first reached at 0.8
    assert choose_threshold(y, p, "sensitivity", 1.0) == 0.35
    assert choose_threshold(y, p, "sensitivity", 0.5) == 0.8
    with pytest.raises(ValueError, match="both"):
        choose_threshold(np.ones(3), np.ones(3))


def _synthetic(rng, n, distractor=True):
    """Abnormal images carry a class-1 box scored 0.3-0.7 (normal: 0-0.3); with ``distractor`` a class-0
    detector fires on every image with a high, uninformative score, which fools the ``max`` rule."""
    y = rng.integers(0, 2, n)
    preds = []
    for label in y:
        scores, classes = [], []
        s1 = rng.uniform(0.3, 0.7) if label else rng.uniform(0.0, 0.3)
        scores.append(s1)
        classes.append(1)
        if distractor:
            scores.append(rng.uniform(0.75, 0.95))
            classes.append(0)
        preds.append(_pred(scores, classes))
    return preds, y


def test_logistic_beats_max_when_max_is_fooled():
    rng = np.random.default_rng(0)
    train, y_train = _synthetic(rng, 300)
    test, y_test = _synthetic(rng, 300)
    clf = fit_classifier(train, y_train, num_classes=3)
    auc_lr = roc_auc_score(y_test, clf.predict_proba(test))
    auc_max = roc_auc_score(y_test, ImageClassifier("max", 3).predict_proba(test))
    assert auc_max < 0.65
    assert auc_lr > 0.95
    # without the distractor the max rule is already right, and the logistic model stays as good
    train, y_train = _synthetic(rng, 300, distractor=False)
    test, y_test = _synthetic(rng, 300, distractor=False)
    clf = fit_classifier(train, y_train, num_classes=3)
    assert roc_auc_score(y_test, ImageClassifier("max", 3).predict_proba(test)) > 0.99
    assert roc_auc_score(y_test, clf.predict_proba(test)) > 0.99


def test_logistic_equals_sklearn_and_json_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    preds, y = _synthetic(rng, 200)
    clf = fit_classifier(preds, y, num_classes=3, threshold_method="sensitivity", target_sensitivity=0.9)
    x = image_features(preds, 3)
    scaler = StandardScaler().fit(x)
    xs = (x - scaler.mean_) / np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit(xs, y).predict_proba(xs)[:, 1]
    p = clf.predict_proba(preds)
    np.testing.assert_allclose(p, ref, rtol=1e-9)
    assert np.mean(p[y == 1] >= clf.threshold) >= 0.9
    clf.save(tmp_path / "c.json")
    back = ImageClassifier.load(tmp_path / "c.json")
    assert back == clf
    np.testing.assert_array_equal(back.predict_proba(preds), p)


def test_classifier_json_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        ImageClassifier.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="needs"):
        ImageClassifier(kind="logistic", num_classes=2, coef=[1.0])
    with pytest.raises(ValueError, match="kind"):
        ImageClassifier(kind="svm")


def test_nofinding_filter_three_regimes():
    pred = _pred([0.8, 0.4, 0.7], [3, 5, 14])  # the old class-14 entry is replaced
    # below low: only "14 1 0 0 1 1"
    out = apply_nofinding_filter(pred, 0.05, 14, low=0.1, high=0.9)
    np.testing.assert_array_equal(out.classes, [14])
    np.testing.assert_array_equal(out.scores, [1.0])
    np.testing.assert_array_equal(out.boxes, [[0, 0, 1, 1]])
    # between: box confidences times P(abnormal), plus 14 with 1 - P
    out = apply_nofinding_filter(pred, 0.5, 14, low=0.1, high=0.9)
    np.testing.assert_array_equal(out.classes, [3, 5, 14])
    np.testing.assert_allclose(out.scores, [0.4, 0.2, 0.5])
    np.testing.assert_array_equal(out.boxes[:2], pred.boxes[:2])
    # above high: boxes untouched, plus 14 with 1 - P
    out = apply_nofinding_filter(pred, 0.95, 14, low=0.1, high=0.9)
    np.testing.assert_allclose(out.scores, [0.8, 0.4, 0.05])
    np.testing.assert_array_equal(out.boxes[-1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="low <= high"):
        apply_nofinding_filter(pred, 0.5, 14, low=0.6, high=0.5)


def test_probability_csv(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("image_id,p_abnormal\na,0.2\nb,1.0\n")
    assert read_probability_csv(f, ["a", "b"]) == {"a": 0.2, "b": 1.0}
    with pytest.raises(ValueError, match="no probability for 1 image"):
        read_probability_csv(f, ["a", "b", "c"])
    f.write_text("image_id,p_abnormal\na,0.2\nb,1.5\n")
    with pytest.raises(ValueError, match=r"b=1.5"):
        read_probability_csv(f)
    f.write_text("image_id,prob\na,0.2\n")
    with pytest.raises(ValueError, match="p_abnormal"):
        read_probability_csv(f)
