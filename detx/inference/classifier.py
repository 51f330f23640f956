"""Image-level normal/abnormal probability derived from an image's detections.

``p_abnormal_rule`` is the one definition of P(abnormal) from detection scores, used by the
submission writer (class-14 entry ``14 p 0 0 1 1`` with p = 1 - P(abnormal)) and by the detectron2
evaluator.
"""

from __future__ import annotations

import numpy as np

RULES = ("max", "noisy-or")


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
    raise ValueError(f"unknown image-level rule {rule!r}; expected one of {RULES}")
