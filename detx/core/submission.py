"""The submission CSV: ``image_id,PredictionString``, one row per image.

A PredictionString is a run of 6-tuples ``class_id confidence x_min y_min x_max y_max`` with boxes in
original-DICOM pixels; the image-level "No finding" class (id ``len(classes)``) is written with the
whole-image box ``0 0 1 1``. An empty PredictionString means "no predictions".

Reading checks every entry. In strict mode the first problem raises :class:`SubmissionError` naming the
image and the problem; in lenient mode the bad entry (or, for a string whose length is not a multiple
of 6, the image's whole string) is skipped with a warning and recorded in ``Submission.problems``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detx.core.errors import InputError, StrictModeError
from detx.core.io import atomic_path
from detx.core.predictions import Predictions

logger = logging.getLogger(__name__)

__all__ = [
    "Coverage",
    "Submission",
    "SubmissionError",
    "align_to",
    "format_prediction_string",
    "parse_prediction_string",
    "read_submission",
    "write_submission",
    "coverage",
]

# Kaggle VinBigData: 14 finding classes + "No finding".
DEFAULT_NUM_CLASSES = 15


class SubmissionError(InputError):
    """A submission file or PredictionString that does not follow the format; the message names the image.

    Raised in strict mode for what lenient mode skips (exit status 1), and always for an unreadable file
    (exit status 2).
    """

    def __init__(self, message: str, strict_only: bool = False):
        super().__init__(message)
        if strict_only:
            self.exit_status = StrictModeError.exit_status


class Submission(dict):
    """``image_id -> Predictions`` in file order, with ``problems``: what lenient reading skipped."""

    def __init__(self, *args, problems: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.problems: list[str] = problems if problems is not None else []


def _fmt(v: float, digits: int) -> str:
    s = f"{v:.{digits}g}"
    return "0" if s == "-0" else s


def format_prediction_string(pred: Predictions, digits: int = 6) -> str:
    """``"cls score x0 y0 x1 y1 ..."`` for one image; ``""`` for no predictions.

    Args:
        pred: the image's detections.
        digits: significant digits of the confidence and coordinates (6 keeps sub-pixel precision on
            images up to 10^5 px).
    """
    parts = []
    for c, s, b in zip(pred.classes.tolist(), pred.scores.tolist(), pred.boxes.tolist()):
        parts.append(" ".join([str(int(c)), _fmt(s, digits), *(_fmt(v, digits) for v in b)]))
    return " ".join(parts)


#: problems printed one by one; the rest are counted (``Submission.problems``, the closing count), not printed
MAX_PROBLEMS_LOGGED = 5


def _problem(msg: str, strict: bool, problems: list[str] | None, log: bool = True) -> None:
    if strict:
        raise SubmissionError(msg, strict_only=True)
    if log and (problems is None or len(problems) < MAX_PROBLEMS_LOGGED):
        logger.warning("%s (skipped)", msg)
    elif log and len(problems) == MAX_PROBLEMS_LOGGED:
        logger.warning("further problems are counted, not printed (the summary gives their number)")
    if problems is not None:
        problems.append(msg)


#: a PredictionString of plain decimal numbers only (no nan/inf/hex/underscores), which C's strtod and Python's float
#: read to the same (correctly rounded) value
_PLAIN_NUMBERS = re.compile(r"[0-9eE+\-.\s]*")


def _single_spaced(text: str) -> bool:
    """ASCII tokens separated by single spaces, none leading or trailing, no other whitespace: then the number of
    tokens is the number of spaces + 1 (checked with C-speed substring searches, far cheaper than a split)."""
    return (text.isascii() and not text.startswith(" ") and not text.endswith(" ") and "  " not in text
            and not any(c in text for c in "\t\n\r\x0b\x0c") and text != "")


def _parse_valid(text: str, n_tokens: int, num_classes: int) -> Predictions | None:
    """The entries of ``text`` (``n_tokens`` values, a multiple of 6) when every one is valid, read by numpy in one
    C pass and checked in one vectorized pass (a million boxes: seconds, not tens of seconds); None when the text
    holds anything but plain decimal numbers or any entry breaks a rule (the caller's entry loop then reads it as
    before and names each problem)."""
    if not _PLAIN_NUMBERS.fullmatch(text):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns where a token is not a number; the count check catches it
        values = np.fromstring(text, dtype=np.float64, sep=" ")
    if values.size != n_tokens:
        return None
    values = values.reshape(-1, 6)
    cls, score = values[:, 0], values[:, 1]
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(values).all(axis=1) & (cls == np.trunc(cls)) & (cls >= 0) & (cls < num_classes)
              & (score >= 0.0) & (score <= 1.0) & (values[:, 4] >= values[:, 2]) & (values[:, 5] >= values[:, 3]))
    if not ok.all():
        return None
    return Predictions(values[:, 2:6], score, cls.astype(np.int64))


def parse_prediction_string(
    text: str | float | None,
    image_id: str,
    strict: bool = True,
    num_classes: int = DEFAULT_NUM_CLASSES,
    problems: list[str] | None = None,
) -> Predictions:
    """Parse one PredictionString into :class:`Predictions`.

    Args:
        text: the string; ``""``, whitespace, ``None`` or NaN (pandas' empty cell) mean no predictions.
        image_id: named in error messages.
        strict: raise :class:`SubmissionError` at the first bad entry; else skip it with a warning and
            append the message to ``problems``.
        num_classes: valid class ids are ``0 .. num_classes - 1`` (15 for VinBigData: 14 findings + No finding).
        problems: list that collects the skipped entries' messages in lenient mode.

    Returns:
        The image's predictions, in string order.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return Predictions()
    text = str(text)
    if _single_spaced(text):  # the common shape: the tokens are counted without splitting the string
        n_tokens = text.count(" ") + 1
    else:
        n_tokens = len(text.split())
        if not n_tokens:
            return Predictions()
    if n_tokens % 6:
        _problem(
            f"image {image_id}: PredictionString has {n_tokens} values, not a multiple of 6 "
            "(class confidence x_min y_min x_max y_max); its entries cannot be aligned",
            strict,
            problems,
        )
        return Predictions()
    fast = _parse_valid(text, n_tokens, num_classes)
    if fast is not None:
        return fast
    tokens = text.split()
    classes, scores, boxes = [], [], []  # a bad entry somewhere: entry by entry, naming each problem
    for k in range(len(tokens) // 6):
        entry = tokens[6 * k : 6 * k + 6]
        where = f"image {image_id}: entry {k + 1} ({' '.join(entry)})"
        try:
            values = [float(t) for t in entry]
        except ValueError:
            _problem(f"{where}: non-numeric value", strict, problems)
            continue
        if not all(math.isfinite(v) for v in values):
            _problem(f"{where}: non-finite value", strict, problems)
            continue
        cls, score, x0, y0, x1, y1 = values
        if cls != int(cls) or not 0 <= cls < num_classes:
            _problem(f"{where}: class {entry[0]} outside 0-{num_classes - 1}", strict, problems)
            continue
        if not 0.0 <= score <= 1.0:
            _problem(f"{where}: confidence {entry[1]} outside [0, 1]", strict, problems)
            continue
        if x1 < x0:
            _problem(f"{where}: x_max {entry[4]} < x_min {entry[2]}", strict, problems)
            continue
        if y1 < y0:
            _problem(f"{where}: y_max {entry[5]} < y_min {entry[3]}", strict, problems)
            continue
        classes.append(int(cls))
        scores.append(score)
        boxes.append((x0, y0, x1, y1))
    return Predictions(np.asarray(boxes, np.float64).reshape(-1, 4), scores, classes)


def read_submission(
    path: str | os.PathLike,
    strict: bool = True,
    num_classes: int = DEFAULT_NUM_CLASSES,
    image_ids: Iterable[str] | None = None,
) -> Submission:
    """Read a submission CSV into ``image_id -> Predictions``.

    Args:
        path: CSV with the header ``image_id,PredictionString`` (other columns are ignored).
        strict: raise :class:`SubmissionError` at the first problem; else skip bad entries with a warning
            and list them in the result's ``problems``.
        num_classes: valid class ids are ``0 .. num_classes - 1``.
        image_ids: when given, the images the submission must cover exactly: a missing image is an error
            (lenient: it gets no predictions), an extra one too (lenient: dropped).

    Returns:
        A :class:`Submission` (a dict in file order, then any missing images) with ``.problems``.
    """
    path = Path(path)
    problems: list[str] = []
    out = Submission(problems=problems)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SubmissionError(f"{path}: empty file, expected the header image_id,PredictionString")
        header = [h.strip() for h in header]
        if "image_id" not in header or "PredictionString" not in header:
            raise SubmissionError(f"{path}: header {header} lacks image_id and PredictionString")
        i_id, i_ps = header.index("image_id"), header.index("PredictionString")
        for row_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= i_id or not row[i_id].strip():
                _problem(f"{path}:{row_no}: row without an image_id", strict, problems)
                continue
            image_id = row[i_id].strip()
            text = row[i_ps] if len(row) > i_ps else ""
            if image_id in out:
                _problem(f"{path}:{row_no}: image {image_id}: duplicate row (the first one is kept)", strict,
                         problems)
                continue
            out[image_id] = parse_prediction_string(text, image_id, strict, num_classes, problems)
    if image_ids is not None:
        align_to(out, image_ids, path, strict)
    if problems:
        logger.warning("%s: %d problem(s) skipped in lenient mode", path, len(problems))
    return out


def align_to(sub: Submission, image_ids: Iterable[str], path: str | os.PathLike = "<submission>",
             strict: bool = True) -> Submission:
    """Make ``sub`` cover exactly ``image_ids`` (in place), the Kaggle rule: a missing image predicts nothing,
    an extra one is dropped; each is a problem (strict: :class:`SubmissionError`; lenient: warned and recorded in
    ``sub.problems``)."""
    expected = list(dict.fromkeys(str(i) for i in image_ids))
    expected_set = set(expected)
    missing = [i for i in expected if i not in sub]
    extra = [i for i in sub if i not in expected_set]
    for image_id in missing:  # one summary line per kind below, not one line per image
        _problem(f"{path}: image {image_id} missing from the submission (no predictions assumed)", strict,
                 sub.problems, log=False)
        sub[image_id] = Predictions()
    for image_id in extra:
        _problem(f"{path}: image {image_id} is not in the ground truth (dropped)", strict, sub.problems, log=False)
        del sub[image_id]
    for ids, what in ((missing, "missing from the submission (no predictions assumed)"),
                      (extra, "not in the ground truth (dropped)")):
        if ids:
            logger.warning("%s: %d image(s) %s, e.g. %s", path, len(ids), what, ", ".join(ids[:MAX_PROBLEMS_LOGGED]))
    return sub


def write_submission(path: str | os.PathLike, predictions: Mapping[str, Predictions], digits: int = 6) -> None:
    """Write ``image_id,PredictionString`` rows (in ``predictions``' order) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "PredictionString"])
        for image_id, pred in predictions.items():
            writer.writerow([image_id, format_prediction_string(pred, digits)])


@dataclass(frozen=True)
class Coverage:
    """Which images a ground truth and a submission share (both in their own order)."""

    expected: int
    predicted: int
    shared: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the ground truth, not in the submission
    extra: list[str] = field(default_factory=list)  # in the submission, not in the ground truth

    @property
    def complete(self) -> bool:
        return not self.missing and not self.extra

    def describe(self) -> str:
        """``"k of n ground-truth images predicted"`` plus what is missing or extra."""
        text = f"{len(self.shared)} of {self.expected} ground-truth images predicted"
        if self.missing:
            text += f", {len(self.missing)} missing (e.g. {', '.join(self.missing[:3])})"
        if self.extra:
            text += f", {len(self.extra)} not in the ground truth (e.g. {', '.join(self.extra[:3])})"
        return text

    def to_dict(self) -> dict:
        return {"ground_truth_images": self.expected, "predicted_images": self.predicted,
                "shared": len(self.shared), "missing": len(self.missing), "extra": len(self.extra),
                "fraction": len(self.shared) / self.expected if self.expected else None}


def coverage(expected_ids: Iterable[str], predictions: Mapping[str, Predictions]) -> Coverage:
    """How the images of a submission (or any ``image_id ->`` mapping) cover the expected ones."""
    expected = list(dict.fromkeys(str(i) for i in expected_ids))
    have = set(predictions)
    want = set(expected)
    return Coverage(len(expected), len(predictions), [i for i in expected if i in have],
                    [i for i in expected if i not in have], [i for i in predictions if i not in want])
