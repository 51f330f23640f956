"""Agreement between readers: each reader scored against the other readers of the same images, the human baseline,
pairwise Cohen's kappa on normal/abnormal, and the outlier readers.

**A reader against the others** (:func:`reader_scores`). On every image a reader read together with at least one
other reader, the ground truth is the fusion of the *other* readers' boxes (:func:`detx.data.fusion.fuse_readers`,
WBF at IoU 0.4 by default; the image is normal when they drew nothing), and the reader's "submission" is its own
boxes, each with confidence 1, plus ``<nf> 1 0 0 1 1`` on each image where it drew no box. That is scored with
the challenge metric (:func:`detx.evaluation.vinbigdata.vinbigdata_map`: VOC matching at IoU > 0.4, "No finding"
a class, the mean over the classes with ground truth) and gives ``mAP40_vs_others``.

**Ties.** Every box of a reader has the same confidence, so a reader is one operating point and the order of its
tied detections, which the ranking would otherwise take from the file, must not decide the score. A class's AP is
therefore the area the all-point precision envelope encloses when the tied detections are taken together (as
``sklearn.metrics.average_precision_score`` does with tied scores): precision x recall over the reader's images,
where the VOC matching (each box to the single highest-IoU ground-truth box, each ground-truth box taken once)
counts the true positives. A reader identical to the others' fusion scores 1; one who draws nothing where they
do scores 0 on those classes.

**The human baseline** is the mean of ``mAP40_vs_others`` over the readers (:func:`human_baseline`): what a
radiologist scores on the challenge metric against their colleagues, on the user's own images.

**Outliers** (:func:`robust_outliers`): the robust z-score of ``mAP40_vs_others``, z = 0.6745 (x - median) / MAD
with MAD the median absolute deviation from the median; where MAD is 0, z = (x - median) / (1.2533 MeanAD) with
MeanAD the mean absolute deviation from the median; a reader is an outlier when z < -3.5 (only the low side: the
readers who disagree). With fewer than 4 scored readers, or when every score is the same, no one is flagged.

**Kappa** (:func:`pairwise_kappa`): for every pair of readers who read images in common, Cohen's kappa of their
normal/abnormal calls there (abnormal: the reader drew a box); undefined (None) when chance agreement is 1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import NO_FINDING
from detx.core.errors import InputError
from detx.core.predictions import WHOLE_IMAGE_BOX, Predictions
from detx.data.fusion import fuse_box_groups
from detx.data.readers import (
    BOX_COLUMNS,
    image_panels,
    reader_ids,
    reader_panels,
    reader_sort_key,
    require_reader_ids,
)
from detx.evaluation.matching import flatten_ground_truth, flatten_predictions, match_detections
from detx.evaluation.reader_styles import STYLE_RULE, ReaderStyles, reader_styles
from detx.evaluation.vinbigdata import map_key

logger = logging.getLogger(__name__)

__all__ = [
    "ReaderScore", "ReaderAgreement", "reader_scores", "reader_agreement", "human_baseline", "robust_z",
    "robust_outliers", "cohen_kappa", "pairwise_kappa", "operating_point_ap", "readers_verdict",
]

#: a reader is an outlier when its robust z-score is below this
OUTLIER_Z = -3.5
#: with fewer scored readers than this, no one is flagged
MIN_READERS_FOR_OUTLIERS = 4
OUTLIER_RULE = ("robust z-score of mAP_vs_others: z = 0.6745 (x - median) / MAD (MAD = median absolute deviation "
                "from the median; where MAD is 0: z = (x - median) / (1.2533 x mean absolute deviation from the "
                f"median)); outlier when z < {OUTLIER_Z} (low side only); no one is flagged with fewer than "
                f"{MIN_READERS_FOR_OUTLIERS} scored readers or when all scores are equal")


def _subset(table: pd.DataFrame, mask: Any) -> pd.DataFrame:
    out = table[mask].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def operating_point_ap(result: Mapping[str, Any]) -> dict[int, float | None]:
    """AP per class of a :func:`vinbigdata_map` result whose detections all share one confidence: precision x
    recall after the last detection (None where the class has no ground truth, 0 where nothing was predicted)."""
    out: dict[int, float | None] = {}
    for c, ap in result["AP_per_class"].items():
        if ap is None:
            out[c] = None
            continue
        curve = result["curves"].get(c)
        if curve is None or len(curve["precision"]) == 0:
            out[c] = 0.0
        else:
            out[c] = float(curve["precision"][-1] * curve["recall"][-1])
    return out


@dataclass
class ReaderScore:
    """One reader against the fusion of the others: ``mAP`` (None when it shares no image with another reader),
    ``ap_per_class`` (class id -> AP, None without ground truth; id ``num_classes`` is "No finding") and the
    number of images scored."""

    rad_id: str
    images: int
    mAP: float | None
    ap_per_class: dict[int, float | None] = field(default_factory=dict)


def _known(table: pd.DataFrame, image_ids: Iterable[str] | None) -> pd.DataFrame:
    """The rows of known readers (of ``image_ids`` when given)."""
    mask = (table["rad_id"].astype(str) != "").to_numpy()
    if image_ids is not None:
        mask = mask & table["image_id"].isin(set(map(str, image_ids))).to_numpy()
    return _subset(table, mask)


#: separates an image id from the left-out reader in the keys of :func:`reader_cases`
_KEY_SEP = "\x1f"


@dataclass
class ReaderCases:
    """Every (reader, image) case of :func:`reader_cases`: ``gt[key]`` the fusion of the other readers' boxes,
    ``preds[key]`` the reader's own boxes (confidence 1; its No-finding call where it drew nothing), keys
    ``image_id + "\\x1f" + rad_id``; ``images[rad_id]`` the images it is scored on."""

    num_classes: int
    gt: dict[str, tuple[np.ndarray, np.ndarray]]
    preds: dict[str, Predictions]
    images: dict[str, list[str]]

    _counts: dict[float, tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False)

    def counts(self, iou_thr: float) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray]:
        """(key -> row, true positives, predictions, ground-truth boxes), each a (cases, classes + 1) count matrix:
        every case matched once with the challenge metric's VOC matching (:func:`match_detections`; a case is an
        image of the metric, its No-finding box added when the others drew nothing)."""
        if iou_thr not in self._counts:
            keys = list(self.gt)
            n_cls = self.num_classes + 1
            g = flatten_ground_truth(self.gt, self.num_classes, add_no_finding=True)
            p = flatten_predictions({k: self.preds[k] for k in keys}, g.image_ids, max_class=self.num_classes)
            tp = np.zeros((len(keys), n_cls), np.int64)
            n_pred = np.zeros((len(keys), n_cls), np.int64)
            n_gt = np.zeros((len(keys), n_cls), np.int64)
            np.add.at(n_gt, (g.image, g.classes), 1)
            np.add.at(n_pred, (p.image, p.classes), 1)
            for c in range(n_cls):
                gi, pi = np.flatnonzero(g.classes == c), np.flatnonzero(p.classes == c)
                if len(gi) and len(pi):
                    m = match_detections(g.boxes[gi], g.image[gi], p.boxes[pi], p.scores[pi], p.image[pi], iou_thr)
                    np.add.at(tp[:, c], p.image[pi][m.order][m.tp], 1)
            self._counts[iou_thr] = ({k: i for i, k in enumerate(g.image_ids)}, tp, n_pred, n_gt)
        return self._counts[iou_thr]

    def score(self, keys: Iterable[str], iou_thr: float) -> tuple[float | None, dict[int, float | None]]:
        """(mAP, AP per class) of the pooled cases ``keys``. Every box has confidence 1, so a class's AP is the
        operating point's precision x recall (ties taken together, :func:`operating_point_ap`): sums of the cases'
        counts, the same numbers :func:`vinbigdata_map` gives on those cases, without matching them again."""
        index, tp, n_pred, n_gt = self.counts(iou_thr)
        rows = np.array([index[k] for k in keys], dtype=np.int64)
        if not len(rows):
            return None, {}
        t, n_p, n_g = tp[rows].sum(axis=0), n_pred[rows].sum(axis=0), n_gt[rows].sum(axis=0)
        ap: dict[int, float | None] = {}
        for c in range(len(t)):
            if n_g[c] == 0:
                ap[c] = None
            elif n_p[c] == 0:
                ap[c] = 0.0
            else:
                ap[c] = float((t[c] / n_p[c]) * (t[c] / n_g[c]))
        valid = [v for v in ap.values() if v is not None]
        return (float(np.mean(valid)) if valid else None), ap


def reader_cases(
    table: pd.DataFrame,
    fusion: str = "wbf",
    fusion_iou_thr: float = 0.4,
    image_ids: Iterable[str] | None = None,
) -> ReaderCases:
    """Each reader on each image it read with another reader, against the fusion of those others (module docstring).
    The others' boxes of all the cases are fused at once (:func:`detx.data.fusion.fuse_box_groups`: the boxes
    :func:`detx.data.fusion.fuse_readers` gives); a case where they drew nothing has an empty ground truth."""
    classes = tuple(table.attrs.get("classes") or ())
    if not classes:
        raise InputError("reader_scores needs the class names (a table read by detx.data.readers)")
    k = len(classes)
    known = _known(table, image_ids)
    rads = known["rad_id"].astype(str).to_numpy()
    images = known["image_id"].astype(str).to_numpy()
    codes, uniques = pd.factorize(images)  # integer image codes: set operations by indexing, not string compares
    rad_codes, rad_names = pd.factorize(rads)
    n_img = len(uniques)
    read = np.zeros((n_img, len(rad_names)), bool)
    read[codes, rad_codes] = True
    shared = read.sum(axis=1) >= 2
    is_finding = (known["class_name"] != NO_FINDING).to_numpy()
    boxes = known[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    cids = known["class_id"].to_numpy(dtype=np.int64)
    # the others' finding boxes of every (image, left-out reader): each finding row once per other reader
    rows_f = np.flatnonzero(is_finding & shared[codes])
    case_img, case_rad = np.nonzero(read & shared[:, None])
    parts = []
    for j in range(len(rad_names)):
        on = read[codes[rows_f], j] & (rad_codes[rows_f] != j)
        parts.append((rows_f[on], np.full(int(on.sum()), j)))
    src = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    left_out = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    key_of = np.char.add(np.char.add(images.astype(str), _KEY_SEP), rad_names.astype(str)[rad_codes]) \
        if len(images) else np.zeros(0, str)
    empty = (np.zeros((0, 4)), np.zeros(0, np.int64))
    keys = np.char.add(np.char.add(np.asarray(uniques, dtype=str)[case_img], _KEY_SEP),
                       rad_names.astype(str)[case_rad]) if len(case_img) else np.zeros(0, str)
    gt: dict[str, tuple[np.ndarray, np.ndarray]] = dict.fromkeys(keys.tolist(), empty)
    if len(src):
        # one set per (case, class); each case's boxes normalized by their largest x and y, as fuse_readers does
        case_code = codes[src].astype(np.int64) * len(rad_names) + left_out
        cls = cids[src]
        group = case_code * (k + 1) + cls
        b = boxes[src]
        _, inv = np.unique(case_code, return_inverse=True)
        w = np.maximum(np.zeros(inv.max() + 1), 1e-6)
        h = w.copy()
        np.maximum.at(w, inv, np.maximum(b[:, 0], b[:, 2]))
        np.maximum.at(h, inv, np.maximum(b[:, 1], b[:, 3]))
        scale = np.stack([w[inv], h[inv], w[inv], h[inv]], axis=1)
        # where the others are one reader, their boxes are one opinion and stay as they are (as in fuse_readers)
        single = (read.sum(axis=1)[codes[src]] - 1) == 1
        g1, f1 = fuse_box_groups(group[~single], b[~single], scale[~single], fusion, fusion_iou_thr)
        g2, f2 = fuse_box_groups(group[single], b[single], scale[single], "none", fusion_iou_thr)
        g, fused = np.concatenate([g1, g2]), np.concatenate([f1, f2]).reshape(-1, 4)
        order = np.argsort(g, kind="stable")
        g, fused = g[order], fused[order]
        case_of = g // (k + 1)
        f_cls = g % (k + 1)
        starts = np.flatnonzero(np.r_[True, case_of[1:] != case_of[:-1]])
        ends = np.r_[starts[1:], len(case_of)]
        img_names = np.asarray(uniques, dtype=str)
        rad_str = rad_names.astype(str)
        for s0, s1 in zip(starts, ends):
            c = int(case_of[s0])
            gt[img_names[c // len(rad_names)] + _KEY_SEP + rad_str[c % len(rad_names)]] = (fused[s0:s1], f_cls[s0:s1])
    mine = np.flatnonzero(is_finding & shared[codes])
    by_key = pd.Series(mine).groupby(key_of[mine]).indices if len(mine) else {}
    preds = {}
    nf = Predictions([WHOLE_IMAGE_BOX], [1.0], [k])
    for key in gt:
        rows = by_key.get(key)
        if rows is None:  # the reader drew nothing: its "No finding" call
            preds[key] = nf
        else:
            idx = mine[rows]
            preds[key] = Predictions(boxes[idx], np.ones(len(idx)), cids[idx])
    per_reader: dict[str, list[str]] = {}
    for key in keys.tolist():
        img, rad = key.split(_KEY_SEP)
        per_reader.setdefault(rad, []).append(img)
    return ReaderCases(k, gt, preds, {r: sorted(v) for r, v in per_reader.items()})


def reader_scores(
    table: pd.DataFrame,
    iou_thr: float = 0.4,
    fusion: str = "wbf",
    fusion_iou_thr: float | None = None,
    image_ids: Iterable[str] | None = None,
    cases: ReaderCases | None = None,
) -> dict[str, ReaderScore]:
    """Each reader's challenge metric against the fusion of the other readers of its images (module docstring).

    Args:
        table: normalized reader table (:mod:`detx.data.readers`); rows with an unknown reader are left out.
        iou_thr: the metric's matching IoU.
        fusion: how the other readers' boxes become one ground truth: "wbf", "nms" or "none".
        fusion_iou_thr: the fusion's IoU (default ``iou_thr``).
        image_ids: score only these images (default: all).
        cases: :func:`reader_cases` already computed (then ``fusion`` and ``image_ids`` are its own).

    Returns:
        rad_id -> :class:`ReaderScore`, readers in natural order.
    """
    fusion_iou_thr = iou_thr if fusion_iou_thr is None else fusion_iou_thr
    if cases is None:
        cases = reader_cases(table, fusion, fusion_iou_thr, image_ids)
    out: dict[str, ReaderScore] = {}
    for rad in reader_ids(_known(table, image_ids)):
        imgs = cases.images.get(rad, [])
        if not imgs:
            out[rad] = ReaderScore(rad, 0, None)
            continue
        m, ap = cases.score((i + _KEY_SEP + rad for i in imgs), iou_thr)
        out[rad] = ReaderScore(rad, len(imgs), m, ap)
    return out


def pooled_baseline(cases: ReaderCases, image_ids: Iterable[str], iou_thr: float = 0.4) -> dict[str, Any]:
    """The honest human baseline on ``image_ids``: every reader of each image scored against the fusion of its
    co-readers, all (reader, image) cases pooled into one challenge metric (so each image weighs the same, whoever
    read it). ``{"mAP40": x or None, "images": n, "cases": n}`` (the key follows ``iou_thr``)."""
    wanted = set(map(str, image_ids))
    keys = [k for k in cases.gt if k.split(_KEY_SEP, 1)[0] in wanted]
    m, _ = cases.score(keys, iou_thr)
    return {map_key(iou_thr): m, "images": len({k.split(_KEY_SEP, 1)[0] for k in keys}), "cases": len(keys)}


def human_baseline(
    table: pd.DataFrame,
    iou_thr: float = 0.4,
    fusion: str = "wbf",
    fusion_iou_thr: float | None = None,
    image_ids: Iterable[str] | None = None,
) -> dict[str, Any] | None:
    """The human baseline on ``image_ids`` from one fusion of every reader's co-readers (:func:`reader_cases`):
    ``{"mAP40_mean", "n_readers", "per_reader"}``, the readers' mean ``mAP40_vs_others`` (the old figure), then the
    honest one, ``{"mAP40", "images", "cases", "rule"}``: every (reader, image) case of the images with a box (by
    anyone) pooled into one challenge metric (:func:`pooled_baseline`, ``readers.json["human_baseline"]``'s rule,
    :data:`BASELINE_RULE`; None without such an image). Key names follow ``iou_thr``. None when the table has no
    reader ids or no image read by two readers."""
    if not reader_ids(table):
        return None
    fusion_iou_thr = iou_thr if fusion_iou_thr is None else fusion_iou_thr
    cases = reader_cases(table, fusion, fusion_iou_thr, image_ids)
    scores = reader_scores(table, iou_thr, fusion, fusion_iou_thr, image_ids, cases=cases)
    per_reader = {r: s.mAP for r, s in scores.items() if s.mAP is not None}
    if not per_reader:
        return None
    known = _known(table, image_ids)
    with_box = pd.unique(known.loc[(known["class_name"] != NO_FINDING).to_numpy(), "image_id"].astype(str))
    return {f"{map_key(iou_thr)}_mean": float(np.mean(list(per_reader.values()))), "n_readers": len(per_reader),
            "per_reader": per_reader, **pooled_baseline(cases, with_box, iou_thr), "rule": BASELINE_RULE}


def robust_z(values: Mapping[str, float]) -> dict[str, float]:
    """The robust z-score of each value (module docstring); {} for no values, 0 for all when they are all equal."""
    names = list(values)
    x = np.asarray([values[n] for n in names], dtype=np.float64)
    if len(x) == 0:
        return {}
    med = float(np.median(x))
    dev = np.abs(x - med)
    mad = float(np.median(dev))
    if mad > 0:
        z = 0.6745 * (x - med) / mad
    else:
        mean_ad = float(np.mean(dev))
        z = (x - med) / (1.2533 * mean_ad) if mean_ad > 0 else np.zeros_like(x)
    return {n: float(v) for n, v in zip(names, z)}


def robust_outliers(values: Mapping[str, float], threshold: float = OUTLIER_Z,
                    min_readers: int = MIN_READERS_FOR_OUTLIERS) -> tuple[dict[str, float], list[str]]:
    """(robust z per reader, the readers with z < ``threshold``); nobody is flagged below ``min_readers`` values."""
    z = robust_z(values)
    if len(z) < min_readers:
        return z, []
    return z, sorted((n for n, v in z.items() if v < threshold), key=reader_sort_key)


def cohen_kappa(a: Iterable[int], b: Iterable[int]) -> float | None:
    """Cohen's kappa of two raters' binary calls on the same items; None when chance agreement is 1 (both
    raters always gave the same single answer) or there are no items."""
    a = np.asarray(list(a), dtype=bool)
    b = np.asarray(list(b), dtype=bool)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} and {len(b)} calls")
    if len(a) == 0:
        return None
    po = float(np.mean(a == b))
    pa, pb = float(a.mean()), float(b.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def abnormal_calls(table: pd.DataFrame) -> pd.DataFrame:
    """image_id x rad_id: 1 where the reader drew a box, 0 where it read the image and drew none, NaN where it did
    not read it (known readers only)."""
    known = _known(table, None)
    finding = (known["class_name"] != NO_FINDING).astype(np.int64)
    calls = finding.groupby([known["image_id"].astype(str), known["rad_id"].astype(str)]).max()
    wide = calls.unstack("rad_id")
    return wide[sorted(wide.columns, key=reader_sort_key)]


def pairwise_kappa(table: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa of every pair of readers on the images both read: columns ``rad_a, rad_b, images, kappa``."""
    wide = abnormal_calls(table)
    rows = []
    values = wide.to_numpy(dtype=np.float64)
    for (i, a), (j, b) in combinations(enumerate(wide.columns), 2):
        both = ~np.isnan(values[:, i]) & ~np.isnan(values[:, j])
        n = int(both.sum())
        if n:
            rows.append((a, b, n, cohen_kappa(values[both, i], values[both, j])))
    return pd.DataFrame(rows, columns=["rad_a", "rad_b", "images", "kappa"])


# ------------------------------------------------------------------------------------------ paired outliers
# A reader against its own co-readers, image by image: does it agree with them less than they agree with each other?

#: one-sided sign test level, divided by the number of readers tested (Bonferroni)
PAIRED_ALPHA = 0.05
#: and the mean paired difference must be at most minus this (an effect worth acting on, not just a significant one)
PAIRED_DELTA = 0.15
PAIRED_RULE = (
    "on every image with 3 or more readers and at least one box, the agreement of two readers is the F1 of their "
    "boxes (same class, IoU > {iou:g}, greedy one-to-one matching by IoU; 1 when neither drew a box); a reader's "
    "agreement is its mean F1 with its co-readers there, the co-readers' agreement their mean F1 with each other; "
    "d = the difference. A reader is an outlier when d < 0 on significantly more images than d > 0 (one-sided "
    f"sign test, p < {PAIRED_ALPHA:g} / the number of readers tested) and the mean d is at most -{PAIRED_DELTA:g}")


def pairwise_f1(table: pd.DataFrame, iou_thr: float = 0.4, min_readers: int = 3) -> pd.DataFrame:
    """The agreement of every pair of readers on every image with at least ``min_readers`` readers and one box:
    columns ``image_id, rad_a, rad_b, boxes_a, boxes_b, matched, f1`` (F1 = 2 matched / (boxes_a + boxes_b), 1 when
    both drew nothing; a match is a pair of boxes of one class with IoU > ``iou_thr``, taken greedily by IoU, each
    box at most once per pair of readers)."""
    known = _known(table, None)
    img_codes, images = pd.factorize(known["image_id"].astype(str).to_numpy())
    rads = reader_ids(known)
    rank = {r: k for k, r in enumerate(rads)}
    rcode = np.array([rank[r] for r in known["rad_id"].astype(str)], dtype=np.int64)
    finding = (known["class_name"] != NO_FINDING).to_numpy()
    n_img, n_rad = len(images), len(rads)
    boxes_per = np.zeros((n_img, n_rad), np.int64)
    np.add.at(boxes_per, (img_codes[finding], rcode[finding]), 1)
    read = np.zeros((n_img, n_rad), bool)
    read[img_codes, rcode] = True
    eligible = (read.sum(axis=1) >= min_readers) & (boxes_per.sum(axis=1) > 0)
    ii, rr = np.nonzero(read & eligible[:, None])
    reads = pd.DataFrame({"img": ii, "rad": rr})
    pairs = reads.merge(reads, on="img", suffixes=("_a", "_b"))
    pairs = pairs[pairs["rad_a"] < pairs["rad_b"]].reset_index(drop=True)
    # candidate box pairs: one class, one image, two readers
    sel = finding & eligible[img_codes]
    fb = pd.DataFrame({"img": img_codes[sel], "rad": rcode[sel], "cls": known["class_id"].to_numpy()[sel],
                       "box": np.arange(int(sel.sum()))})
    coords = known[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)[sel]
    cand = fb.merge(fb, on=["img", "cls"], suffixes=("_a", "_b"))
    cand = cand[cand["rad_a"] < cand["rad_b"]]
    a, b = coords[cand["box_a"].to_numpy()], coords[cand["box_b"].to_numpy()]
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    keep = iou > iou_thr
    cand = cand[keep].assign(iou=iou[keep]).sort_values(["img", "rad_a", "rad_b", "iou"],
                                                         ascending=[True, True, True, False], kind="stable")
    matched: dict[tuple[int, int, int], int] = {}
    used: set[tuple[int, int]] = set()
    for img, ra, rb, ba, bb in zip(cand["img"].to_numpy(), cand["rad_a"].to_numpy(), cand["rad_b"].to_numpy(),
                                   cand["box_a"].to_numpy(), cand["box_b"].to_numpy()):
        ka, kb = (int(ba), int(rb)), (int(bb), int(ra))  # a box is matched at most once per other reader
        if ka in used or kb in used:
            continue
        used.add(ka)
        used.add(kb)
        key = (int(img), int(ra), int(rb))
        matched[key] = matched.get(key, 0) + 1
    img_p, ra_p, rb_p = (pairs[c].to_numpy() for c in ("img", "rad_a", "rad_b"))
    m = np.array([matched.get((int(i), int(x), int(y)), 0) for i, x, y in zip(img_p, ra_p, rb_p)], dtype=np.int64)
    na, nb = boxes_per[img_p, ra_p], boxes_per[img_p, rb_p]
    total = na + nb
    f1 = np.where(total > 0, 2 * m / np.where(total > 0, total, 1), 1.0)
    rad_names = np.array(rads, dtype=object)
    return pd.DataFrame({"image_id": np.asarray(images, dtype=object)[img_p], "rad_a": rad_names[ra_p],
                         "rad_b": rad_names[rb_p], "boxes_a": na, "boxes_b": nb, "matched": m, "f1": f1})


def paired_agreement(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per image and reader, from :func:`pairwise_f1`: ``agreement`` (the reader's mean F1 with its co-readers),
    ``co_agreement`` (the co-readers' mean F1 with each other) and ``d`` = agreement - co_agreement."""
    cols = ["image_id", "rad_id", "agreement", "co_agreement", "d"]
    if not len(pairs):
        return pd.DataFrame(columns=cols)
    img, images = pd.factorize(pairs["image_id"].to_numpy())
    ra, rads = pd.factorize(np.concatenate([pairs["rad_a"].to_numpy(), pairs["rad_b"].to_numpy()]))
    n_img, n_rad = len(images), len(rads)
    f1 = pairs["f1"].to_numpy(dtype=np.float64)
    img2, f2 = np.concatenate([img, img]), np.concatenate([f1, f1])
    total = np.bincount(img, weights=f1, minlength=n_img)
    n_pairs = np.bincount(img, minlength=n_img)
    mine = np.zeros((n_img, n_rad))
    count = np.zeros((n_img, n_rad), np.int64)
    np.add.at(mine, (img2, ra), f2)
    np.add.at(count, (img2, ra), 1)
    ii, rr = np.nonzero(count)
    k_minus_1 = count[ii, rr]
    others = n_pairs[ii] - k_minus_1
    ok = others > 0
    ii, rr, k_minus_1, others = ii[ok], rr[ok], k_minus_1[ok], others[ok]
    agreement = mine[ii, rr] / k_minus_1
    co = (total[ii] - mine[ii, rr]) / others
    return pd.DataFrame({"image_id": np.asarray(images, dtype=object)[ii], "rad_id": np.asarray(rads, dtype=object)[rr],
                         "agreement": agreement, "co_agreement": co, "d": agreement - co})


def paired_outliers(per_image: pd.DataFrame, alpha: float = PAIRED_ALPHA,
                    delta: float = PAIRED_DELTA) -> tuple[pd.DataFrame, list[str]]:
    """Per reader from :func:`paired_agreement`: ``paired_images``, ``agreement_with_coreaders``,
    ``coreaders_agreement``, ``paired_diff`` (mean d), ``images_below`` / ``images_above`` (d < 0 / d > 0),
    ``sign_test_p`` (one-sided: P(at most images_above of the untied images | no difference)); and the outliers
    (the rule is :data:`PAIRED_RULE`)."""
    from scipy.special import bdtr  # the binomial CDF (scipy.stats takes seconds to import)

    cols = ["rad_id", "paired_images", "agreement_with_coreaders", "coreaders_agreement", "paired_diff",
            "images_below", "images_above", "sign_test_p"]
    if not len(per_image):
        return pd.DataFrame(columns=cols), []
    g = per_image.assign(below=per_image["d"] < -1e-12, above=per_image["d"] > 1e-12).groupby("rad_id")
    stats = pd.DataFrame({"paired_images": g.size(), "agreement_with_coreaders": g["agreement"].mean(),
                          "coreaders_agreement": g["co_agreement"].mean(), "paired_diff": g["d"].mean(),
                          "images_below": g["below"].sum().astype(np.int64),
                          "images_above": g["above"].sum().astype(np.int64)})
    untied = stats["images_below"] + stats["images_above"]
    stats["sign_test_p"] = np.where(untied > 0, bdtr(stats["images_above"], untied, 0.5), 1.0)
    stats = stats.reset_index()
    stats = stats.iloc[sorted(range(len(stats)), key=lambda i: reader_sort_key(stats["rad_id"].iat[i]))]
    level = alpha / max(len(stats), 1)
    flagged = stats[(stats["sign_test_p"] < level) & (stats["paired_diff"] <= -delta)]["rad_id"].tolist()
    return stats[cols].reset_index(drop=True), flagged


#: a panel gets its own human-baseline figure from this many abnormal images on; smaller ones are pooled
MIN_PANEL_ABNORMAL = 50
BASELINE_RULE = (
    "every reader of an image with at least one box (by anyone) and two or more readers, scored against the fusion "
    "of its co-readers' boxes, all (reader, image) cases pooled into one challenge metric (boxes at confidence 1: "
    "AP = precision x recall per class, mean over the classes with ground truth). Normal images are left out: there "
    "a reader's 'No finding' call scores 1 against colleagues who also saw nothing, which lifts readers who only "
    "read normal images to 1. Compare it with a model's mAP40 on the same images (tools/evaluate.py on those "
    "images): it is what a radiologist scores, on the images with findings, against the fused boxes of two others")


def _plain(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass
class ReaderAgreement:
    """Everything :func:`reader_agreement` finds; ``readers`` has one row per rad_id (see :meth:`to_dict`).

    ``human_baseline`` is the mean over the readers of ``mAP40_vs_others`` on all their images (kept for
    comparison; inflated where readers read only normal images); ``baseline`` is the honest one
    (:data:`BASELINE_RULE`), with ``baseline["per_panel"]``."""

    key: str
    iou_thr: float
    fusion: str
    fusion_iou_thr: float
    classes: tuple[str, ...]
    readers: pd.DataFrame
    ap_per_class: dict[str, dict[str, float | None]]
    class_mix: dict[str, dict[str, int]]
    kappa: pd.DataFrame
    outliers: list[str]
    human_baseline: float | None
    num_images: int
    num_images_shared: int
    baseline: dict[str, Any] = field(default_factory=dict)
    panels: list[dict[str, Any]] = field(default_factory=list)
    styles: ReaderStyles | None = None
    outliers_z: list[str] = field(default_factory=list)
    outliers_paired: list[str] = field(default_factory=list)
    unanimous_share: float | None = None
    images_abnormal: int = 0

    @property
    def score_column(self) -> str:
        """``mAP40_vs_others`` (the key follows the IoU threshold)."""
        return f"{self.key}_vs_others"

    @property
    def kappa_note(self) -> str | None:
        """Why every kappa is 1 when normal vs abnormal is unanimous on every image (VinBigData), else None."""
        if self.unanimous_share is None or self.unanimous_share < 1.0:
            return None
        return (f"normal vs abnormal is unanimous on every one of the {self.num_images_shared} images read by two or "
                "more readers (all drew a box or none did), so every defined kappa is 1 by construction: it measures "
                "nothing about the boxes (the Kaggle VinBigData train.csv is built that way); see the paired "
                "agreement and mAP40 columns instead")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, panels, the human baselines, style groups, the outlier rules and outliers, one entry
        per reader, kappas."""
        per_class = {f"AP{self.key[3:]}_{n}" for n in (*self.classes, NO_FINDING)} | {f"boxes_{n}" for n in self.classes}
        readers = []
        for rec in self.readers.to_dict("records"):
            entry = {c: _plain(v) for c, v in rec.items() if c not in per_class}
            entry["AP_per_class"] = self.ap_per_class.get(rec["rad_id"], {})
            entry["class_mix"] = self.class_mix.get(rec["rad_id"], {})
            readers.append(entry)
        scored = self.readers[self.score_column].dropna()
        st = self.styles
        return {
            "iou_thr": self.iou_thr, "fusion": self.fusion, "fusion_iou_thr": self.fusion_iou_thr,
            "classes": list(self.classes), "num_images": self.num_images,
            "num_images_shared": self.num_images_shared, "num_images_abnormal": self.images_abnormal,
            "num_readers": len(self.readers),
            "panels": _plain(self.panels),
            "human_baseline": {**_plain(self.baseline),
                               f"{self.key}_mean": self.human_baseline, "n_readers": int(len(scored)),
                               "mean_rule": f"mean over the readers of {self.score_column} on all the images they "
                                            "read, normal ones included (inflated where readers read only normal "
                                            "images; kept for comparison)",
                               "per_reader": {r: _plain(v) for r, v in
                                              zip(self.readers.loc[scored.index, "rad_id"], scored)}},
            "style_rule": STYLE_RULE, "style_relative_sizes": bool(st.relative) if st else False,
            "style_groups": _plain(st.groups) if st else [],
            "too_few_boxes": list(st.too_few_boxes) if st else [],
            "style_merge_heights": _plain(st.merge_heights) if st else [],
            "style_distances": ({r: {c: _plain(v) for c, v in row.items()} for r, row in
                                 st.distances.to_dict("index").items()} if st is not None and st.distances is not None
                                else {}),
            "outlier_rule": f"outlier by either rule. Paired: {PAIRED_RULE.format(iou=self.iou_thr)}. Across "
                            f"readers: {OUTLIER_RULE}",
            "outliers": list(self.outliers), "outliers_paired": list(self.outliers_paired),
            "outliers_z": list(self.outliers_z),
            "unanimous_share": self.unanimous_share, "kappa_note": self.kappa_note,
            "readers": readers,
            "kappa": [{k: _plain(v) for k, v in rec.items()} for rec in self.kappa.to_dict("records")],
        }


def reader_agreement(
    table: pd.DataFrame,
    iou_thr: float = 0.4,
    fusion: str = "wbf",
    fusion_iou_thr: float | None = None,
    image_ids: Iterable[str] | None = None,
    source: str = "the annotations",
    image_sizes: Mapping[str, tuple[float, float]] | None = None,
) -> ReaderAgreement:
    """Who the readers are and how much they agree (module docstring): per reader the images read, boxes per
    image, class mix, share of images called normal, ``mAP40_vs_others`` (overall and per class), its robust
    z-score, the paired comparison with its co-readers, the outlier flags, its drawing style and style group, and its
    image-weighted mean kappa with the others; the panels, the honest human baseline (overall and per panel), the
    style groups and the pairwise kappas.

    Args:
        image_sizes: image_id -> (width, height) of every image, for relative box sizes and positions (None: pixels).

    Raises:
        InputError: a table without reader ids (``source`` names the file), or no image read by two readers.
    """
    require_reader_ids(table, source, "reader agreement")
    fusion_iou_thr = iou_thr if fusion_iou_thr is None else fusion_iou_thr
    key = map_key(iou_thr)
    classes = tuple(table.attrs["classes"])
    names = [*classes, NO_FINDING]
    known = _known(table, image_ids)
    per_image = image_panels(known)
    if not (per_image["n_readers"] >= 2).any():
        raise InputError(f"{source}: no image was read by two readers, so there is no agreement to measure")
    cases = reader_cases(known, fusion, fusion_iou_thr)
    scores = reader_scores(known, iou_thr, fusion, fusion_iou_thr, cases=cases)
    col = f"{key}_vs_others"
    z, outliers_z = robust_outliers({r: s.mAP for r, s in scores.items() if s.mAP is not None})
    paired, outliers_paired = paired_outliers(paired_agreement(pairwise_f1(known, iou_thr)))
    outliers = sorted(set(outliers_z) | set(outliers_paired), key=reader_sort_key)
    kappa = pairwise_kappa(known)
    calls = abnormal_calls(known)
    shared_calls = calls[calls.notna().sum(axis=1) >= 2]
    unanimous = float((shared_calls.max(axis=1) == shared_calls.min(axis=1)).mean()) if len(shared_calls) else None
    styles = reader_styles(known, image_sizes)
    group_of = styles.group_of()
    st = styles.styles.set_index("rad_id")
    pr = paired.set_index("rad_id")

    # the honest baseline: abnormal images read by two or more, pooled; per panel where it has enough of them
    abnormal = per_image[per_image["abnormal"] & (per_image["n_readers"] >= 2)]
    panels = reader_panels(known, per_image)
    baseline = {**pooled_baseline(cases, abnormal["image_id"], iou_thr), "rule": BASELINE_RULE, "per_panel": []}
    big = [p for p in panels if p["abnormal_images"] >= MIN_PANEL_ABNORMAL and len(p["readers"]) >= 2]
    for p in big:
        ids = abnormal.loc[abnormal["panel"] == p["panel"], "image_id"]
        p["human_baseline"] = pooled_baseline(cases, ids, iou_thr)[key]
        baseline["per_panel"].append({"panel": p["panel"], "abnormal_images": len(ids), key: p["human_baseline"]})
    rest = abnormal.loc[~abnormal["panel"].isin({p["panel"] for p in big}), "image_id"]
    if len(rest) and big:
        baseline["per_panel"].append({"panel": "other panels", "panels": len(set(abnormal["panel"]) - {
            p["panel"] for p in big}), "abnormal_images": len(rest), key: pooled_baseline(cases, rest, iou_thr)[key]})

    abnormal_set = set(abnormal["image_id"])
    with_box = {}
    for rad in scores:
        imgs = [i for i in cases.images.get(rad, []) if i in abnormal_set]
        with_box[rad] = cases.score((i + _KEY_SEP + rad for i in imgs), iou_thr)[0] if imgs else None
    finding = known[known["class_name"] != NO_FINDING]
    rows = []
    ap_per_class: dict[str, dict[str, float | None]] = {}
    class_mix: dict[str, dict[str, int]] = {}
    for rad, s in scores.items():
        read = calls[rad].dropna()
        mine = finding[finding["rad_id"] == rad]
        counts = mine["class_name"].value_counts()
        class_mix[rad] = {c: int(counts.get(c, 0)) for c in classes}
        ap_per_class[rad] = {names[c]: v for c, v in s.ap_per_class.items()} if s.mAP is not None else {}
        pairs = kappa[((kappa["rad_a"] == rad) | (kappa["rad_b"] == rad)) & kappa["kappa"].notna()]
        kappa_mean = (float(np.average(pairs["kappa"].astype(float), weights=pairs["images"]))
                      if len(pairs) else None)
        row: dict[str, Any] = {
            "rad_id": rad, "images": int(len(read)), "images_scored": s.images, "boxes": int(len(mine)),
            "boxes_per_image": len(mine) / len(read) if len(read) else None,
            "normal_share": float((read == 0).mean()) if len(read) else None,
            col: s.mAP, f"{key}_with_box": with_box[rad], "robust_z": z.get(rad), "outlier": rad in outliers, "outlier_paired": rad in outliers_paired,
            "outlier_z": rad in outliers_z, "kappa_vs_others": kappa_mean,
            "style_group": group_of.get(rad, "too few boxes" if rad in styles.too_few_boxes else ""),
        }
        for c in ("paired_images", "agreement_with_coreaders", "coreaders_agreement", "paired_diff", "sign_test_p"):
            row[c] = pr[c].get(rad, np.nan) if len(pr) else np.nan
        for c in ("boxes_per_abnormal_image", "median_box_size_px", "median_box_area_px2", "median_box_size_rel",
                  "center_x", "center_y", "top_classes"):
            row[c] = st[c].get(rad, np.nan)
        for name in names:
            row[f"AP{key[3:]}_{name}"] = ap_per_class[rad].get(name)
        for name in classes:
            row[f"boxes_{name}"] = class_mix[rad][name]
        rows.append(row)
    readers = pd.DataFrame(rows)
    scored = readers[col].dropna()
    mean_baseline = float(scored.mean()) if len(scored) else None
    if outliers:
        logger.info("outlier readers: %s", ", ".join(outliers))
    return ReaderAgreement(key, float(iou_thr), fusion, float(fusion_iou_thr), classes, readers, ap_per_class,
                           class_mix, kappa, outliers, mean_baseline, int(len(per_image)),
                           int((per_image["n_readers"] >= 2).sum()), baseline=baseline, panels=panels,
                           styles=styles, outliers_z=outliers_z, outliers_paired=outliers_paired,
                           unanimous_share=unanimous, images_abnormal=int(per_image["abnormal"].sum()))


def readers_verdict(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the readers tool concludes about a reader CSV, in a few numbers, from its ``readers.json``
    (:meth:`ReaderAgreement.to_dict`): unanimity, the largest panel and how its images differ from everyone else's,
    the style groups, the outliers and the pooled human baseline. The demo report sets the synthetic readers' verdict
    beside the real VinBigData readers' (``detx/synthetic/vinbigdata_readers.json``, written by tools/real_stats.py).
    """
    n = int(report["num_images"])
    abnormal = int(report["num_images_abnormal"])
    panels = list(report.get("panels") or [])
    top = max(panels, key=lambda p: p["images"]) if panels else None
    rest_images = n - (top["images"] if top else 0)
    rest_abnormal = abnormal - (top["abnormal_images"] if top else 0)
    key = map_key(float(report["iou_thr"]))
    return {
        "readers": int(report["num_readers"]),
        "images": n,
        "abnormal_share": abnormal / n if n else None,
        "unanimous_share": report.get("unanimous_share"),
        "panels": len(panels),
        "largest_panel": top["panel"] if top else None,
        "largest_panel_image_share": top["images"] / n if top and n else None,
        "largest_panel_abnormal_share": top["abnormal_share"] if top else None,
        "others_abnormal_share": rest_abnormal / rest_images if rest_images else None,
        "style_groups": ["+".join(g["readers"]) for g in report.get("style_groups") or []],
        "too_few_boxes": len(report.get("too_few_boxes") or []),
        "outliers": list(report.get("outliers") or []),
        "human_baseline": (report.get("human_baseline") or {}).get(key),
        "human_baseline_images": (report.get("human_baseline") or {}).get("images"),
    }
