"""Image-level normal/abnormal probability derived from an image's detections, and the 2-class filter.

``p_abnormal_rule`` is the one definition of P(abnormal) from detection scores by a fixed rule, used by
the submission writer (class-14 entry ``14 p 0 0 1 1`` with p = 1 - P(abnormal)) and by the detectron2
evaluator. ``ImageClassifier`` generalizes it: a rule, or a logistic regression on per-image features
(:func:`image_features`) fitted on out-of-fold predictions (:func:`fit_classifier`), with an operating
threshold; it round-trips through JSON. :func:`apply_nofinding_filter` writes the class-14 entry and
applies the 2-class filter to one image's detections.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from detx.core.classification_csv import read_classification_csv
from detx.core.errors import InputError
from detx.core.image_scores import RULES, class_max_scores, p_abnormal_rule
from detx.core.predictions import Predictions
from detx.evaluation.image_level import choose_threshold

logger = logging.getLogger(__name__)

COUNT_THRESHOLDS = (0.1, 0.3, 0.5)
CLASSIFIER_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------- features

def feature_names(num_classes: int) -> list[str]:
    """Names of :func:`image_features`' columns."""
    names = [f"max_score_{c}" for c in range(num_classes)]
    names += ["max_score", "noisy_or", "top3_mean"]
    names += [f"log1p_count_ge_{t:g}" for t in COUNT_THRESHOLDS]
    names += ["classes_ge_0.3"]
    return names


def image_features(preds: Sequence[Predictions], num_classes: int) -> np.ndarray:
    """(N, F) features of N images from their finding detections (entries of class >= num_classes, such
    as a submission's own ``14 p 0 0 1 1``, are ignored). Columns: :func:`feature_names`."""
    rows = []
    for p in preds:
        finding = (p.classes >= 0) & (p.classes < num_classes)
        s = np.sort(np.clip(p.scores[finding], 0.0, 1.0))[::-1]
        per_class = class_max_scores(p, num_classes)
        rows.append(np.concatenate([
            per_class,
            [p_abnormal_rule(s, "max"), p_abnormal_rule(s, "noisy-or"), s[:3].mean() if s.size else 0.0],
            [np.log1p(np.count_nonzero(s >= t)) for t in COUNT_THRESHOLDS],
            [np.count_nonzero(per_class >= 0.3)],
        ]))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(feature_names(num_classes)))


# ----------------------------------------------------------------------------------------- classifier

@dataclass
class ImageClassifier:
    """P(abnormal) per image from its detections: a rule or a fitted logistic regression.

    Attributes:
        kind: ``"max"``, ``"noisy-or"`` (:func:`p_abnormal_rule`) or ``"logistic"``.
        num_classes: finding classes of the detector (features use classes ``0 .. num_classes - 1``).
        threshold: operating point; label 1 (abnormal) when ``P(abnormal) >= threshold``.
        threshold_method: how the threshold was chosen (``"youden"``, ``"sensitivity"``, ``"fixed"``).
        mean, scale, coef, intercept: the logistic model on standardized :func:`image_features`
            (``sigmoid(((x - mean) / scale) @ coef + intercept)``), empty for a rule.
        metrics: what fitting measured on its data (AUC, sensitivity ... at the threshold).
    """

    kind: str = "max"
    num_classes: int = 14
    threshold: float = 0.5
    threshold_method: str = "fixed"
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in (*RULES, "logistic"):
            raise InputError(f"unknown classifier kind {self.kind!r}; expected one of {(*RULES, 'logistic')}")
        if self.kind == "logistic":
            n = len(feature_names(self.num_classes))
            if not len(self.mean) == len(self.scale) == len(self.coef) == n:
                raise InputError(f"a logistic classifier for {self.num_classes} classes needs {n} mean/scale/coef "
                                 f"values, got {len(self.mean)}/{len(self.scale)}/{len(self.coef)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"classifier threshold {self.threshold} outside [0, 1]")

    def predict_from_features(self, x: np.ndarray) -> np.ndarray:
        """P(abnormal) of feature rows (logistic) ."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = z @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-logit))

    def predict_proba(self, preds: Sequence[Predictions]) -> np.ndarray:
        """(N,) P(abnormal) of N images from their detections."""
        if self.kind == "logistic":
            return self.predict_from_features(image_features(preds, self.num_classes))
        return np.array([p_abnormal_rule(p.scores[(p.classes >= 0) & (p.classes < self.num_classes)], self.kind)
                         for p in preds], dtype=np.float64)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = CLASSIFIER_FORMAT_VERSION
        d["feature_names"] = feature_names(self.num_classes) if self.kind == "logistic" else []
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ImageClassifier:
        d = dict(d)
        version = d.pop("version", CLASSIFIER_FORMAT_VERSION)
        if version != CLASSIFIER_FORMAT_VERSION:
            raise InputError(f"classifier format version {version} is not {CLASSIFIER_FORMAT_VERSION}")
        names = d.pop("feature_names", [])
        if d.get("kind") == "logistic" and names != feature_names(int(d.get("num_classes", 14))):
            raise InputError("classifier features differ from this version's image_features")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown classifier fields {unknown}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        from detx.core.io import write_json

        write_json(path, self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageClassifier:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read classifier {path}: {e}") from e
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: {e}") from e


def fit_classifier(
    preds: Sequence[Predictions],
    labels: np.ndarray,
    num_classes: int,
    kind: str = "logistic",
    threshold_method: str = "youden",
    target_sensitivity: float = 0.9,
    c: float = 1.0,
) -> ImageClassifier:
    """Fit P(abnormal) on (out-of-fold) detections against image labels and choose its threshold.

    Args:
        preds: detections of N images.
        labels: (N,) 1 = abnormal, 0 = normal.
        num_classes: finding classes.
        kind: ``"logistic"`` (scikit-learn LogisticRegression on standardized features, class-balanced)
            or a rule (only the threshold is fitted).
        threshold_method, target_sensitivity: see :func:`choose_threshold`.
        c: inverse L2 regularization strength of the logistic regression.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int).ravel()
    if len(labels) != len(preds):
        raise InputError(f"{len(preds)} images but {len(labels)} labels")
    if len(np.unique(labels)) < 2:
        raise InputError("fitting the image-level classifier needs both normal and abnormal images")
    clf = ImageClassifier(kind=kind, num_classes=num_classes) if kind in RULES else None
    if kind == "logistic":
        x = image_features(preds, num_classes)
        scaler = StandardScaler().fit(x)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=1000)
        lr.fit((x - scaler.mean_) / scale, labels)
        clf = ImageClassifier(kind="logistic", num_classes=num_classes, mean=scaler.mean_.tolist(),
                              scale=scale.tolist(), coef=lr.coef_.ravel().tolist(), intercept=float(lr.intercept_[0]))
    elif clf is None:
        raise InputError(f"unknown classifier kind {kind!r}")
    p = clf.predict_proba(preds)
    clf.threshold = choose_threshold(labels, p, threshold_method, target_sensitivity)
    clf.threshold_method = threshold_method
    return clf


def read_probability_csv(path: str | os.PathLike, image_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Read external ``image_id,p_abnormal`` probabilities (any 2-class model; the classification CSV format,
    :func:`detx.core.classification_csv.read_classification_csv`).

    Raises:
        InputError: a missing column, a probability that is not a number in [0, 1], a duplicate image,
            or (when ``image_ids`` is given) an image without a probability; the message names them.
    """
    out = read_classification_csv(path).p_abnormal
    if image_ids is not None:
        missing = [i for i in image_ids if i not in out]
        if missing:
            raise InputError(f"{path}: no probability for {len(missing)} image(s), e.g. {missing[:5]}")
    return out


# ----------------------------------------------------------------------------------------- 2-class filter

def apply_nofinding_filter(pred: Predictions, p_abnormal: float, no_finding_id: int, low: float = 0.0,
                           high: float | None = None) -> Predictions:
    """One image's submission entries: its finding boxes and the class-``no_finding_id`` entry.

    With ``P = p_abnormal`` and ``high`` defaulting to ``low``:

    - ``P < low``: the image is called normal; the entries are only ``no_finding_id 1 0 0 1 1``.
    - ``low <= P < high``: boxes kept with their confidences multiplied by P (an uncertain image's boxes
      rank below those of confidently abnormal images), plus ``no_finding_id (1 - P) 0 0 1 1``.
    - ``P >= high``: boxes unchanged, plus ``no_finding_id (1 - P) 0 0 1 1``.

    Any no-finding entry already in ``pred`` is replaced. ``low = high = 0`` (the default) only adds the
    class entry.
    """
    high = low if high is None else high
    if not 0.0 <= low <= high <= 1.0:
        raise InputError(f"2-class filter thresholds need 0 <= low <= high <= 1, got low={low}, high={high}")
    if not 0.0 <= p_abnormal <= 1.0:
        raise InputError(f"P(abnormal) {p_abnormal} outside [0, 1]")
    whole = np.array([[0.0, 0.0, 1.0, 1.0]])
    if p_abnormal < low:
        return Predictions(whole, [1.0], [no_finding_id])
    finding = pred.select(pred.classes != no_finding_id)
    scores = finding.scores * p_abnormal if p_abnormal < high else finding.scores
    return Predictions(np.concatenate([finding.boxes, whole]), np.r_[scores, 1.0 - p_abnormal],
                       np.r_[finding.classes, no_finding_id])
