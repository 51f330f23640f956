"""``tools/fit_classifier.py``'s whole job: fit the detection-based image-level classifier on out-of-fold
predictions against ground truth files."""

from __future__ import annotations

import logging
import os

import numpy as np

from detx.core.errors import InputError
from detx.core.submission import coverage, read_submission
from detx.evaluation.ground_truth import load_ground_truth
from detx.evaluation.image_level import image_level_metrics
from detx.inference.classifier import ImageClassifier, fit_classifier

logger = logging.getLogger(__name__)

__all__ = ["MIN_PER_LABEL", "fit_from_files"]

#: the fewest normal and abnormal images a fit needs (a threshold and a logistic model on fewer are noise)
MIN_PER_LABEL = 3


def fit_from_files(
    pred_path: str | os.PathLike,
    gt_path: str | os.PathLike,
    kind: str = "logistic",
    threshold_method: str = "youden",
    target_sensitivity: float = 0.9,
    gt_fusion: str = "wbf",
    strict: bool = False,
    c: float = 1.0,
) -> tuple[ImageClassifier, dict]:
    """Fit the image-level classifier on an (out-of-fold) submission against ground truth.

    Args:
        pred_path: submission CSV of the images (fit on one written without the 2-class filter: its
            class ``len(classes)`` entries are ignored, its boxes are the features).
        gt_path: a reader CSV (readers fused with ``gt_fusion``; an image is abnormal when the fused
            ground truth has a finding box, i.e. when any reader drew one) or a prepared COCO JSON.
        kind, threshold_method, target_sensitivity, c: see :func:`fit_classifier`.
        strict: stop at the first bad submission entry or missing image (else skip with a warning).

    Only images in both files are fitted on (the counts are in the report); an image missing from the submission
    is never taken as "no predictions".

    Raises:
        InputError: no shared image, an unlabelled ground truth, or fewer than :data:`MIN_PER_LABEL` images of
            either label.

    Returns:
        The classifier (its ``metrics`` filled) and a report: ``{"num_images", "classes", "fitted":
        image-level metrics of the classifier at its threshold, "max_rule": those of the ``max`` rule at its
        Youden threshold}`` (metrics of :func:`detx.evaluation.image_level.image_level_metrics`, on the
        fitting data: optimistic for the logistic model).
    """
    gts = load_ground_truth(gt_path, fusion=gt_fusion, strict=strict)
    if not gts.labelled:
        raise InputError(f"ground truth {gt_path} has no labels (an unlabelled test split?): nothing to fit on")
    num_classes = len(gts.classes)
    sub = read_submission(pred_path, strict=strict, num_classes=num_classes + 1,
                          image_ids=list(gts.gt) if strict else None)
    cover = coverage(gts.gt, sub)
    if not cover.shared:
        raise InputError(f"{pred_path} and {gt_path} share no image ({cover.describe()}): nothing to fit on")
    if not cover.complete:
        logger.warning("fitting on the %d images both files have: %s", len(cover.shared), cover.describe())
    ids = cover.shared
    preds = [sub[i] for i in ids]
    labels = np.array([int(len(gts.gt[i][0]) > 0) for i in ids])
    n_abnormal = int(labels.sum())
    if min(n_abnormal, len(ids) - n_abnormal) < MIN_PER_LABEL:
        raise InputError(f"too few images of a label to fit on: {n_abnormal} abnormal and {len(ids) - n_abnormal} "
                         f"normal among the {len(ids)} shared images (at least {MIN_PER_LABEL} of each)")
    clf = fit_classifier(preds, labels, num_classes, kind, threshold_method, target_sensitivity, c)
    fitted = image_level_metrics(labels, clf.predict_proba(preds), clf.threshold)
    rule = image_level_metrics(labels, ImageClassifier("max", num_classes).predict_proba(preds))
    keys = ("auc", "threshold", "f1", "sensitivity", "specificity", "accuracy")
    clf.metrics = {k: fitted[k] for k in keys} | {"num_images": len(ids), "num_abnormal": int(labels.sum())}
    report = {"num_images": len(ids), "classes": list(gts.classes), "fitted": fitted, "max_rule": rule,
              "submission_problems": len(sub.problems), "coverage": cover.to_dict(),
              "coverage_text": cover.describe()}
    return clf, report
