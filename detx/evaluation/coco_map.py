"""COCO-style detection numbers through faster-coco-eval's ``COCOeval_faster`` (pycocotools' algorithm in C++).

One evaluation with the IoU thresholds ``0.4, 0.5, 0.55, ..., 0.95`` gives both the standard COCO numbers (the
twelve ``COCOeval.summarize()`` stats: AP@[.5:.95], AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l over the default ten
thresholds; thresholds are evaluated independently, so the extra 0.4 changes none of them) and ``coco_mAP40``: the
101-point interpolated AP at IoU >= 0.4 (COCO's matching: a detection may take the best *unmatched* box, unlike
VOC's). "No finding" is not a box category and is left out. Category ids are the 0-based class ids.

**Why faster-coco-eval.** pycocotools' ``evaluate``/``accumulate`` loop in Python over every (image, class, area)
triple; on the whole VinBigData training set (15,000 images, ~1M predicted boxes) they were most of
``tools/evaluate.py``'s time and memory (docs/evaluation.md, ``benchmarks/bench_evaluate.py``).
faster-coco-eval (maintained, MIT/BSD, the same algorithm with ``evaluateImg`` and ``accumulate`` in C++) gives the
same ``eval["precision"]`` / ``eval["recall"]`` arrays: ``tests/test_metric_coco.py`` checks all twelve stats,
``coco_mAP40`` and the per-class APs against pycocotools to 1e-6 on hand-made and random cases (empty images, many
classes, tied scores), and docs/evaluation.md says how it was checked. Its result objects are built here directly from
the flat arrays (no ``loadRes``: it would add a segmentation polygon to each of a million boxes, unused by ``bbox``
evaluation); the fields are exactly those pycocotools' ``loadRes`` sets for boxes (``area = w * h``, ids 1..N,
``iscrowd = 0``).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import faster_coco_eval.faster_eval_api_cpp as _C
import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval.core.cocoeval import Params

from detx.core.predictions import GroundTruth, Predictions
from detx.evaluation.matching import FlatBoxes, flatten_ground_truth, flatten_predictions

logger = logging.getLogger(__name__)

__all__ = ["coco_metrics", "coco_eval_arrays", "build_coco_objects", "SUMMARY_KEYS", "STATS_KEYS"]

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: the twelve numbers of ``COCOeval.summarize()``, in its order
STATS_KEYS = (*SUMMARY_KEYS, "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval's ``print_function``: its progress lines are not wanted."""


def _xywh(b: np.ndarray) -> list[list[float]]:
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).tolist()


def _coco(dataset: dict[str, Any]) -> COCO:
    c = COCO(print_function=_quiet)
    c.dataset = dataset
    c.createIndex()
    return c


def _coco_pair(g: FlatBoxes, p: FlatBoxes, categories: list[int]) -> tuple[COCO, COCO]:
    """faster-coco-eval ground truth and results of the boxes of ``categories`` (image ids 1..N)."""
    images = [{"id": k + 1} for k in range(len(g.image_ids))]
    cats = [{"id": c, "name": str(c)} for c in categories]
    gm, pm = np.isin(g.classes, categories), np.isin(p.classes, categories)
    gwh, pwh = _xywh(g.boxes[gm]), _xywh(p.boxes[pm])
    gt_anns = [
        {"id": j + 1, "image_id": i + 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for j, (i, c, b) in enumerate(zip(g.image[gm].tolist(), g.classes[gm].tolist(), gwh))
    ]
    dt_anns = [
        {"id": j + 1, "image_id": i + 1, "category_id": c, "bbox": b, "score": s, "area": b[2] * b[3], "iscrowd": 0}
        for j, (i, c, b, s) in enumerate(zip(p.image[pm].tolist(), p.classes[pm].tolist(), pwh,
                                             p.scores[pm].tolist()))
    ]
    return (_coco({"images": images, "categories": cats, "annotations": gt_anns}),
            _coco({"images": list(images), "categories": cats, "annotations": dt_anns}))


def _flat(gt: GroundTruth, preds: Mapping[str, Predictions], num_classes: int) -> tuple[FlatBoxes, FlatBoxes]:
    g = flatten_ground_truth(gt, num_classes, add_no_finding=False)
    p = flatten_predictions(preds, g.image_ids, max_class=num_classes)
    return g, p.select(p.classes < num_classes)  # "No finding" is not a box category


def build_coco_objects(
    gt: GroundTruth, preds: Mapping[str, Predictions], num_classes: int
) -> tuple[COCO, COCO, list[str]]:
    """In-memory faster-coco-eval ground truth and results of all classes (image ids 1..N in ``gt`` order).

    Returns:
        (coco_gt, coco_dt, image_ids) where ``image_ids[k - 1]`` is COCO image ``k``.
    """
    g, p = _flat(gt, preds, num_classes)
    return (*_coco_pair(g, p, list(range(num_classes))), g.image_ids)


def _mean_valid(x: np.ndarray) -> float | None:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else None


def _bbox_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of paired ``[x, y, w, h]`` rows, as pycocotools' ``bbIou`` (``maskApi.c``) computes it, operation by
    operation (no crowd boxes): 0 where the boxes do not overlap."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    i = w * h
    u = d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3] - i
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), i / u, 0.0)


def _category_inputs(
    g: FlatBoxes, p: FlatBoxes, c: int, n_images: int, max_det: int
) -> tuple[tuple, tuple, list[list[Any]]]:
    """faster-coco-eval's C++ inputs for category ``c`` (COCO image ids 1..N): the ground truth and the results as
    ``Dataset.load_tuple`` states (per image, the annotation dicts with the fields its C++ reads: ``id``,
    ``area``, ``score``; ``iscrowd``/``ignore`` 0 by default) and the per-image IoU matrices ``COCOeval.evaluate``
    would compute (detections by descending score, stable, at most ``max_det``; ground truth in input order)."""
    gm, pm = g.classes == c, p.classes == c
    gb, gi = _xywh_array(g.boxes[gm]), g.image[gm]
    pb, pi, ps = _xywh_array(p.boxes[pm]), p.image[pm], p.scores[pm]
    g_area, p_area = gb[:, 2] * gb[:, 3], pb[:, 2] * pb[:, 3]
    # ids 1..N in input order, as COCO gives them; grouped by image, input order kept within an image
    g_ord = np.argsort(gi, kind="stable")
    g_anns = [{"id": j + 1, "area": a} for j, a in zip(g_ord.tolist(), g_area[g_ord].tolist())]
    p_ord = np.argsort(pi, kind="stable")
    p_anns = [{"id": j + 1, "score": s, "area": a}
              for j, s, a in zip(p_ord.tolist(), ps[p_ord].tolist(), p_area[p_ord].tolist())]

    def state(image: np.ndarray, anns: list[dict]) -> tuple:
        starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]]) if len(image) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(image)]
        entries = [(float(image[a] + 1), float(c), anns[a:b]) for a, b in zip(starts.tolist(), ends.tolist())]
        return (len(entries), entries)

    gt_state, dt_state = state(gi[g_ord], g_anns), state(pi[p_ord], p_anns)
    ious: list[list[Any]] = [[[]] for _ in range(n_images)]
    # detections of each image by descending score (stable), the first max_det; only images with both kinds
    d_ord = np.lexsort((-ps, pi))
    d_img = pi[d_ord]
    d_first = np.searchsorted(d_img, d_img, side="left")
    d_ord = d_ord[np.arange(len(d_ord)) - d_first < max_det]
    d_img = pi[d_ord]
    n_g = np.bincount(gi, minlength=n_images)
    n_d = np.bincount(d_img, minlength=n_images)
    both = np.flatnonzero((n_g > 0) & (n_d > 0))
    if len(both):
        keep = (n_g[d_img] > 0)
        d_ord, d_img = d_ord[keep], d_img[keep]
        g_sorted = g_ord  # ground truth grouped by image, input order within
        g_start = np.r_[0, np.cumsum(n_g)][:-1]
        # pairs (detection, ground truth) of each image, detection-major, as a (D, G) matrix in row order
        reps = n_g[d_img]
        d_rep = np.repeat(d_ord, reps)
        offs = np.arange(len(d_rep)) - np.repeat(np.cumsum(reps) - reps, reps)
        g_rep = g_sorted[g_start[np.repeat(d_img, reps)] + offs]
        iou = _bbox_iou(pb[d_rep], gb[g_rep])
        sizes = n_d[both] * n_g[both]
        for k, block in zip(both.tolist(), np.split(iou, np.cumsum(sizes)[:-1])):
            ious[k] = [block.reshape(int(n_d[k]), int(n_g[k]))]
    return gt_state, dt_state, ious


def _xywh_array(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).reshape(-1, 4)


def coco_eval_arrays(
    gt: GroundTruth, preds: Mapping[str, Predictions], num_classes: int, iou_thrs: Sequence[float], workers: int = 1
) -> tuple[np.ndarray, np.ndarray, Any]:
    """COCOeval's accumulated ``precision`` [T, R, K, A, M] and ``recall`` [T, K, A, M] (-1 where undefined) at
    ``iou_thrs``, category by category.

    COCO's bbox evaluation with categories is separable: matching, ``maxDets`` (per image *and* category) and the
    accumulation never mix categories, so evaluating each category alone gives the same arrays as one run over
    all, while only one category's boxes are held as Python objects at a time. A category without ground truth is
    -1 throughout, as in pycocotools.

    Each category goes straight to faster-coco-eval's C++ ``COCOevalEvaluateAccumulate`` (the matching and the
    accumulation of ``COCOeval_faster.evaluate``), with the inputs its Python ``evaluate`` would prepare from COCO
    objects built from arrays here instead (:func:`_category_inputs`; the IoUs with pycocotools' box formula):
    building a million annotation dicts with every COCO field, indexing them and handing them over one by one was
    most of the time at 15,000 images. ``tests/test_metric_coco.py`` holds the result equal to pycocotools.
    With ``workers > 1`` the categories are shared among that many forked processes (where the platform forks; the
    same arrays, in less wall time on several cores); the default, 1, stays in this process (the training evaluator,
    which may hold a GPU context, keeps it).

    Returns:
        (precision, recall, params) with ``params`` the evaluation parameters (area labels, maxDets, recThrs).
    """
    g, p = _flat(gt, preds, num_classes)
    n = len(g.image_ids)
    params = Params(iouType="bbox")
    params.iouThrs = np.asarray(iou_thrs, np.float64)
    params.imgIds = list(range(1, n + 1))
    params.maxDets = sorted(params.maxDets)
    t, r, a, m = len(params.iouThrs), len(params.recThrs), len(params.areaRng), len(params.maxDets)
    precision = np.full((t, r, num_classes, a, m), -1.0)
    recall = np.full((t, num_classes, a, m), -1.0)
    has_gt = np.bincount(g.classes, minlength=num_classes) > 0 if len(g.classes) else np.zeros(num_classes, bool)
    cats = np.flatnonzero(has_gt[:num_classes]).tolist()
    global _SHARED
    _SHARED = (g, p, n, params)
    try:
        if workers > 1 and len(cats) > 1 and "fork" in multiprocessing.get_all_start_methods():
            # the largest categories first, so that the workers finish together; children inherit the arrays (fork)
            cats.sort(key=lambda c: -int((p.classes == c).sum()))
            with multiprocessing.get_context("fork").Pool(min(workers, len(cats))) as pool:
                results = list(pool.imap_unordered(_evaluate_category, cats))
        else:
            results = [_evaluate_category(c) for c in cats]
    finally:
        _SHARED = None
    for c, prec, rec in results:
        precision[:, :, c] = prec
        recall[:, c] = rec
    return precision, recall, params


#: (ground truth, predictions, number of images, params) of the running :func:`coco_eval_arrays`, for its workers
_SHARED: tuple | None = None


def _evaluate_category(c: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Category ``c`` of the running :func:`coco_eval_arrays` through faster-coco-eval's C++: (c, precision
    [T, R, A, M], recall [T, A, M])."""
    g, p, n, params = _SHARED
    gt_state, dt_state, ious = _category_inputs(g, p, c, n, params.maxDets[-1])
    params.catIds = [c]
    gt_ds, dt_ds = _C.Dataset(), _C.Dataset()
    gt_ds.load_tuple(gt_state)
    dt_ds.load_tuple(dt_state)
    ev = _C.COCOevalEvaluateAccumulate(params, ious, gt_ds, dt_ds, params.imgIds, [c], True)
    return c, np.asarray(ev["precision"])[:, :, 0], np.asarray(ev["recall"])[:, 0]


def coco_metrics(
    gt: GroundTruth,
    preds: Mapping[str, Predictions],
    num_classes: int,
    extra_iou_thr: float = 0.4,
    workers: int = 1,
) -> dict[str, Any]:
    """COCO numbers of box predictions, as fractions in [0, 1] (None where undefined).

    Args:
        gt: image_id -> (boxes xyxy, classes) finding boxes only.
        preds: image_id -> Predictions; the No-finding class ``num_classes`` is ignored.
        num_classes: the number of finding classes.
        extra_iou_thr: the threshold of the extra 101-point AP (``coco_mAP40`` for 0.4).
        workers: processes sharing the categories (:func:`coco_eval_arrays`).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "coco_mAP40",
        "AP_per_class": {class_id: AP@[.5:.95]}, "AP40_per_class": {class_id: AP at extra_iou_thr}}`` (key names
        follow ``extra_iou_thr``); the twelve ``STATS_KEYS`` are pycocotools' ``summarize()`` stats (None for -1).
    """
    extra_name = f"coco_mAP{round(extra_iou_thr * 100):d}"
    extra_per_class = f"AP{round(extra_iou_thr * 100):d}_per_class"
    default_thrs = np.linspace(0.5, 0.95, 10)  # COCO's (pycocotools' Params.setDetParams)
    precision, recall, params = coco_eval_arrays(gt, preds, num_classes,
                                                 np.concatenate([[extra_iou_thr], default_thrs]), workers=workers)
    std, std_r = precision[1:], recall[1:]  # T index 0 is the extra threshold
    area = {lbl: i for i, lbl in enumerate(params.areaRngLbl)}
    m100 = len(params.maxDets) - 1
    t50, t75 = np.where(np.isclose(default_thrs, 0.5))[0], np.where(np.isclose(default_thrs, 0.75))[0]
    out: dict[str, Any] = {
        "AP": _mean_valid(std[:, :, :, area["all"], m100]),
        "AP50": _mean_valid(std[t50, :, :, area["all"], m100]),
        "AP75": _mean_valid(std[t75, :, :, area["all"], m100]),
        "APs": _mean_valid(std[:, :, :, area["small"], m100]),
        "APm": _mean_valid(std[:, :, :, area["medium"], m100]),
        "APl": _mean_valid(std[:, :, :, area["large"], m100]),
        "AR1": _mean_valid(std_r[:, :, area["all"], 0]),
        "AR10": _mean_valid(std_r[:, :, area["all"], 1]),
        "AR100": _mean_valid(std_r[:, :, area["all"], m100]),
        "ARs": _mean_valid(std_r[:, :, area["small"], m100]),
        "ARm": _mean_valid(std_r[:, :, area["medium"], m100]),
        "ARl": _mean_valid(std_r[:, :, area["large"], m100]),
        extra_name: _mean_valid(precision[0, :, :, area["all"], m100]),
    }
    out["AP_per_class"] = {c: _mean_valid(std[:, :, c, area["all"], m100]) for c in range(num_classes)}
    out[extra_per_class] = {c: _mean_valid(precision[0, :, c, area["all"], m100]) for c in range(num_classes)}
    return out


def summary_in_percent(metrics: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """detectron2's ``COCOEvaluator`` shape: AP, AP50, ... and ``AP-<class>`` in percent, NaN where undefined."""

    def pct(v: float | None) -> float:
        return float("nan") if v is None else 100.0 * float(v)

    out = {k: pct(metrics[k]) for k in SUMMARY_KEYS}
    out.update({f"AP-{name}": pct(metrics["AP_per_class"][c]) for c, name in enumerate(class_names)})
    return out
