"""A detectron2 ``DatasetEvaluator`` computing the challenge metric and the COCO numbers.

Used by the trainer's ``EvalHook`` (which logs ``vinbigdata/mAP40`` and ``bbox/*``) and by
``inference_on_dataset``. Ground truth comes from the registered dataset dicts, predictions from the
model's ``Instances`` (already rescaled by detectron2 to the dataset dict's ``height``/``width``); both are
scaled to original pixels when the dicts carry ``orig_width``/``orig_height`` (the prepared datasets do),
so the numbers equal those of ``tools/evaluate.py`` on the same predictions written as a submission.
The No-finding score of an image is ``1 - p_abnormal_rule(finding scores)``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from detx.core.classes import NO_FINDING, no_finding_id
from detx.core.image_scores import p_abnormal_rule
from detx.core.predictions import Predictions, no_finding_entry
from detx.core.prepared import original_size, png_to_original
from detx.core.submission import write_submission
from detx.evaluation.coco_map import coco_metrics, summary_in_percent
from detx.evaluation.vinbigdata import map_key, vinbigdata_map

logger = logging.getLogger(__name__)

__all__ = ["VinBigDataEvaluator", "ground_truth_from_dataset_dicts"]


def gather_on_main(items: list[Any], distributed: bool = True) -> list[Any] | None:
    """A ``DatasetEvaluator``'s per-process items joined on the main process (detectron2's ``comm.gather``); None on
    the other processes, which have nothing to report."""
    if not distributed:
        return list(items)
    comm.synchronize()
    gathered = comm.gather(items, dst=0)
    return list(itertools.chain(*gathered)) if comm.is_main_process() else None


def _to_original_frame(boxes: np.ndarray, frame: tuple[Any, Any], d: dict[str, Any]) -> np.ndarray:
    """Boxes in a dataset dict's pixel frame ``(width, height)`` moved to original pixels; unchanged when the
    dict records no original size or the frame is unknown."""
    orig = original_size(d)
    if orig is None or not (frame[0] and frame[1]):
        return np.asarray(boxes, np.float64).reshape(-1, 4)
    return png_to_original(boxes, frame, d)  # through the image's crop (--crop lungs) when it has one


def ground_truth_from_dataset_dicts(
    dicts: list[dict[str, Any]],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, dict[str, Any]]]:
    """Ground truth in original pixels from detectron2 dataset dicts.

    Returns:
        (gt, records): ``str(image_id) -> (boxes xyxy, classes)`` (crowd boxes dropped) and
        ``str(image_id) -> the dataset dict``.
    """
    gt, records = {}, {}
    for d in dicts:
        key = str(d["image_id"])
        if key in records:
            raise ValueError(f"dataset has image_id {key} twice")
        records[key] = d
        anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = np.asarray(
            [BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS) for a in anns],
            np.float64,
        ).reshape(-1, 4)
        gt[key] = (_to_original_frame(boxes, (d.get("width"), d.get("height")), d), np.asarray([a["category_id"] for a in anns], np.int64))
    return gt, records


class VinBigDataEvaluator(DatasetEvaluator):
    """The VinBigData challenge metric (+ COCO numbers) on a registered dataset.

    ``evaluate()`` returns ``{"vinbigdata": {"mAP40", "AP40-<class>", ..., "AP40-No finding"}, "bbox": {"AP",
    "AP50", "AP75", "APs", "APm", "APl", "AP40", "AP-<class>"}}``: the challenge numbers as fractions (the
    leaderboard's scale), the COCO ones in percent (detectron2's ``COCOEvaluator`` scale); NaN for a class
    without ground truth.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        iou_thr: float = 0.4,
        distributed: bool = True,
        abnormal_rule: str = "max",
        include_no_finding: bool = True,
    ) -> None:
        """
        Args:
            dataset_name: a name in ``DatasetCatalog`` whose metadata has ``thing_classes``.
            output_dir: when given, the main process writes ``vinbigdata_predictions.csv`` there (a
                submission in original pixels, image ids from ``image_uid`` when present).
            iou_thr: the matching threshold (0.4: key ``mAP40``).
            distributed: gather predictions from all processes to the main one.
            abnormal_rule: the ``p_abnormal_rule`` rule for the No-finding score.
            include_no_finding: score the No-finding class as the challenge does.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._iou_thr = float(iou_thr)
        self._distributed = distributed
        self._abnormal_rule = abnormal_rule
        self._include_no_finding = include_no_finding
        self._classes = list(MetadataCatalog.get(dataset_name).thing_classes)
        self._no_finding = no_finding_id(self._classes)
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            inst = out["instances"].to("cpu")
            self._predictions.append({
                "image_id": str(inp["image_id"]),
                "frame": (inp.get("width"), inp.get("height")),
                "boxes": inst.pred_boxes.tensor.numpy().astype(np.float64),
                "scores": inst.scores.numpy().astype(np.float64),
                "classes": inst.pred_classes.numpy().astype(np.int64),
            })

    def _to_original(self, rec: dict[str, Any], d: dict[str, Any]) -> Predictions:
        w, h = rec["frame"]
        if w is None or h is None:
            w, h = d.get("width"), d.get("height")
        pred = Predictions(_to_original_frame(rec["boxes"], (w, h), d), rec["scores"], rec["classes"])
        if self._include_no_finding:
            p_none = 1.0 - p_abnormal_rule(rec["scores"], self._abnormal_rule)
            pred = Predictions.concatenate([pred, no_finding_entry(p_none, self._no_finding)])
        return pred

    def evaluate(self) -> dict[str, dict[str, float]]:
        predictions = gather_on_main(self._predictions, self._distributed)
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("[VinBigDataEvaluator] did not receive valid predictions.")
            return {}

        gt_all, records = ground_truth_from_dataset_dicts(DatasetCatalog.get(self._dataset_name))
        preds: dict[str, Predictions] = {}
        for rec in predictions:
            key = rec["image_id"]
            if key not in records:
                raise ValueError(f"prediction for image_id {key}, which is not in dataset {self._dataset_name}")
            preds[key] = self._to_original(rec, records[key])
        if len(preds) < len(gt_all):
            logger.warning("[VinBigDataEvaluator] %d of %d images of %s were not processed; evaluating the %d that were",
                           len(gt_all) - len(preds), len(gt_all), self._dataset_name, len(preds))
        gt = {k: gt_all[k] for k in preds}

        num_classes = len(self._classes)
        vb = vinbigdata_map(gt, preds, num_classes=num_classes, iou_thr=self._iou_thr,
                            include_no_finding=self._include_no_finding)
        coco = coco_metrics(gt, preds, num_classes=num_classes, extra_iou_thr=self._iou_thr)
        key = map_key(self._iou_thr)
        names = [*self._classes, NO_FINDING]
        challenge = {key: vb["mAP"]}
        for c, ap in vb["AP_per_class"].items():
            challenge[f"AP{key[3:]}-{names[c]}"] = float("nan") if ap is None else ap
        bbox = summary_in_percent(coco, self._classes)
        extra = coco[f"coco_{key}"]
        bbox[f"AP{key[3:]}"] = float("nan") if extra is None else 100.0 * extra
        logger.info("Evaluation results of %s on %d images: %s %.4f, COCO AP %.2f", self._dataset_name, len(gt),
                    key, vb["mAP"], bbox["AP"])

        if self._output_dir:
            uid = {k: str(records[k].get("image_uid", k)) for k in preds}
            os.makedirs(self._output_dir, exist_ok=True)
            write_submission(os.path.join(self._output_dir, "vinbigdata_predictions.csv"),
                             {uid[k]: p for k, p in preds.items()})
        return OrderedDict([("vinbigdata", challenge), ("bbox", bbox)])
