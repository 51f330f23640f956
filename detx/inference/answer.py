"""One image, one answer: what detx says about a single radiograph (boxes in original pixels, P(abnormal), per-class
probabilities, the body part) and the sentence ``tools/predict.py --input FILE`` prints for it.

Built by :mod:`detx.workflows.one_image` (the Python API) and :mod:`detx.workflows.predict` (the command line) from the
same fused, filtered predictions, so both give the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Finding", "ImageAnswer"]


@dataclass(frozen=True)
class Finding:
    """One box: class name and id, confidence, ``[x_min, y_min, x_max, y_max]`` in original pixels."""

    class_name: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]


@dataclass
class ImageAnswer:
    """What the models say about one image.

    Attributes:
        image_id: the image's id (the file name without extension for a file, or the caller's).
        width, height: the original image size, the frame of ``findings``.
        p_abnormal: P(abnormal) (image classifier when there is one, else from the detections).
        threshold: the operating point; ``abnormal`` is ``p_abnormal >= threshold``.
        class_probs: per-class probabilities (the classifier's, else each class's highest box score).
        findings: the boxes a submission row holds (after the 2-class filter), best first; no "No finding" entry.
        p_no_finding: the score of the row's "No finding" entry.
        body_part: given by the caller, predicted by a body-part head, read from a MURA path, or None.
        body_part_probs: the body-part head's probabilities, when the classifier has one.
        source: where the pixels came from (a path, or ``<array>``).
    """

    image_id: str
    width: int
    height: int
    p_abnormal: float
    threshold: float
    class_probs: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    p_no_finding: float | None = None
    body_part: str | None = None
    body_part_probs: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @property
    def abnormal(self) -> bool:
        return bool(self.p_abnormal >= self.threshold)

    def findings_above(self, score: float) -> list[Finding]:
        return [f for f in self.findings if f.score >= score]

    def sentence(self, min_score: float = 0.3, max_findings: int = 5) -> str:
        """``X-ray of XR_HUMERUS is abnormal (P(abnormal) 0.87).`` plus, with a detector, the boxes from
        ``min_score`` (best first, at most ``max_findings``) in original pixels."""
        what = f"X-ray of {self.body_part}" if self.body_part else f"X-ray {self.image_id}"
        verdict = "abnormal" if self.abnormal else "normal"
        text = f"{what} is {verdict} (P(abnormal) {self.p_abnormal:.3f}, threshold {self.threshold:.3g})."
        shown = self.findings_above(min_score)
        if shown:
            parts = [f"{f.class_name} {f.score:.2f} at [{', '.join(f'{v:.0f}' for v in f.box)}]"
                     for f in shown[:max_findings]]
            more = f" and {len(shown) - max_findings} more" if len(shown) > max_findings else ""
            text += f" Findings: {'; '.join(parts)}{more}."
        elif self.class_probs and not self.findings:
            top = max(self.class_probs.items(), key=lambda kv: kv[1])
            text += f" Most likely finding: {top[0]} ({top[1]:.2f})."
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``tools/predict.py --input FILE --json`` writes this)."""
        return {"image_id": self.image_id, "width": self.width, "height": self.height,
                "p_abnormal": float(self.p_abnormal), "threshold": float(self.threshold), "abnormal": self.abnormal,
                "class_probs": {k: float(v) for k, v in self.class_probs.items()},
                "findings": [{"class_name": f.class_name, "class_id": f.class_id, "score": f.score,
                              "box": list(f.box)} for f in self.findings],
                "p_no_finding": self.p_no_finding, "body_part": self.body_part,
                "body_part_probs": {k: float(v) for k, v in self.body_part_probs.items()}, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageAnswer:
        """The inverse of :meth:`to_dict`."""
        return cls(image_id=d["image_id"], width=int(d["width"]), height=int(d["height"]),
                   p_abnormal=float(d["p_abnormal"]), threshold=float(d["threshold"]),
                   class_probs=dict(d.get("class_probs", {})),
                   findings=[Finding(f["class_name"], int(f["class_id"]), float(f["score"]), tuple(f["box"]))
                             for f in d.get("findings", [])],
                   p_no_finding=d.get("p_no_finding"), body_part=d.get("body_part"),
                   body_part_probs=dict(d.get("body_part_probs", {})), source=d.get("source", ""))

    @staticmethod
    def findings_from(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, class_names: list[str] | tuple[str, ...]
                      ) -> list[Finding]:
        """Finding entries (best first) of the box classes only: ids outside ``class_names`` (No finding) dropped."""
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [Finding(str(class_names[int(classes[k])]), int(classes[k]), float(scores[k]),
                        tuple(float(v) for v in boxes[k]))
                for k in order if 0 <= int(classes[k]) < len(class_names)]
