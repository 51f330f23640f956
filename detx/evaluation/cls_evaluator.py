"""A detectron2 ``DatasetEvaluator`` for the image classifier: AUC per class and macro; for normal/abnormal, AUC,
F1, sensitivity and specificity at the Youden threshold (reported) with bootstrap 95% intervals.

Used by the trainer's ``EvalHook``, which flattens ``{"cls": {...}}`` into ``cls/auc``, ``cls/f1``, ... in
``metrics.json`` (``DETX.BEST_METRIC cls/auc`` keeps the best checkpoint on it). Labels come from the registered
dataset dicts (:func:`detx.core.prepared.image_level_targets`), probabilities from the model's ``cls_probs``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from detx.core.classification_csv import write_classification_csv
from detx.core.prepared import image_level_targets
from detx.evaluation.body_part import body_part_index, body_part_metrics
from detx.evaluation.evaluator import gather_on_main
from detx.evaluation.image_level import classification_metrics

logger = logging.getLogger(__name__)

__all__ = ["ClassificationEvaluator", "flat_cls_metrics"]


def flat_cls_metrics(m: dict[str, Any]) -> dict[str, float]:
    """:func:`classification_metrics` as the flat floats an ``EvalHook`` logs (NaN where undefined)."""

    def f(v: Any) -> float:
        return float("nan") if v is None else float(v)

    out = {k: f(m[k]) for k in ("auc", "f1", "sensitivity", "specificity", "accuracy", "threshold")}
    out["auc_macro"] = f(m["auc_macro"])
    for k, v in (m.get("ci") or {}).items():
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = (f(None), f(None)) if v is None else (f(v[0]), f(v[1]))
    for name, v in m["auc_per_class"].items():
        out[f"auc-{name}"] = f(v)
    return out


class ClassificationEvaluator(DatasetEvaluator):
    """Image-level metrics of ``DetxClassifier`` on a registered dataset (see the module docstring)."""

    def __init__(self, dataset_name: str, num_classes: int, output_dir: str | None = None, n_boot: int = 1000,
                 distributed: bool = True, label_names: list[str] | None = None,
                 body_parts: list[str] | None = None):
        """
        Args:
            dataset_name: a name in ``DatasetCatalog`` whose metadata has ``thing_classes``.
            num_classes: the model's K class outputs (0: normal/abnormal only).
            output_dir: when given, the main process writes ``classification.csv`` there
                (:mod:`detx.core.classification_csv`; image ids from ``image_uid``, label at the Youden threshold).
            n_boot: bootstrap resamples for the 95% intervals (0: none).
            distributed: gather predictions from all processes to the main one.
            label_names: the image-level labels the class outputs learn (``MODEL.CLASSIFIER.IMAGE_LABELS``), instead
                of the dataset's box classes.
            body_parts: the parts of a body-part head (``MODEL.CLASSIFIER.BODY_PART_HEAD``): its probabilities follow
                the 1 + K outputs, scored against each image's ``body_part`` as ``body_part/*``.
        """
        self._dataset_name = dataset_name
        self._num_classes = int(num_classes)
        self._output_dir = output_dir
        self._n_boot = int(n_boot)
        self._distributed = distributed
        self._label_names = list(label_names or [])
        self._body_parts = list(body_parts or [])
        classes = self._label_names or list(MetadataCatalog.get(dataset_name).thing_classes)
        self._names = ["abnormal", *classes[: self._num_classes]]
        self._probs: list[tuple[str, np.ndarray]] = []

    def reset(self) -> None:
        self._probs = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            if "cls_probs" in out:
                self._probs.append((str(inp["image_id"]), out["cls_probs"].detach().float().cpu().numpy()))

    def evaluate(self) -> dict[str, dict[str, float]]:
        probs = gather_on_main(self._probs, self._distributed)
        if probs is None:
            return {}
        if not probs:
            logger.warning("[ClassificationEvaluator] did not receive any cls_probs")
            return {}
        records = {str(d["image_id"]): d for d in DatasetCatalog.get(self._dataset_name)}
        ids = [i for i, _ in probs]
        unknown = [i for i in ids if i not in records]
        if unknown:
            raise ValueError(f"predictions for image ids {unknown[:5]} that are not in dataset {self._dataset_name}")
        labels = np.stack([image_level_targets(records[i], self._num_classes, self._label_names or None) for i in ids])
        p = np.stack([v for _, v in probs])
        parts = None
        if self._body_parts:
            p, p_parts = p[:, : 1 + self._num_classes], p[:, 1 + self._num_classes:]
            true = [body_part_index(self._body_parts, records[i].get("body_part")) for i in ids]
            parts = body_part_metrics(true, p_parts, self._body_parts)
        m = classification_metrics(labels, p, self._names, n_boot=self._n_boot)
        logger.info("Classification on %d images of %s: AUC %s (95%% CI %s), macro AUC %s", len(ids),
                    self._dataset_name, m["auc"], m["ci"].get("auc"), m["auc_macro"])
        if self._output_dir:
            uid = [str(records[i].get("image_uid", i)) for i in ids]
            write_classification_csv(os.path.join(self._output_dir, "classification.csv"), uid,
                                     dict(zip(uid, p[:, 0].tolist())), dict(zip(uid, p[:, 1:])), self._names[1:],
                                     m["threshold"])
        out = OrderedDict([("cls", flat_cls_metrics(m))])
        if parts is not None:
            logger.info("Body part on %d images (%d of an unknown part): accuracy %s, macro F1 %s", parts["n"],
                        parts["unknown"], parts["accuracy"], parts["macro_f1"])
            out["body_part"] = {k: float("nan") if parts[k] is None else float(parts[k])
                                for k in ("accuracy", "macro_f1", "auc_macro")}
            out["body_part"].update({f"recall-{k}": v["recall"] for k, v in parts["per_part"].items()})
        return out
