"""``tools/visualize.py``'s whole job: overlays of an existing submission against the ground truth or the readers.

The images come from what ``tools/predict.py --input`` takes (a prepared JSON, a DICOM folder, a PNG folder with its
meta.csv), the ground truth from a reader CSV (fused, or each reader's own boxes with ``readers``) or a prepared
JSON (``--gt``, or the labelled ``--input`` JSON itself). Which images: the ones named (``image_ids``) or the
``worst`` N by per-image error (:mod:`detx.evaluation.per_image`: missed ground-truth boxes plus false-positive
predictions at or above ``score_thr``). Writes ``<out>/<image_id>.png`` and ``<out>/errors.csv`` (every image's
counts, worst first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import NO_FINDING
from detx.core.errors import InputError
from detx.core.io import atomic_write_text, write_png
from detx.core.submission import read_submission
from detx.evaluation.ground_truth import load_ground_truth
from detx.evaluation.per_image import per_image_errors
from detx.inference.predictor import collect_inputs, load_image
from detx.viz.overlay import draw_comparison

logger = logging.getLogger(__name__)

__all__ = ["VisualizeOptions", "run_visualize"]


@dataclass
class VisualizeOptions:
    """What ``tools/visualize.py`` takes (see its ``--help``)."""

    pred: str
    input: str
    out: str
    gt: str | None = None
    readers: bool = False
    image_ids: list[str] = field(default_factory=list)
    worst: int = 16
    score_thr: float = 0.3
    iou_thr: float = 0.4
    gt_fusion: str = "wbf"
    dicom_size: int = 1024


def _reader_boxes(table: pd.DataFrame, image_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each reader's own finding boxes on ``image_id`` (readers without a box there are left out)."""
    rows = table[(table["image_id"].astype(str) == image_id) & (table["class_name"] != NO_FINDING)]
    out = {}
    for rad, g in rows.groupby("rad_id", sort=False):
        out[str(rad) or "(no rad_id)"] = (g[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64),
                                         g["class_id"].to_numpy(np.int64))
    return out


def run_visualize(o: VisualizeOptions) -> dict[str, Any]:
    """Draw the overlays; returns ``{"written": [paths], "errors_csv": path, "selected": [{image_id, error, ...}],
    "truth": "fused" | "readers"}``.

    Raises:
        InputError: no ground truth, ``readers`` without a reader CSV that has rad_id, image ids not in the input, or
            a submission that shares no image with the input.
    """
    if o.worst < 1 and not o.image_ids:
        raise InputError("--worst needs at least 1 (or name the images with --image-ids)")
    inputs = collect_inputs(o.input)
    gt_source = o.gt
    if gt_source is None:
        if inputs.gt is None:
            raise InputError(f"no ground truth: give --gt (a reader CSV or a prepared JSON); the input {o.input} "
                             "carries none")
        gt_source = str(inputs.source)
    gts = load_ground_truth(gt_source, fusion=o.gt_fusion)
    if o.readers and (gts.table is None or not (gts.table["rad_id"].astype(str) != "").any()):
        raise InputError(f"--readers draws each reader's own boxes: it needs a reader CSV with rad_id as --gt, not "
                         f"{gt_source}")
    sub = read_submission(o.pred, strict=False, num_classes=len(gts.classes) + 1)
    records = {r.image_id: r for r in inputs.images}
    if not set(sub) & set(records):
        raise InputError(f"{o.pred} shares no image with the input {o.input}")
    ids = [i for i in records if i in gts.gt]
    if not ids:
        raise InputError(f"the ground truth {gt_source} has none of the input's images")
    errors = per_image_errors(gts.gt, sub, ids, len(gts.classes), o.score_thr, o.iou_thr)
    out = Path(o.out)
    atomic_write_text(out / "errors.csv", pd.DataFrame([e.to_dict() for e in errors],
                                                       columns=["image_id", "error", "missed", "false_positives",
                                                                "gt_boxes", "pred_boxes"]).to_csv(index=False))
    by_id = {e.image_id: e for e in errors}
    if o.image_ids:
        unknown = [i for i in o.image_ids if i not in by_id]
        if unknown:
            raise InputError(f"--image-ids not among the input's labelled images: {unknown[:10]}")
        chosen = [by_id[i] for i in dict.fromkeys(o.image_ids)]
    else:
        chosen = errors[: o.worst]
    missing_pred = [e.image_id for e in chosen if e.image_id not in sub]
    if missing_pred:
        logger.warning("%d chosen image(s) are not in the submission (drawn without predictions): %s",
                       len(missing_pred), missing_pred[:5])
    written = []
    for e in chosen:
        loaded = load_image(records[e.image_id], "BGR", o.dicom_size)
        if loaded.error is not None:
            logger.warning("overlay of %s skipped: %s", e.image_id, loaded.error)
            continue
        truth = _reader_boxes(gts.table, e.image_id) if o.readers else {"GT": gts.gt[e.image_id]}
        title = (f"{e.image_id}: {e.missed} of {e.gt_boxes} GT missed, {e.false_positives} of {e.pred_boxes} "
                 f"pred >= {o.score_thr:g} false")
        img = draw_comparison(loaded.image, sub.get(e.image_id), gts.classes, loaded.orig_size, truth, o.score_thr,
                              title)
        path = out / f"{e.image_id.replace('/', '_')}.png"
        write_png(path, img)
        written.append(path)
    return {"written": [str(p) for p in written], "errors_csv": str(out / "errors.csv"),
            "selected": [e.to_dict() for e in chosen], "truth": "readers" if o.readers else "fused"}
