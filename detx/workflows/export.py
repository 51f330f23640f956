"""``tools/export.py``'s whole job as one call: config + checkpoint -> a TorchScript or ONNX file with detx's
metadata inside, checked against the eager model before it is kept.

:func:`run_export` builds the model as prediction does (the weights checked against the config first: a wrong file
stops with exit status 2), traces it on a sample image (:mod:`detx.inference.export`), writes the file atomically,
and runs the written file on the sample beside the eager model: a file that disagrees is not kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from detx.core.errors import InputError
from detx.core.io import atomic_path
from detx.core.prepared import PreparedDatasetError, annotation_files, read_coco_json
from detx.engine.config import get_detx_cfg, is_classifier, num_classes
from detx.inference.export import FORMATS, ExportError, export_model, model_info, sample_input, verify_export
from detx.inference.predictor import BatchedClassifier, BatchedPredictor, InputImage, load_image
from detx.workflows.predict import class_names_for

logger = logging.getLogger(__name__)

#: the exported graph agrees with the eager model on the sample when within these (pixels in the input frame, score)
BOX_TOL = 1.0
SCORE_TOL = 1e-3


@dataclass
class ExportOptions:
    """What ``tools/export.py`` takes (see its ``--help``)."""

    config_file: str
    weights: str
    format: str
    out: str
    opts: list[str] = field(default_factory=list)
    sample_image: str | None = None
    verify: bool = True


def model_class_names(cfg: CfgNode) -> list[str]:
    """The finding classes of ``cfg``'s model: its prepared dataset's (``DETX.DATA_ROOT``, recorded in the training
    ``config.yaml``) when that is readable and has as many, else the known dataset with that many classes."""
    k = num_classes(cfg)
    root = str(cfg.DETX.DATA_ROOT or "")
    if root:
        try:
            data = read_coco_json(annotation_files(root)[0])
            names = list((data.get("info") or {}).get("classes") or
                         [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])])
            if len(names) == k:
                return names
            logger.warning("DETX.DATA_ROOT %s has %d classes, the model %d: class names from the class count",
                           root, len(names), k)
        except PreparedDatasetError as e:
            logger.info("class names not read from DETX.DATA_ROOT (%s): taken from the class count", e)
    return list(class_names_for(k, None))


def agreement(check: dict[str, Any]) -> bool:
    """Whether :func:`~detx.inference.export.verify_export`'s comparison is within the parity tolerances: the same
    detections (class, score within :data:`SCORE_TOL`, corners within :data:`BOX_TOL`), or probabilities."""
    if "max_prob_diff" in check:
        return check["max_prob_diff"] <= SCORE_TOL
    return (check["unmatched"] == 0 and check["reference"] == check["exported"]
            and check["max_box_diff"] <= BOX_TOL and check["max_score_diff"] <= SCORE_TOL)


def _sample_image(path: str, cfg: CfgNode):
    """A user's sample image (PNG or DICOM), decoded as prediction decodes it."""
    p = Path(path)
    kind = "png" if p.suffix.lower() in (".png", ".jpg", ".jpeg") else "dicom"
    size = int(cfg.DETX.IMAGE_SIZE) or int(max(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
    loaded = load_image(InputImage(p.stem, p, kind), cfg.INPUT.FORMAT, size)
    if loaded.error is not None:
        raise InputError(f"--sample-image: {loaded.error}")
    return loaded.image


def run_export(options: ExportOptions) -> dict[str, Any]:
    """Export a detector or image classifier checkpoint to ``options.out``.

    Returns:
        A summary: ``out``, ``format``, ``kind``, ``classes``, ``bytes``, ``input`` (the sample's CHW shape) and
        ``verify`` (exported vs eager on the sample: a detector's ``reference``/``exported``/``unmatched`` counts and
        ``max_box_diff``/``max_score_diff``, a classifier's ``max_prob_diff``; None with ``verify=False``),
        ``agrees`` (within 1 px / 1e-3; True, or None unverified).

    Raises:
        InputError (CheckpointError, ConfigKeyError, ...): an unknown format, a config or weights that do not fit.
        OnnxExportError: an operator that the ONNX exporter or onnxruntime cannot take, named (TorchScript works).
        ExportError: the written file disagrees with the eager model on the sample (nothing is kept).
    """
    if options.format not in FORMATS:
        raise InputError(f"unknown export format {options.format!r}: expected one of {', '.join(FORMATS)}")
    cfg = get_detx_cfg(options.config_file, options.opts)
    runner = (BatchedClassifier if is_classifier(cfg) else BatchedPredictor)(cfg, options.weights, amp=False)
    info = model_info(cfg, options.format, model_class_names(cfg),
                      {"config": os.path.abspath(options.config_file), "weights": os.path.abspath(options.weights)})
    image = _sample_image(options.sample_image, cfg) if options.sample_image else None
    sample = sample_input(info, image)
    check = agrees = None
    with atomic_path(options.out) as tmp:
        export_model(runner.model, info, tmp, sample)
        if options.verify:
            check = verify_export(runner.model, info, tmp, sample)
            agrees = agreement(check)
            if not agrees:  # the temporary file is removed: a silently different model is not kept
                raise ExportError(f"the exported {info.format} {info.kind} differs from the eager model on the "
                                  f"{'x'.join(map(str, sample.shape))} sample image ({check}; tolerances "
                                  f"{BOX_TOL} px, {SCORE_TOL}): {options.out} not written. --no-verify writes it "
                                  "unchecked")
    return {"out": str(options.out), "format": info.format, "kind": info.kind, "classes": info.num_classes,
            "bytes": Path(options.out).stat().st_size, "input": list(sample.shape), "verify": check,
            "agrees": agrees}
