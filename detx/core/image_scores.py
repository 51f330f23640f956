"""Image-level scores derived from an image's detections: the one definition of P(abnormal) from boxes.

Used by the submission writer (the No-finding entry ``<nf> 1-P 0 0 1 1``), the detectron2 evaluator, the
image-level classifier's features and the evaluation of a submission.
"""

from __future__ import annotations

import numpy as np

from detx.core.errors import InputError
from detx.core.predictions import Predictions

#: fixed rules turning an image's finding confidences into P(abnormal)
RULES: tuple[str, ...] = ("max", "noisy-or")


def p_abnormal_rule(scores: np.ndarray, rule: str = "max") -> float:
    """P(abnormal) of one image from the confidences of its finding detections.

    Args:
        scores: confidences in [0, 1] of the image's finding boxes (any length, empty for none).
        rule: ``"max"`` (the highest confidence) or ``"noisy-or"`` (1 - prod(1 - s), each box an
            independent chance that the image is abnormal).

    Returns:
        A probability in [0, 1]; 0 for an image with no detections.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64).ravel(), 0.0, 1.0)
    if s.size == 0:
        return 0.0
    if rule == "max":
        return float(s.max())
    if rule == "noisy-or":
        return float(1.0 - np.exp(np.sum(np.log1p(-np.minimum(s, 1.0 - 1e-12)))))
    raise InputError(f"unknown image-level rule {rule!r}; expected one of {RULES}")


def class_max_scores(pred: Predictions, num_classes: int) -> np.ndarray:
    """(num_classes,) highest confidence per finding class (0 where the class has no box)."""
    out = np.zeros(num_classes, dtype=np.float64)
    keep = (pred.classes >= 0) & (pred.classes < num_classes)
    np.maximum.at(out, pred.classes[keep], np.clip(pred.scores[keep], 0.0, 1.0))
    return out


def image_scores_from_predictions(pred: Predictions, num_classes: int, rule: str = "max") -> float:
    """P(abnormal) of an image from a submission's entries: 1 - the No-finding confidence (class
    ``num_classes``; the highest if several) when present, else ``p_abnormal_rule`` of the finding scores."""
    nf = pred.classes == num_classes
    if nf.any():
        return float(1.0 - np.max(pred.scores[nf]))
    return p_abnormal_rule(pred.scores[pred.classes < num_classes], rule)
