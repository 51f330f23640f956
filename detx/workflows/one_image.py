"""One image, one answer, from Python: load a trained detector and/or image classifier once, then ask about single
radiographs (a DICOM or PNG path, or an array) and get boxes in original pixels, P(abnormal), per-class probabilities
and the body part, with the sentence ``tools/predict.py --input FILE`` prints::

    from detx import XrayPredictor

    model = XrayPredictor(detector_config="output/fold0/config.yaml", detector_weights="output/fold0/model_best.pth",
                          classifier_config="output/cls/config.yaml", classifier_weights="output/cls/model_best.pth")
    answer = model.predict("dicoms/0a1b.dicom")
    print(answer.sentence())            # X-ray 0a1b is abnormal (P(abnormal) 0.912, threshold 0.5). Findings: ...
    answer.findings[0].box, answer.class_probs, answer.p_abnormal

It runs :mod:`detx.workflows.predict`'s own steps (decode as preparation does, the models and TTA views, WBF,
P(abnormal), the 2-class filter) on one image at a time, so its answer is the row ``tools/predict.py`` writes for that
image. ``predict_binary(model, "XR_HUMERUS", path)`` is the MURA seed's ``calculate_binary``: the sentence
"X-ray of XR_HUMERUS is abnormal (...)".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detx.core.errors import InputError
from detx.inference.answer import ImageAnswer
from detx.inference.predictor import InputSet, array_record, predict_all, single_image_record
from detx.inference.tta import parse_tta
from detx.workflows.predict import PredictOptions, _build_models, _plan, _score, image_answer

__all__ = ["XrayPredictor", "predict_binary"]


class XrayPredictor:
    """A detector and/or an image classifier (checkpoints or exported files), loaded once (see the module docstring).

    Args:
        detector_config, detector_weights: a detector's config and checkpoint(s) (several are WBF-fused).
        classifier_config, classifier_weights: an image classifier's config and checkpoint(s) (averaged).
        exported: files written by ``tools/export.py``.
        opts: config overrides (``["MODEL.DEVICE", "cuda"]``).
        tta: test-time views (``["hflip"]``).
        options: any other :class:`~detx.workflows.predict.PredictOptions` field (``nofinding_low``, ``rule``,
            ``dicom_size``, ``classifier`` ...), as ``tools/predict.py`` takes them.

    Raises:
        InputError (and the other DetxErrors of prediction): a bad option, config or checkpoint, named.
    """

    def __init__(self, detector_config: str | os.PathLike | None = None,
                 detector_weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 classifier_config: str | os.PathLike | None = None,
                 classifier_weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 exported: Sequence[str | os.PathLike] = (), opts: Sequence[str] = (), tta: Sequence[str] = (),
                 **options):
        def many(x) -> list[str]:
            if x is None:
                return []
            return [str(x)] if isinstance(x, (str, os.PathLike)) else [str(v) for v in x]

        unknown = set(options) - {f.name for f in dataclasses.fields(PredictOptions)}
        if unknown:
            raise InputError(f"unknown prediction option(s) {sorted(unknown)}")
        self.options = PredictOptions(
            config_files=many(detector_config), weights=many(detector_weights), input="<api>", out=None,
            opts=list(opts), tta=list(tta), classifier_configs=many(classifier_config),
            classifier_weights=many(classifier_weights), exported=many(exported), progress=False,
            **{"batch_size": 1, "num_workers": 0, **options})
        self._plan = _plan(self.options, InputSet([], Path("<api>")))
        self.detectors, self.classifiers = _build_models(self._plan, self.options)
        self.views = parse_tta(self.options.tta)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The detector's box classes."""
        return tuple(self._plan.classes)

    def predict(self, image: str | os.PathLike | np.ndarray, image_id: str | None = None,
                body_part: str | None = None, orig_size: tuple[int, int] | None = None) -> ImageAnswer:
        """The answer for one image.

        Args:
            image: a DICOM or PNG path, or an array (H x W grayscale uint8/uint16, or H x W x 3 RGB uint8).
            image_id: the id to report (default: the file's id, or ``image`` for an array).
            body_part: the body part, when the caller knows it (MURA: ``XR_HUMERUS``); else read from a MURA path.
            orig_size: (width, height) of the original image an array was resized from (boxes come back in it).

        Raises:
            PredictionInputError: not an image; UnreadableImageError: it cannot be decoded.
        """
        if isinstance(image, np.ndarray):
            record = array_record(image, image_id or "image", orig_size)
        else:
            path = Path(image)
            if not path.is_file():
                raise InputError(f"image {path} does not exist")
            record = single_image_record(path)
            if image_id:
                record.image_id = image_id
        plan = dataclasses.replace(self._plan, inputs=InputSet([record], record.path))
        run = predict_all(self.detectors, [record], self.views, 1, self.options.model_weights, plan.dicom_size, 0,
                          strict=True, progress=False, classifiers=self.classifiers)
        plan.orig_sizes = run.orig_sizes
        scored = _score(plan, run, self.options, len(self.classifiers), bool(self.detectors))
        return image_answer(plan, scored, record.image_id, body_part)


def predict_binary(model: XrayPredictor, body_part: str | None, image: str | os.PathLike | np.ndarray) -> str:
    """The MURA seed's ``calculate_binary(model, 'XR_HUMERUS', 'path/image1.png')``: one sentence,
    "X-ray of XR_HUMERUS is abnormal (P(abnormal) 0.87, threshold 0.5)."."""
    return model.predict(image, body_part=body_part).sentence()
