"""Exported files (:mod:`detx.inference.export`) run like checkpoints: :func:`~detx.inference.predictor.predict_all`
takes an :class:`ExportedPredictor` or :class:`ExportedClassifier` wherever it takes a ``BatchedPredictor`` or
``BatchedClassifier``, with the same decoding, TTA views, prediction cache and original-pixel boxes.

An exported graph takes one image per call (it was traced on a batch of one), so a batch is run image by image:
no padding to a batch's largest image, and ``--batch-size`` does not change its results. What detectron2's
post-processing does for an eager model is done here: the boxes of the input frame are scaled to the original
size (:func:`detx.core.prepared.rescale_boxes`), clipped to it, and empty boxes dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detx.core.errors import InputError
from detx.core.predictions import Predictions
from detx.core.prepared import rescale_boxes
from detx.inference.export import ExportedModelInfo, ExportedModule, read_exported_info
from detx.inference.predictor import SWAPPABLE_FORMATS, inference_resize, model_input
from detx.inference.tta import TTAView, hflip_boxes

logger = logging.getLogger(__name__)

__all__ = ["ExportedClassifier", "ExportedPredictor", "load_exported_runner", "original_frame"]


class _ExportedModel:
    """An exported file behind the interface ``predict_all`` runs (``input_format``, ``cache_key``, a call on a
    batch of decoded images)."""

    kind = ""

    def __init__(self, path: str | os.PathLike, device: str | None = None):
        self.path = str(path)
        info = read_exported_info(path)
        if info.kind != self.kind:
            raise InputError(f"{path} is an exported {info.kind}, not an exported {self.kind}")
        self.module = ExportedModule(path, device)
        self.info: ExportedModelInfo = self.module.info
        self.input_format = self.info.input_format
        if self.input_format not in SWAPPABLE_FORMATS:
            raise InputError(f"{path}: input format {self.input_format!r} is not supported for prediction "
                             f"({' or '.join(SWAPPABLE_FORMATS)})")

    def cache_key(self, view: TTAView, dicom_size: int) -> str:
        """What determines this file's output for a view: the file (path, size, mtime), where it runs, the view."""
        st = os.stat(self.path)
        return "|".join([os.path.abspath(self.path), str(st.st_size), str(st.st_mtime_ns), "exported",
                         self.info.format, str(self.module.device), view.name, str(dicom_size)])

    def _inputs(self, images: Sequence[np.ndarray], view: TTAView, fmt: str | None):
        resize = inference_resize(self.info.min_size_test, self.info.max_size_test, view)
        for image in images:
            yield model_input(image, resize, self.input_format, view, fmt)


def original_frame(boxes: np.ndarray, input_size: tuple[int, int], orig_size: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """detectron2's ``detector_postprocess`` for an exported detector's boxes: from the input frame
    (``(width, height)``) to the original one, clipped to it; returns the boxes and the mask of the non-empty ones."""
    out = rescale_boxes(boxes, input_size, orig_size)
    ow, oh = (float(v) for v in orig_size)
    out[:, 0::2] = out[:, 0::2].clip(0.0, ow)
    out[:, 1::2] = out[:, 1::2].clip(0.0, oh)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, keep


class ExportedPredictor(_ExportedModel):
    """An exported detector: per image :class:`Predictions` in original pixels, like ``BatchedPredictor``."""

    kind = "detector"

    def __call__(self, images: Sequence[np.ndarray], orig_sizes: Sequence[tuple[int, int]],
                 view: TTAView | None = None, fmt: str | None = None) -> list[Predictions]:
        """Predict a batch, image by image (see ``BatchedPredictor.__call__`` for the arguments)."""
        view = view or TTAView()
        preds = []
        for t, (ow, oh) in zip(self._inputs(images, view, fmt), orig_sizes):
            boxes, scores, classes = self.module(t)
            in_h, in_w = int(t.shape[1]), int(t.shape[2])
            boxes, keep = original_frame(np.asarray(boxes, np.float64).reshape(-1, 4), (in_w, in_h), (ow, oh))
            boxes = boxes[keep]
            if view.hflip:
                boxes = hflip_boxes(boxes, float(ow))
            preds.append(Predictions(boxes, np.asarray(scores, np.float32)[keep],
                                     np.asarray(classes, np.int64)[keep]))
        return preds


class ExportedClassifier(_ExportedModel):
    """An exported image classifier: per image the (1 + K,) probabilities, like ``BatchedClassifier``."""

    kind = "classifier"

    def __init__(self, path: str | os.PathLike, device: str | None = None):
        super().__init__(path, device)
        self.num_outputs = len(self.info.prob_names)

    def __call__(self, images: Sequence[np.ndarray], orig_sizes: Sequence[tuple[int, int]],
                 view: TTAView | None = None, fmt: str | None = None) -> list[np.ndarray]:
        return [np.asarray(self.module(t)[0], np.float64).reshape(-1)
                for t in self._inputs(images, view or TTAView(), fmt)]


def load_exported_runner(path: str | os.PathLike, device: str | None = None
                         ) -> ExportedPredictor | ExportedClassifier:
    """The runner of an exported file, by the kind its metadata records."""
    info = read_exported_info(Path(path))
    return ExportedPredictor(path, device) if info.is_detector else ExportedClassifier(path, device)
