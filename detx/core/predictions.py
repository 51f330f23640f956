"""The shared prediction and ground-truth types, and the whole-image "No finding" entry.

Boxes are ``x_min y_min x_max y_max`` in original (DICOM) pixels. "No finding" is not a box class: it is
the class id ``len(classes)`` (:func:`detx.core.classes.no_finding_id`) scored on the whole-image box
``0 0 1 1`` (:data:`WHOLE_IMAGE_BOX`), as the VinBigData challenge defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

#: image_id -> (boxes (M, 4) xyxy original pixels, classes (M,)), finding boxes only.
GroundTruth = Mapping[str, tuple[np.ndarray, np.ndarray]]

#: the box of the image-level "No finding" entry in a submission
WHOLE_IMAGE_BOX: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


@dataclass
class Predictions:
    """Detections of one image, boxes ``x_min y_min x_max y_max`` in original pixels.

    Attributes:
        boxes: (N, 4) float64.
        scores: (N,) float64 confidences in [0, 1].
        classes: (N,) int64 class ids (0-based; ``len(classes)`` is "No finding").
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.classes) != n:
            raise ValueError(
                f"Predictions need as many boxes, scores and classes; got {n}, {len(self.scores)}, {len(self.classes)}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, mask: np.ndarray) -> Predictions:
        """The subset of entries where ``mask`` (a boolean array or index array) selects."""
        return Predictions(self.boxes[mask], self.scores[mask], self.classes[mask])

    @staticmethod
    def concatenate(parts: Iterable[Predictions]) -> Predictions:
        parts = list(parts)
        if not parts:
            return Predictions()
        return Predictions(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.classes for p in parts]),
        )


def no_finding_entry(p_no_finding: float, no_finding_id: int) -> Predictions:
    """The single entry ``<no_finding_id> p 0 0 1 1`` (e.g. an image that could not be read: p = 1)."""
    return Predictions([WHOLE_IMAGE_BOX], [p_no_finding], [no_finding_id])
