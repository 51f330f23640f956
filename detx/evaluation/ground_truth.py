"""Ground truth for evaluation: a reader CSV with its readers fused, or a prepared COCO JSON, in original pixels.

An image is abnormal when it has a finding box after fusion (the "any reader" rule of
:func:`detx.data.fusion.image_labels`), and has class k when it has a box of class k.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from detx.core.classes import NO_FINDING
from detx.core.errors import InputError
from detx.core.prepared import load_prepared_coco
from detx.data.fusion import fuse_readers
from detx.data.readers import read_reader_csv

logger = logging.getLogger(__name__)

__all__ = ["GroundTruthSet", "load_ground_truth"]


@dataclass
class GroundTruthSet:
    """Ground truth of an evaluation: ``gt`` maps image_id to (boxes xyxy original px, classes), findings only."""

    gt: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...]
    dataset: str = ""
    source: str = ""
    problems: list[str] = field(default_factory=list)
    labelled: bool = True  # False for a split prepared without annotations (test.json): no image has a label
    # per image, from a prepared JSON's image entries when they carry them (MURA: labels without boxes)
    image_labels: dict[str, int] | None = None
    studies: dict[str, str] = field(default_factory=dict)
    body_parts: dict[str, str] = field(default_factory=dict)
    #: the readers' own boxes (normalized reader table) when the ground truth is a reader CSV, else None
    table: pd.DataFrame | None = None



def load_ground_truth(
    path: str | os.PathLike,
    fusion: str = "wbf",
    fusion_iou_thr: float = 0.4,
    strict: bool = False,
) -> GroundTruthSet:
    """Ground truth from a reader CSV (fused per ``fusion``) or a prepared COCO JSON (``.json``).

    Raises:
        detx.data.readers.DataError: a bad CSV row in strict mode.
        ValueError: an unreadable file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"ground truth {path} does not exist")
    if path.suffix.lower() == ".json":
        pc = load_prepared_coco(path)
        has_boxes = any(len(c) for _, c in pc.gt.values())
        entries = pc.images
        image_labels = {i: int(e["abnormal"]) for i, e in entries.items() if e.get("abnormal") is not None}
        if len(image_labels) != len(entries):
            image_labels = None
        # prepared from a reader CSV, or labelled per image (MURA)
        labelled = has_boxes or pc.info.get("fusion") is not None or image_labels is not None
        if labelled and not has_boxes and image_labels is None:
            logger.warning("%s has no annotations: every image counts as normal", path)
        studies = {i: str(e["study_id"]) for i, e in entries.items() if e.get("study_id")}
        parts = {i: str(e["body_part"]) for i, e in entries.items() if e.get("body_part")}
        return GroundTruthSet(dict(pc.gt), tuple(pc.classes), str(pc.info.get("dataset", "")), str(path),
                              labelled=labelled, image_labels=image_labels,
                              studies=studies if len(studies) == len(entries) else {},
                              body_parts=parts if len(parts) == len(entries) else {})

    table, problems = read_reader_csv(path, strict=strict)
    classes = tuple(table.attrs["classes"])
    fused = fuse_readers(table, method=fusion, iou_thr=fusion_iou_thr)
    gt: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    is_finding = (fused["class_name"] != NO_FINDING).to_numpy()
    boxes = fused[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
    cls = fused["class_id"].to_numpy(dtype=np.int64)
    for image_id, idx in fused.groupby("image_id", sort=False).indices.items():
        keep = idx[is_finding[idx]]
        gt[str(image_id)] = (boxes[keep].reshape(-1, 4), cls[keep])
    study = table.groupby("image_id", sort=False)["study_id"].first()
    studies = {str(i): str(v) for i, v in study.items() if v}
    return GroundTruthSet(gt, classes, str(table.attrs.get("dataset", "")), str(path), [str(p) for p in problems],
                          table=table, studies=studies if len(studies) == len(gt) else {})
