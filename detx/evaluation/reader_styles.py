"""How each reader draws, and which readers draw alike (style groups).

**Drawing style** (:func:`reader_styles`), per reader over its finding boxes: the class mix (share of its boxes in
each class), the box size (``sqrt(width x height)`` in original pixels; relative to the image,
``sqrt(box area / image area)``, where the image sizes are known), the boxes it draws on an image it calls abnormal,
and the position (median box centre; as a fraction of the image where sizes are known).

**Style groups** (:func:`style_groups`). Two readers are compared on two distributions: the class mix and the
box size (a histogram of ``log10`` size in :data:`SIZE_BINS` equal bins over a fixed range; relative sizes when the
image sizes are known, else pixels). Each distribution gets half a count added to every bin, and the distance of
two readers is the mean of the two Jensen-Shannon divergences (base 2, so in [0, 1] bits), each minus what sampling
noise alone gives on average between two samples of that many boxes from one distribution,
``(bins - 1) / (8 ln 2) x (1/n_a + 1/n_b)`` (the chi-square approximation of the plug-in divergence), floored at 0:
a reader with 70 boxes is not set apart because 70 boxes are noisy. The readers are clustered by average linkage
(scipy) and the tree is cut at :data:`STYLE_CUT` bits: groups merge while their mean distance is below it. Readers
with fewer than :data:`MIN_STYLE_BOXES` boxes are not compared (``too_few_boxes``). Position is reported, not used:
on a chest film where a box lies follows from its class.

On the Kaggle VinBigData train.csv this puts R8, R9 and R10 in a group of their own (their pairwise distances are
0.008-0.017 bits, against 0.037-0.147 to every other reader), R1..R7 in ``too_few_boxes`` (R2 drew 3 boxes, the
others none), and splits R11..R17 by box size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from detx.core.classes import NO_FINDING
from detx.data.readers import BOX_COLUMNS, reader_ids, reader_sort_key

logger = logging.getLogger(__name__)

__all__ = ["MIN_STYLE_BOXES", "STYLE_CUT", "SIZE_BINS", "ReaderStyles", "reader_styles", "style_distance",
           "style_groups", "js_divergence"]

#: readers with fewer finding boxes than this are listed in ``too_few_boxes`` and not grouped
MIN_STYLE_BOXES = 50
#: the average-linkage tree is cut at this distance (bits of noise-corrected Jensen-Shannon divergence)
STYLE_CUT = 0.05
#: log-size histogram: this many equal bins of log10(size) between these bounds (pixels, or a fraction of the image)
SIZE_BINS = 12
SIZE_RANGE_PX = (8.0, 4000.0)
SIZE_RANGE_REL = (0.003, 1.0)
STYLE_RULE = (f"distance of two readers = mean of the Jensen-Shannon divergences (base 2, half a count added to each "
              f"bin) of their class mixes and of their log10 box-size histograms ({SIZE_BINS} bins; relative to the "
              "image when --meta gives the sizes), each minus the divergence sampling noise gives on average, "
              "(bins - 1) / (8 ln 2) x (1/n_a + 1/n_b), floored at 0; average-linkage clustering cut at "
              f"{STYLE_CUT:g} bits; readers with fewer than {MIN_STYLE_BOXES} boxes are listed in too_few_boxes")


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count or probability vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def _noise(bins: int, n_a: int, n_b: int) -> float:
    return (bins - 1) / (8 * np.log(2)) * (1 / n_a + 1 / n_b)


def style_distance(class_a: np.ndarray, class_b: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> float:
    """The style distance of two readers from their class counts and size-histogram counts (module docstring)."""
    n_a, n_b = int(np.sum(class_a)), int(np.sum(class_b))
    dc = js_divergence(np.asarray(class_a) + 0.5, np.asarray(class_b) + 0.5) - _noise(len(class_a), n_a, n_b)
    ds = js_divergence(np.asarray(size_a) + 0.5, np.asarray(size_b) + 0.5) - _noise(len(size_a), n_a, n_b)
    return 0.5 * max(0.0, dc) + 0.5 * max(0.0, ds)


@dataclass
class ReaderStyles:
    """Per-reader style table (``styles``, one row per reader), the counts behind it, and the groups."""

    styles: pd.DataFrame
    class_counts: dict[str, np.ndarray]
    size_counts: dict[str, np.ndarray]
    box_sizes: dict[str, np.ndarray]
    relative: bool
    classes: tuple[str, ...]
    groups: list[dict[str, Any]] = field(default_factory=list)
    too_few_boxes: list[str] = field(default_factory=list)
    distances: pd.DataFrame | None = None
    merge_heights: list[float] = field(default_factory=list)

    def group_of(self) -> dict[str, str]:
        """rad_id -> group name ("S1", ...); readers in ``too_few_boxes`` are absent."""
        return {r: g["name"] for g in self.groups for r in g["readers"]}


def reader_styles(table: pd.DataFrame, image_sizes: Mapping[str, tuple[float, float]] | None = None) -> ReaderStyles:
    """Each known reader's drawing style (module docstring): columns ``rad_id, boxes, abnormal_images,
    boxes_per_abnormal_image, median_box_size_px, median_box_area_px2, median_box_size_rel`` (NaN without sizes),
    ``center_x, center_y`` (fractions of the image with sizes, else pixels), ``top_classes``.

    Args:
        table: normalized reader table (:mod:`detx.data.readers`).
        image_sizes: image_id -> (width, height) in original pixels for every image of ``table``, or None.
    """
    classes = tuple(table.attrs.get("classes") or ())
    rads = reader_ids(table)
    known = table[table["rad_id"].astype(str) != ""]
    finding = known[(known["class_name"] != NO_FINDING).to_numpy()]
    box = finding[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    size = np.sqrt(w * h)
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    relative = image_sizes is not None
    if relative:
        wh = np.array([image_sizes[i] for i in finding["image_id"].astype(str)], dtype=np.float64).reshape(-1, 2)
        rel = size / np.sqrt(wh[:, 0] * wh[:, 1])
        cx, cy = cx / wh[:, 0], cy / wh[:, 1]
    else:
        rel = np.full(len(size), np.nan)
    lo, hi = SIZE_RANGE_REL if relative else SIZE_RANGE_PX
    edges = np.linspace(np.log10(lo), np.log10(hi), SIZE_BINS + 1)
    bins = np.clip(np.searchsorted(edges, np.log10(np.clip(rel if relative else size, lo, hi)), side="right") - 1,
                   0, SIZE_BINS - 1)
    rad_of_box = finding["rad_id"].astype(str).to_numpy()
    rank = {r: k for k, r in enumerate(rads)}
    rcode = np.array([rank[r] for r in rad_of_box], dtype=np.int64)
    n_r, n_c = len(rads), max(len(classes), 1)
    cls = finding["class_id"].to_numpy(dtype=np.int64)
    class_counts = np.zeros((n_r, n_c), np.int64)
    np.add.at(class_counts, (rcode, cls), 1)
    size_counts = np.zeros((n_r, SIZE_BINS), np.int64)
    np.add.at(size_counts, (rcode, bins), 1)
    abnormal = finding.drop_duplicates(["rad_id", "image_id"]).groupby("rad_id").size()
    frame = pd.DataFrame({"rad": rcode, "size": size, "area": w * h, "rel": rel, "cx": cx, "cy": cy})
    med = frame.groupby("rad").median()
    rows = []
    for k, r in enumerate(rads):
        n = int(class_counts[k].sum())
        ab = int(abnormal.get(r, 0))
        top = np.argsort(-class_counts[k], kind="stable")[:3]
        rows.append({
            "rad_id": r, "boxes": n, "abnormal_images": ab, "boxes_per_abnormal_image": n / ab if ab else np.nan,
            "median_box_size_px": med["size"].get(k, np.nan), "median_box_area_px2": med["area"].get(k, np.nan),
            "median_box_size_rel": med["rel"].get(k, np.nan) if relative else np.nan,
            "center_x": med["cx"].get(k, np.nan), "center_y": med["cy"].get(k, np.nan),
            "top_classes": "; ".join(f"{classes[c]} {class_counts[k, c] / n:.0%}" for c in top
                                     if class_counts[k, c]) if n else "",
        })
    styles = pd.DataFrame(rows, columns=["rad_id", "boxes", "abnormal_images", "boxes_per_abnormal_image",
                                         "median_box_size_px", "median_box_area_px2", "median_box_size_rel",
                                         "center_x", "center_y", "top_classes"])
    sizes = {r: np.sort(np.stack([size, rel], axis=1)[rcode == k], axis=0) for k, r in enumerate(rads)}
    out = ReaderStyles(styles, {r: class_counts[k] for k, r in enumerate(rads)},
                       {r: size_counts[k] for k, r in enumerate(rads)}, sizes, relative, classes)
    style_groups(out)
    return out


def style_groups(styles: ReaderStyles, cut: float = STYLE_CUT, min_boxes: int = MIN_STYLE_BOXES) -> ReaderStyles:
    """Fill ``styles.groups`` (largest first; each ``{"name", "readers", "boxes", "boxes_per_abnormal_image",
    "median_box_size_px", "median_box_size_rel", "class_mix"}``), ``too_few_boxes``, ``distances`` and the
    dendrogram's ``merge_heights`` (module docstring)."""
    counts = {r: int(v.sum()) for r, v in styles.class_counts.items()}
    order = sorted(counts, key=reader_sort_key)
    styles.too_few_boxes = [r for r in order if counts[r] < min_boxes]
    rads = [r for r in order if counts[r] >= min_boxes]
    n = len(rads)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            a, b = rads[i], rads[j]
            d[i, j] = d[j, i] = style_distance(styles.class_counts[a], styles.class_counts[b],
                                               styles.size_counts[a], styles.size_counts[b])
    styles.distances = pd.DataFrame(d, index=rads, columns=rads)
    if n == 0:
        styles.groups = []
        return styles
    if n == 1:
        labels = np.array([1])
        styles.merge_heights = []
    else:
        z = linkage(squareform(d, checks=False), method="average")
        labels = fcluster(z, t=cut, criterion="distance")
        styles.merge_heights = [float(v) for v in z[:, 2]]
    members: dict[int, list[str]] = {}
    for r, lab in zip(rads, labels):
        members.setdefault(int(lab), []).append(r)
    st = styles.styles.set_index("rad_id")
    groups = sorted(members.values(), key=lambda g: (-sum(counts[r] for r in g), reader_sort_key(g[0])))
    styles.groups = []
    for k, g in enumerate(groups, start=1):
        cc = np.sum([styles.class_counts[r] for r in g], axis=0)
        total = int(cc.sum())
        ab = int(st.loc[g, "abnormal_images"].sum())
        both = np.concatenate([styles.box_sizes[r] for r in g])
        mix = {styles.classes[c]: float(cc[c] / total) for c in np.argsort(-cc, kind="stable") if cc[c]}
        styles.groups.append({
            "name": f"S{k}", "readers": g, "boxes": total,
            "boxes_per_abnormal_image": total / ab if ab else None,
            "median_box_size_px": float(np.median(both[:, 0])),
            "median_box_size_rel": float(np.median(both[:, 1])) if styles.relative else None,
            "class_mix": mix,
        })
    return styles
