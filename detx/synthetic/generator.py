"""Synthetic X-ray datasets written in the exact layouts of the real ones (VinBigData Kaggle, VinDr-SpineXR).

The images are drawn by :mod:`detx.synthetic.draw` (a chest or a lateral lumbar spine with lesions of
distinct shape in anatomical places); this module turns them into real DICOM files (varied bit depths,
MONOCHROME1/2, VOI window and rescale tags), simulates the readers' boxes and writes the CSVs.

Layouts (``OUT`` is ``--out``):

* ``vindr-cxr`` (Kaggle VinBigData): ``train.csv`` (image_id, class_name, class_id, rad_id, x_min, y_min,
  x_max, y_max; three readers per image), ``train/<image_id>.dicom``, ``test/<image_id>.dicom``,
  ``sample_submission.csv``; plus ``test_ground_truth.csv`` (the test images' readers, in the train.csv
  format), which the real challenge keeps secret.
* ``spinexr`` (PhysioNet VinDr-SpineXR): ``annotations/{train,test}.csv`` (image_id, study_id, series_id,
  rad_id, lesion_type, xmin, ymin, xmax, ymax), ``train_images/<image_id>.dicom``,
  ``test_images/<image_id>.dicom``.

CLI: ``python -m detx.synthetic --out DIR --dataset vindr-cxr --n-train 100 --n-test 20 --seed 0``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from detx.core.classes import NO_FINDING, SPINEXR_CLASSES, VINDR_CXR_CLASSES, no_finding_id
from detx.core.io import atomic_path, atomic_write_text, write_png
from detx.synthetic.draw import draw_chest, draw_spine

logger = logging.getLogger(__name__)

# Digital X-Ray Image Storage - For Presentation (what VinDr's DX files use).
DX_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.1.1"

DATASETS = ("vindr-cxr", "spinexr")

# The default chest classes: six findings of clearly different shape, size and place (learnable by a small
# detector at 256 px). ``classes="all"`` draws all 14.
DEFAULT_CXR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",  # bulging aortic knob, upper left mediastinal border
    "Cardiomegaly",  # enlarged heart silhouette
    "Nodule/Mass",  # round sharp blob in a lung field
    "Pleural effusion",  # bright meniscus filling a costophrenic angle
    "Pneumothorax",  # dark apical/lateral rim without lung markings, pleural line
    "Pulmonary fibrosis",  # coarse reticular (honeycomb) texture in a lung zone
)
DEFAULT_SPINEXR_CLASSES: tuple[str, ...] = SPINEXR_CLASSES

MIN_SIZE_LIMIT = 32
#: the real Kaggle VinBigData train.csv's share of images no reader drew a box on (detx/synthetic/vinbigdata_stats.json)
REAL_NORMAL_FRACTION = 0.707


# --------------------------------------------------------------------------------------------- DICOM


def _uid(*parts: object) -> str:
    """A deterministic DICOM UID derived from ``parts`` (same inputs, same UID)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds_number(value: float) -> str:
    """A DS (decimal string) value of at most 16 characters."""
    text = f"{float(value):.6g}"
    return text if len(text) <= 16 else f"{float(value):.8e}"[:16]


def _rle_compress(ds: FileDataset, arr: np.ndarray) -> None:
    """RLE Lossless with pylibjpeg-rle (fast) when installed, else pydicom's own encoder: both write the
    same bytes (gdcm, pydicom's other choice, segments differently, so it is never picked implicitly)."""
    try:
        ds.compress(RLELossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    except (RuntimeError, ValueError, ImportError):
        ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)


def write_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    compress: str | None = None,
    image_id: str | None = None,
    **extra_tags: Any,
) -> Path:
    """Write a single-frame grayscale X-ray as a DICOM file (Digital X-Ray, unsigned 16-bit allocated).

    The pixel values are written as given: for ``photometric="MONOCHROME1"`` the caller passes values that
    are already inverted (high = dark), as a MONOCHROME1 modality stores them.

    Args:
        path: output file (written atomically).
        pixels: 2-D integer array with values in ``[0, 2**bits_stored - 1]``.
        photometric: "MONOCHROME2" (high = bright) or "MONOCHROME1" (high = dark).
        bits_stored: 8 to 16 (VinDr files use 12, 14 and 16); BitsAllocated is always 16.
        window: optional VOI window ``(center, width)`` in modality units (after rescale), written as
            WindowCenter / WindowWidth.
        rescale: optional modality LUT ``(slope, intercept)``, written as RescaleSlope / RescaleIntercept.
        compress: None (Explicit VR Little Endian), "rle" (RLE Lossless, encoded by pydicom) or "j2k" (JPEG 2000
            Lossless, encoded by pylibjpeg-openjpeg through pydicom, as the Kaggle VinBigData DICOMs are stored).
        image_id: seeds the UIDs (SOP/Study/Series Instance UID) so the file is reproducible; by default they
            are derived from the pixel data.
        **extra_tags: further DICOM keywords and values, e.g. ``PatientID="x"``, ``ImagerPixelSpacing=[.14, .14]``.

    Returns:
        The path written.
    """
    path = Path(path)
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{path}: pixels must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: pixels must be integers, got dtype {arr.dtype}")
    if not 8 <= int(bits_stored) <= 16:
        raise ValueError(f"{path}: bits_stored must be 8..16, got {bits_stored}")
    bits_stored = int(bits_stored)
    max_value = (1 << bits_stored) - 1
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > max_value:
        raise ValueError(f"{path}: pixel values [{lo}, {hi}] do not fit in {bits_stored} unsigned bits")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if compress not in (None, "rle", "j2k"):
        raise ValueError(f"{path}: compress must be None, 'rle' or 'j2k', got {compress!r}")
    if window is not None and float(window[1]) <= 0:
        raise ValueError(f"{path}: window width must be > 0, got {window[1]}")
    if rescale is not None and float(rescale[0]) == 0:
        raise ValueError(f"{path}: rescale slope must be non-zero")
    arr = np.ascontiguousarray(arr, dtype=np.uint16)
    key = image_id if image_id is not None else hashlib.sha1(arr.tobytes()).hexdigest()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = _uid("sop", key)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_SOP_CLASS_UID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid("study", key)
    ds.SeriesInstanceUID = _uid("series", key)
    ds.Modality = "DX"
    ds.PatientID = ""
    ds.PatientName = ""
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope = _ds_number(rescale[0])
        ds.RescaleIntercept = _ds_number(rescale[1])
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = _ds_number(window[0])
        ds.WindowWidth = _ds_number(window[1])
    for keyword, value in extra_tags.items():
        if keyword not in pydicom.datadict.keyword_dict:
            raise ValueError(f"{path}: unknown DICOM keyword {keyword!r}")
        setattr(ds, keyword, value)
    ds.PixelData = arr.tobytes()
    if compress == "rle":
        _rle_compress(ds, arr)
    elif compress == "j2k":
        ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------ generator


def _resolve_classes(dataset: str, classes: str | Sequence[str] | None) -> tuple[str, ...]:
    vocab = VINDR_CXR_CLASSES if dataset == "vindr-cxr" else SPINEXR_CLASSES
    if classes is None:
        return DEFAULT_CXR_CLASSES if dataset == "vindr-cxr" else DEFAULT_SPINEXR_CLASSES
    if isinstance(classes, str):
        classes = [classes]
    classes = list(classes)
    if classes == ["all"]:
        return vocab
    if not classes:
        raise ValueError("classes must not be empty (use None for the default subset or 'all')")
    unknown = [c for c in classes if c not in vocab]
    if unknown:
        raise ValueError(f"unknown {dataset} class name(s) {unknown}; known: {list(vocab)}")
    # keep the vocabulary's order, drop duplicates
    return tuple(c for c in vocab if c in set(classes))


def _check_args(dataset: str, n_train: int, n_test: int, min_size: int, max_size: int,
                normal_fraction: float) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    for name, s in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {s!r}")
    if min_size < MIN_SIZE_LIMIT:
        raise ValueError(f"min_size must be >= {MIN_SIZE_LIMIT} px, got {min_size}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
    if not 0.0 <= float(normal_fraction) <= 1.0:
        raise ValueError(f"normal_fraction must be in [0, 1], got {normal_fraction}")


def _hex_id(rng: np.random.Generator) -> str:
    """A 32-hex-character id like the VinDr image/study ids."""
    return rng.bytes(16).hex()


def _image_size(rng: np.random.Generator, min_size: int, max_size: int, p_landscape: float) -> tuple[int, int]:
    """(height, width): long side uniform in [min, max], aspect 0.72..0.95, portrait or landscape."""
    long_side = int(rng.integers(min_size, max_size + 1))
    short_side = max(min_size, int(round(long_side * rng.uniform(0.72, 0.95))))
    if rng.random() < p_landscape:
        return short_side, long_side
    return long_side, short_side


def encode_pixels(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Quantize a brightness map into stored DICOM values with a random but realistic encoding.

    Draws the bit depth (12/14/16), MONOCHROME1 (stored inverted), a VOI window that clips the air around
    the body and the brightest bone/metal (so applying the window matters), and a rescale slope/intercept.

    Returns:
        ``(pixels, write_dicom keyword arguments)``.
    """
    bits = int(rng.choice([12, 14, 16], p=[0.5, 0.3, 0.2]))
    max_value = (1 << bits) - 1
    windowed = rng.random() < 0.4
    mono1 = rng.random() < 0.3
    rescaled = rng.random() < 0.3
    if windowed:
        a, b = rng.uniform(0.1, 0.14), rng.uniform(0.8, 0.9)  # brightness range shown by the window
        lo, hi = max_value * rng.uniform(0.15, 0.3), max_value * rng.uniform(0.6, 0.8)
        stored = lo + (img - a) / (b - a) * (hi - lo)
        center, width = (lo + hi) / 2, hi - lo
    else:
        lo, hi = max_value * rng.uniform(0.0, 0.08), max_value * rng.uniform(0.75, 1.0)
        stored = lo + np.clip(img, 0, 1.2) / 1.2 * (hi - lo)
    pixels = np.clip(np.rint(stored), 0, max_value).astype(np.uint16)
    kwargs: dict[str, Any] = {"bits_stored": bits, "photometric": "MONOCHROME2"}
    if mono1:
        pixels = (max_value - pixels).astype(np.uint16)
        kwargs["photometric"] = "MONOCHROME1"
        if windowed:
            center = max_value - center
    slope, intercept = 1.0, 0.0
    if rescaled:
        slope, intercept = [(1.0, -1024.0), (0.5, 0.0), (2.0, -100.0)][int(rng.integers(3))]
        kwargs["rescale"] = (slope, intercept)
    if windowed:
        kwargs["window"] = (round(slope * center + intercept, 1), round(abs(slope) * width, 1))
    return pixels, kwargs


def _reader_boxes(rng: np.random.Generator, boxes: list[tuple[str, tuple[float, float, float, float]]],
                  h: int, w: int, n_readers: int, jitter: float, miss_small: float) -> list[list[tuple]]:
    """Each reader's version of the true boxes: edges jittered by ``jitter`` of the box size, small lesions
    (under 2% of the image) missed with probability ``miss_small``; every lesion is kept by at least one."""
    keep = np.ones((n_readers, len(boxes)), bool)
    for j, (_, (x0, y0, x1, y1)) in enumerate(boxes):
        small = (x1 - x0) * (y1 - y0) < 0.02 * h * w
        keep[:, j] = rng.random(n_readers) >= (miss_small if small else 0.02)
        if not keep[:, j].any():
            keep[int(rng.integers(n_readers)), j] = True
    out = []
    for r in range(n_readers):
        rows = []
        for j, (name, (x0, y0, x1, y1)) in enumerate(boxes):
            if not keep[r, j]:
                continue
            bw, bh = x1 - x0, y1 - y0
            d = rng.normal(0.0, jitter, 4) * np.array([bw, bh, bw, bh])
            nx0 = float(np.clip(np.rint(x0 + d[0]), 0, w - 1))
            ny0 = float(np.clip(np.rint(y0 + d[1]), 0, h - 1))
            nx1 = float(np.clip(np.rint(x1 + d[2]), nx0 + 1, w))
            ny1 = float(np.clip(np.rint(y1 + d[3]), ny0 + 1, h))
            rows.append((name, nx0, ny0, nx1, ny1))
        out.append(rows)
    return out


PROFILES = ("vinbigdata", "classic")
#: the trio draws the lesion's box; the other readers draw it scaled about its centre by the real ratio of their
#: class median size to the trio's (bigger for most classes), clipped to this range
OTHERS_SCALE_CLIP = (0.6, 2.8)
#: per-edge jitter of a reader's box, as a fraction of the box's width/height (normal, sd): sized so that a box's
#: best IoU with another reader's box of its class has a median near the real 0.68 (tests/test_synthetic_real.py)
READER_JITTER = 0.09
#: chance that a reader also draws the mirror image of each of its lung-field boxes (a bilateral call no other
#: reader makes: the real readers' "additions", boxes whose best IoU with the others' is near 0)
ADD_MIRROR = 0.3
#: per-class chance that a reader keeps a true finding is 1 - sqrt(lonely fraction), clipped to this range
KEEP_CLIP = (0.35, 0.97)
#: co-occurrence lifts are clipped to this range (pairs never seen together still occur, rarely)
LIFT_CLIP = (0.05, 20.0)
MIRRORED = frozenset(VINDR_CXR_CLASSES) - {"Aortic enlargement", "Cardiomegaly"}


def _draw_frequencies(w: np.ndarray, lift: np.ndarray, k_values: np.ndarray, k_p: np.ndarray,
                      n: int = 20000) -> np.ndarray:
    """How often each class is among an image's findings when drawn as :meth:`VinBigDataWorld.findings` draws them
    (``n`` simulated images, a fixed generator: deterministic)."""
    rng = np.random.default_rng(12345)
    k = rng.choice(k_values, size=n, p=k_p)
    weights = np.tile(w, (n, 1))
    drawn = np.zeros_like(weights)
    for step in range(int(k.max())):
        active = (k > step) & (weights.sum(1) > 0)
        cum = np.cumsum(weights[active], 1)
        j = (cum < rng.random(int(active.sum()))[:, None] * cum[:, -1:]).sum(1)
        rows = np.flatnonzero(active)
        drawn[rows, j] = 1.0
        weights[rows] *= lift[j]
    return drawn.mean(0)


def _calibrated(w: np.ndarray, lift: np.ndarray, k_values: np.ndarray, k_p: np.ndarray, rounds: int = 4
                ) -> np.ndarray:
    """First-draw weights under which drawing with the co-occurrence ``lift`` gives each class the frequency it has
    when drawn without lifts (fixed-point iteration on :func:`_draw_frequencies`)."""
    no_lift = np.ones_like(lift)
    np.fill_diagonal(no_lift, 0.0)
    target = _draw_frequencies(w, no_lift, k_values, k_p)
    out = w.copy()
    for _ in range(rounds):
        got = _draw_frequencies(out, lift, k_values, k_p)
        out = out * np.divide(target, got, out=np.ones_like(target), where=got > 0)
        out = out / out.sum()
    return out


class VinBigDataWorld:
    """The real annotation statistics (:mod:`detx.synthetic.real_stats`) turned into drawing probabilities:
    which panel reads an image, how many and which findings it has, and how each reader draws them."""

    def __init__(self, classes: tuple[str, ...], stats: dict[str, Any] | None = None) -> None:
        from detx.synthetic.real_stats import load_real_stats

        s = load_real_stats() if stats is None else stats
        self.classes = classes
        pan = s["panels"]
        t, a_t, a_o = pan["trio"]["image_share"], pan["trio"]["abnormal_share"], pan["others"]["abnormal_share"]
        # P(trio | abnormal) and P(trio | normal): the panels keep their real abnormal/normal make-up whatever the
        # normal fraction
        self.p_trio = {True: t * a_t / (t * a_t + (1 - t) * a_o),
                       False: t * (1 - a_t) / (t * (1 - a_t) + (1 - t) * (1 - a_o))}
        self.trio = tuple(pan["trio"]["readers"])
        self.others = {}
        for ab, key in ((True, "reader_share_abnormal"), (False, "reader_share_normal")):
            shares = {r: v for r, v in pan["others"][key].items() if r not in self.trio or not ab}
            names = sorted(shares, key=lambda r: (len(r), r))
            p = np.array([shares[r] for r in names], float)
            self.others[ab] = (names, p / p.sum())
        ks = {int(k): v for k, v in s["classes_per_abnormal_image"].items() if int(k) <= len(classes)}
        self.k_values = np.array(sorted(ks))
        self.k_p = np.array([ks[k] for k in self.k_values]) / sum(ks.values())
        self.class_p = {}
        for group in ("trio", "others"):
            mix = s["styles"][group]["class_mix"]
            w = np.array([mix.get(c, 0.0) for c in classes], float)
            w = w if w.sum() > 0 else np.ones(len(classes))
            self.class_p[group] = w / w.sum()
        # the classes' co-occurrence on abnormal images as lifts P(i, j) / (P(i) P(j)): a finding drawn makes the
        # findings that go with it on real images more likely (e.g. Cardiomegaly with Aortic enlargement)
        order = [VINDR_CXR_CLASSES.index(c) for c in classes]
        co = np.asarray(s["class_cooccurrence"], float)[np.ix_(order, order)]
        prior = np.diag(co)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = co / np.outer(prior, prior)
        self.lift = np.clip(np.nan_to_num(lift, nan=1.0, posinf=1.0), *LIFT_CLIP)
        np.fill_diagonal(self.lift, 0.0)  # a class is drawn once
        # the lifts pull the mix towards well-connected classes: correct the first-draw weights so each class is
        # drawn as often as it would be without them (the real mix; a fixed simulation, the same for every seed)
        for group in ("trio", "others"):
            self.class_p[group] = _calibrated(self.class_p[group], self.lift, self.k_values, self.k_p)
        lonely = s["disagreement"]["lonely_fraction_by_class"]
        self.keep = {c: float(np.clip(1 - np.sqrt(lonely.get(c, 0.2)), *KEEP_CLIP)) for c in VINDR_CXR_CLASSES}
        self.scale = {c: float(np.clip(1.0 / s["styles"]["trio_scale_by_class"].get(c, 1.0), *OTHERS_SCALE_CLIP))
                      for c in VINDR_CXR_CLASSES}

    def panel(self, rng: np.random.Generator, abnormal: bool) -> tuple[str, list[str]]:
        """("trio" or "others", the image's three readers)."""
        if rng.random() < self.p_trio[abnormal]:
            return "trio", list(self.trio)
        names, p = self.others[abnormal]
        return "others", sorted((names[k] for k in rng.choice(len(names), 3, replace=False, p=p)),
                                key=lambda r: (len(r), r))

    def findings(self, rng: np.random.Generator, group: str) -> list[str]:
        """The true findings of an abnormal image: how many from the real classes-per-image distribution; the first
        from the reading panel's class mix, each next one from that mix times its co-occurrence lifts with the
        findings already drawn (without replacement)."""
        k = int(rng.choice(self.k_values, p=self.k_p))
        w = self.class_p[group].copy()
        idx: list[int] = []
        for _ in range(k):
            j = int(rng.choice(len(self.classes), p=w / w.sum()))
            idx.append(j)
            w = w * self.lift[j]
            if w.sum() <= 0:
                break
        return [self.classes[i] for i in sorted(idx)]

    def readers(self, rng: np.random.Generator, group: str, boxes: list[tuple[str, tuple[float, ...]]],
                h: int, w: int) -> list[list[tuple]]:
        """Three readers' boxes of the true ``boxes``: each keeps a finding with its class's probability (at least
        one reader keeps every finding, and every reader of an abnormal image draws something: VinBigData's
        unanimous normal/abnormal call), scales it by its panel's style (the trio draws the lesion's box, the others
        bigger ones), jitters its edges and sometimes adds the
        mirror image of a lung-field box."""
        n = len(boxes)
        if n == 0:
            return [[], [], []]
        keep = np.array([[rng.random() < self.keep[name] for name, _ in boxes] for _ in range(3)])
        for j in range(n):
            if not keep[:, j].any():
                keep[int(rng.integers(3)), j] = True
        for r in range(3):
            if not keep[r].any():
                keep[r, int(rng.integers(n))] = True
        out = []
        for r in range(3):
            rows = []
            for j, (name, (x0, y0, x1, y1)) in enumerate(boxes):
                if not keep[r, j]:
                    continue
                f = 1.0 if group == "trio" else self.scale[name]
                cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * f, (y1 - y0) * f
                rows.append(self._jitter(rng, name, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, h, w))
            for name, x0, y0, x1, y1 in [b for b in rows if b[0] in MIRRORED]:
                if rng.random() < ADD_MIRROR:
                    rows.append(self._jitter(rng, name, w - x1, y0, w - x0, y1, h, w))
            out.append(rows)
        return out

    @staticmethod
    def _jitter(rng: np.random.Generator, name: str, x0: float, y0: float, x1: float, y1: float,
                h: int, w: int) -> tuple:
        bw, bh = x1 - x0, y1 - y0
        d = rng.normal(0.0, READER_JITTER, 4) * np.array([bw, bh, bw, bh])
        nx0 = float(np.clip(np.rint(x0 + d[0]), 0, w - 1))
        ny0 = float(np.clip(np.rint(y0 + d[1]), 0, h - 1))
        nx1 = float(np.clip(np.rint(x1 + d[2]), nx0 + 1, w))
        ny1 = float(np.clip(np.rint(y1 + d[3]), ny0 + 1, h))
        return (name, nx0, ny0, nx1, ny1)


def _pick_findings(rng: np.random.Generator, classes: tuple[str, ...], counts: dict[str, int]) -> list[str]:
    """1-3 distinct findings, favouring the classes drawn least so far (keeps the classes balanced)."""
    k = min(len(classes), int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])))
    weights = np.array([1.0 / (1.0 + counts[c]) ** 2 for c in classes])
    idx = rng.choice(len(classes), size=k, replace=False, p=weights / weights.sum())
    return [classes[i] for i in sorted(idx)]


def _make_image(dataset: str, rng: np.random.Generator, min_size: int, max_size: int,
                findings: list[str], lungs: dict[str, np.ndarray] | None = None
                ) -> tuple[np.ndarray, dict[str, Any], list[tuple[str, tuple]]]:
    draw, p_landscape = (draw_chest, 0.25) if dataset == "vindr-cxr" else (draw_spine, 0.15)
    for _ in range(10):  # a finding whose place is missing in this geometry is skipped: redraw if none is left
        h, w = _image_size(rng, min_size, max_size, p_landscape=p_landscape)
        img, drawn = draw(rng, h, w, findings, lungs=lungs) if lungs is not None else draw(rng, h, w, findings)
        if drawn or not findings:
            break
    pixels, kwargs = encode_pixels(rng, img)
    return pixels, kwargs, [(f.class_name, f.box) for f in drawn]


def _draw_chest_streams(key: list[int], min_size: int, max_size: int, findings: list[str],
                        boxes_only: bool, lungs: dict[str, np.ndarray] | None = None
                        ) -> tuple[np.ndarray | None, int, int, list[tuple[str, tuple]]]:
    """The vinbigdata profile's chest: every attempt draws from a stream of its own (``key + [attempt]``), so the
    boxes are the same whether the pixels are drawn or not (``boxes_only``, :func:`draw_chest`)."""
    for attempt in range(10):  # a finding whose place is missing in this geometry is skipped: redraw if none is left
        arng = np.random.default_rng([*key, attempt])
        h, w = _image_size(arng, min_size, max_size, p_landscape=0.25)
        img, drawn = draw_chest(arng, h, w, findings, boxes_only=boxes_only, lungs=lungs)
        if drawn or not findings:
            break
    return img, h, w, [(f.class_name, f.box) for f in drawn]


def generate_dataset(
    out: str | os.PathLike,
    dataset: str = "vindr-cxr",
    n_train: int = 100,
    n_test: int = 20,
    seed: int = 0,
    min_size: int = 384,
    max_size: int = 640,
    classes: str | Sequence[str] | None = None,
    normal_fraction: float | None = None,
    rle_fraction: float = 0.1,
    progress: bool = True,
    profile: str = "classic",
    annotations_only: bool = False,
    lung_masks: bool = False,
) -> dict[str, Any]:
    """Write a synthetic dataset in the real layout of ``dataset`` under ``out``.

    Args:
        out: output folder (created; files of the same names are replaced).
        dataset: "vindr-cxr" (Kaggle VinBigData layout) or "spinexr" (PhysioNet VinDr-SpineXR layout).
        n_train: number of train images (>= 1).
        n_test: number of test images (>= 1).
        seed: the same seed writes identical files.
        min_size: smallest longer side of an image in pixels (the shorter is 72-95% of the longer, at least
            ``min_size``).
        max_size: largest longer side of an image in pixels.
        classes: None for the profile's default (vinbigdata: all 14 chest findings; classic: the learnable subset
            :data:`DEFAULT_CXR_CLASSES`; all 7 for spinexr), "all", or a list of class names of the dataset.
        normal_fraction: fraction of images without findings (rounded per split); None: the real 0.707 with the
            vinbigdata profile, 0.5 otherwise.
        rle_fraction: fraction of DICOM files written RLE Lossless compressed.
        progress: show a tqdm bar.
        lung_masks: vindr-cxr: also write each image's lung fields, as drawn, to ``OUT/lung_masks/<split>/left/<id>.png``
            and ``right/<id>.png`` (the patient's sides; 0/255 PNGs of the DICOM's size): the ``folders`` layout of
            :func:`detx.data.lung_masks.read_lung_pairs` with ``--images OUT/<split>``. The other files are the
            same bytes with or without it.
        profile: "classic" (the default: 1-3 findings of the chosen classes, balanced, three random readers
            jittering the same boxes) or "vinbigdata" (chest only: findings, reader panels and reader styles drawn
            from the real VinBigData aggregates, :class:`VinBigDataWorld`, docs/synthetic.md). Ignored for spinexr.
        annotations_only: vinbigdata profile only: write the CSVs without drawing the pixels or writing DICOMs
            (the same CSVs as the full run), and ``image_sizes.csv`` (image_id, width, height) beside them.

    Returns:
        A summary: dataset, out, seed, classes, image and abnormal counts per split, boxes (true lesions)
        per class, the paths of the CSV files and ``image_sizes`` (image_id -> (width, height)).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {list(PROFILES)}")
    world_on = profile == "vinbigdata" and dataset == "vindr-cxr"
    if annotations_only and not world_on:
        raise ValueError("annotations_only needs the vinbigdata profile of the vindr-cxr dataset")
    if lung_masks and (dataset != "vindr-cxr" or annotations_only):
        raise ValueError("lung_masks needs the vindr-cxr dataset with its pixels (not annotations_only)")
    if normal_fraction is None:
        normal_fraction = REAL_NORMAL_FRACTION if world_on else 0.5
    _check_args(dataset, n_train, n_test, min_size, max_size, normal_fraction)
    if world_on and classes is None:
        classes = "all"
    chosen = _resolve_classes(dataset, classes)
    world = VinBigDataWorld(chosen) if world_on else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = VINDR_CXR_CLASSES if dataset == "vindr-cxr" else SPINEXR_CLASSES
    master = np.random.default_rng([seed, 0 if dataset == "vindr-cxr" else 1])
    splits = {"train": int(n_train), "test": int(n_test)}
    counts = dict.fromkeys(chosen, 0)
    summary: dict[str, Any] = {"dataset": dataset, "out": str(out), "seed": seed, "classes": list(chosen),
                               "profile": profile if dataset == "vindr-cxr" else "classic",
                               "images": {}, "abnormal": {}, "boxes_per_class": counts, "files": {},
                               "image_sizes": {}}
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    from detx.core.progress import progress_bar
    for split_idx, (split, n) in enumerate(splits.items()):
        n_abnormal = int(round(n * (1.0 - normal_fraction)))
        abnormal = np.zeros(n, bool)
        abnormal[master.permutation(n)[:n_abnormal]] = True
        image_ids = [_hex_id(master) for _ in range(n)]
        study_ids, series_ids = _spine_studies(master, n) if dataset == "spinexr" else ([""] * n, [""] * n)
        folder = out / (split if dataset == "vindr-cxr" else f"{split}_images")
        it = range(n)
        if progress:
            it = progress_bar(it, desc=f"synthetic {dataset} {split}", unit="img")
        for i in it:
            lungs: dict[str, np.ndarray] | None = {} if lung_masks else None
            if world is not None:
                n_abnormal_drawn = _world_image(world, [seed, split_idx, i, 0], bool(abnormal[i]), image_ids[i],
                                                folder, min_size, max_size, rle_fraction, annotations_only, vocab,
                                                rows[split], counts, summary["image_sizes"], lungs)
                abnormal[i] = n_abnormal_drawn
                if lungs is not None:
                    write_lung_masks(out / LUNG_MASKS_DIR / split, image_ids[i], lungs)
                continue
            rng = np.random.default_rng([seed, split_idx, i, 0 if dataset == "vindr-cxr" else 1])
            findings = _pick_findings(rng, chosen, counts) if abnormal[i] else []
            pixels, kwargs, boxes = _make_image(dataset, rng, min_size, max_size, findings, lungs)
            if lungs is not None:
                write_lung_masks(out / LUNG_MASKS_DIR / split, image_ids[i], lungs)
            for name, _ in boxes:
                counts[name] += 1
            h, w = pixels.shape
            summary["image_sizes"][image_ids[i]] = (w, h)
            # demographics and detector pixel size as VinDr's anonymized files carry them (the field of view
            # of a real film is about 35-43 cm)
            spacing = round(float(rng.uniform(350.0, 430.0)) / max(h, w), 4)
            extra = {"PatientSex": str(rng.choice(["M", "F"])), "PatientAge": f"{int(rng.integers(18, 90)):03d}Y",
                     "ImagerPixelSpacing": [spacing, spacing], "BodyPartExamined": "CHEST"}
            if dataset == "spinexr":
                extra.update(StudyInstanceUID=_uid("study", study_ids[i]), SeriesInstanceUID=_uid("series", series_ids[i]),
                             BodyPartExamined="LSPINE")
            write_dicom(folder / f"{image_ids[i]}.dicom", pixels, image_id=image_ids[i],
                        compress="rle" if rng.random() < rle_fraction else None, **kwargs, **extra)
            if dataset == "vindr-cxr":
                rows[split] += _cxr_rows(rng, image_ids[i], boxes, h, w, vocab)
            else:
                rows[split] += _spine_rows(rng, image_ids[i], study_ids[i], series_ids[i], boxes, h, w)
        stale = {f.stem for f in folder.glob("*.dicom")} - set(image_ids) if not annotations_only else set()
        if stale:
            logger.warning("%s holds %d .dicom files that this run did not write (an earlier run?); they are not in "
                           "its CSV", folder, len(stale))
        summary["images"][split] = n
        summary["abnormal"][split] = int(abnormal.sum())
    summary["files"] = _write_tables(out, dataset, rows)
    if annotations_only:  # no DICOM headers to read the sizes from: --compare-real reads this file instead
        sizes = pd.DataFrame([(i, w, h) for i, (w, h) in summary["image_sizes"].items()],
                             columns=["image_id", "width", "height"])
        atomic_write_text(out / IMAGE_SIZES_CSV, sizes.to_csv(index=False, lineterminator="\n"))
        summary["files"]["image_sizes_csv"] = str(out / IMAGE_SIZES_CSV)
    logger.info("wrote synthetic %s dataset to %s: %s", dataset, out, summary["images"])
    return summary


def _world_image(world: VinBigDataWorld, key: list[int], abnormal: bool, image_id: str, folder: Path,
                 min_size: int, max_size: int, rle_fraction: float, annotations_only: bool, vocab: tuple[str, ...],
                 rows: list[dict[str, Any]], counts: dict[str, int], sizes: dict[str, tuple[int, int]],
                 lungs: dict[str, np.ndarray] | None = None) -> bool:
    """One image of the vinbigdata profile: its panel, true findings and readers (stream ``key + [1]``), its
    drawing (``key + [2, attempt]``), then its pixels and DICOM tags (``key``). Returns whether it is abnormal."""
    prng = np.random.default_rng([*key, 1])
    group, rads = world.panel(prng, abnormal)
    findings = world.findings(prng, group) if abnormal else []
    img, h, w, boxes = _draw_chest_streams([*key, 2], min_size, max_size, findings, boxes_only=annotations_only,
                                           lungs=lungs)
    for name, _ in boxes:
        counts[name] += 1
    sizes[image_id] = (w, h)
    rows += _reader_rows(image_id, rads, world.readers(prng, group, boxes, h, w), vocab)
    if not annotations_only:
        rng = np.random.default_rng(key)
        pixels, kwargs = encode_pixels(rng, img)
        spacing = round(float(rng.uniform(350.0, 430.0)) / max(h, w), 4)
        extra = {"PatientSex": str(rng.choice(["M", "F"])), "PatientAge": f"{int(rng.integers(18, 90)):03d}Y",
                 "ImagerPixelSpacing": [spacing, spacing], "BodyPartExamined": "CHEST"}
        write_dicom(folder / f"{image_id}.dicom", pixels, image_id=image_id,
                    compress="rle" if rng.random() < rle_fraction else None, **kwargs, **extra)
    return bool(boxes)


#: the folder under ``--out`` that ``lung_masks=True`` writes: ``<split>/left/<id>.png``, ``<split>/right/<id>.png``
LUNG_MASKS_DIR = "lung_masks"


def write_lung_masks(folder: Path, image_id: str, lungs: dict[str, np.ndarray]) -> None:
    """An image's lung masks (``{"left": bool array, "right": ...}``) as 0/255 PNGs ``folder/<side>/<image_id>.png``."""
    for side in ("left", "right"):
        write_png(folder / side / f"{image_id}.png", lungs[side].astype(np.uint8) * 255)


def _spine_studies(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """study_id per image, 1-3 images per study (consecutive), and one series_id per image."""
    studies: list[str] = []
    while len(studies) < n:
        sid = _hex_id(rng)
        studies += [sid] * int(rng.integers(1, 4))
    return studies[:n], [_hex_id(rng) for _ in range(n)]


CXR_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
SPINEXR_COLUMNS = ["image_id", "study_id", "series_id", "rad_id", "lesion_type", "xmin", "ymin", "xmax", "ymax"]
CXR_READERS = tuple(f"R{k}" for k in range(1, 18))
#: written beside the CSVs by an annotations-only run: image_id, width, height
IMAGE_SIZES_CSV = "image_sizes.csv"


def _cxr_rows(rng, image_id, boxes, h, w, vocab) -> list[dict[str, Any]]:
    readers = [CXR_READERS[k] for k in rng.choice(len(CXR_READERS), 3, replace=False)]
    per_reader = _reader_boxes(rng, boxes, h, w, n_readers=3, jitter=0.035, miss_small=0.2)
    return _reader_rows(image_id, readers, per_reader, vocab)


def _reader_rows(image_id: str, readers: Sequence[str], per_reader: Sequence[Sequence[tuple]],
                 vocab: tuple[str, ...]) -> list[dict[str, Any]]:
    """Kaggle train.csv rows: each reader's boxes, or one "No finding" row for a reader without a box."""
    rows = []
    nan = float("nan")
    for rad, rboxes in zip(readers, per_reader):
        if not rboxes:
            rows.append({"image_id": image_id, "class_name": NO_FINDING, "class_id": no_finding_id(vocab), "rad_id": rad,
                             "x_min": nan, "y_min": nan, "x_max": nan, "y_max": nan})
        for name, x0, y0, x1, y1 in rboxes:
            rows.append({"image_id": image_id, "class_name": name, "class_id": vocab.index(name), "rad_id": rad,
                             "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1})
    return rows


def _spine_rows(rng, image_id, study_id, series_id, boxes, h, w) -> list[dict[str, Any]]:
    rad = f"rad{int(rng.integers(1, 4))}"
    (rboxes,) = _reader_boxes(rng, boxes, h, w, n_readers=1, jitter=0.02, miss_small=0.0)
    nan = float("nan")
    base = {"image_id": image_id, "study_id": study_id, "series_id": series_id, "rad_id": rad}
    if not rboxes:
        return [dict(base, lesion_type=NO_FINDING, xmin=nan, ymin=nan, xmax=nan, ymax=nan)]
    return [dict(base, lesion_type=name, xmin=x0, ymin=y0, xmax=x1, ymax=y1) for name, x0, y0, x1, y1 in rboxes]


def _write_tables(out: Path, dataset: str, rows: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    files = {}
    if dataset == "vindr-cxr":
        train = pd.DataFrame(rows["train"], columns=CXR_COLUMNS)
        test = pd.DataFrame(rows["test"], columns=CXR_COLUMNS)
        targets = {"train_csv": (out / "train.csv", train), "test_ground_truth_csv": (out / "test_ground_truth.csv", test)}
        sub = pd.DataFrame({"image_id": pd.unique(test["image_id"]), "PredictionString": "14 1 0 0 1 1"})
        targets["sample_submission_csv"] = (out / "sample_submission.csv", sub)
    else:
        targets = {f"{split}_csv": (out / "annotations" / f"{split}.csv",
                                    pd.DataFrame(rows[split], columns=SPINEXR_COLUMNS)) for split in rows}
    for key, (path, df) in targets.items():
        atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))
        files[key] = str(path)
    return files


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detx.synthetic",
        description="Write a synthetic X-ray dataset (DICOM + reader CSVs) in the VinBigData or VinDr-SpineXR layout.")
    parser.add_argument("--out", default=None, help="output folder (required unless --compare-real)")
    parser.add_argument("--dataset", default="vindr-cxr",
                        help="vindr-cxr (Kaggle layout), spinexr, or mura (MURA v1.1 PNGs; --n-test is the valid split)")
    parser.add_argument("--n-train", type=int, default=None, help="number of train images (required)")
    parser.add_argument("--n-test", type=int, default=None, help="number of test images (required)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=384, help="smallest longer side in px (>= 32)")
    parser.add_argument("--max-size", type=int, default=640, help="largest longer side in px")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="class names to draw (quote names with spaces), or 'all'; default: a learnable subset of 6 (classic), "
                             "all 14 (vinbigdata)")
    parser.add_argument("--normal-fraction", type=float, default=None,
                        help="fraction of images without findings (default: the real 0.707 with --profile "
                             "vinbigdata, 0.5 with classic)")
    parser.add_argument("--profile", default="classic", choices=PROFILES,
                        help="vindr-cxr: classic (the default: 6 classes, random readers jittering the same boxes) or "
                             "vinbigdata (findings, reader panels and styles drawn from the real VinBigData "
                             "aggregates; all 14 classes by default)")
    parser.add_argument("--annotations-only", action="store_true",
                        help="vinbigdata profile: write the CSVs only (the same CSVs, no pixels or DICOMs)")
    parser.add_argument("--lung-masks", action="store_true",
                        help="vindr-cxr: also write each image's lung fields as drawn to OUT/lung_masks/<split>/"
                             "{left,right}/<image_id>.png (the folders layout of datasets/prepare_lung_masks.py)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--compare-real", metavar="CSV", default=None,
                        help="instead of generating: print each annotation statistic of this Kaggle-format reader CSV "
                             "beside the real VinBigData one (detx/synthetic/vinbigdata_stats.json) and a distance")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.compare_real is not None:
        from detx.core.errors import DetxError
        from detx.synthetic.real_stats import compare_csv, format_comparison

        try:
            rows, note = compare_csv(args.compare_real)
        except DetxError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_comparison(rows, Path(args.compare_real).name))
        print(f"\n({note}; JS = Jensen-Shannon divergence in bits, ratio = CSV / real, diff = CSV - real)")
        return 0
    missing = [f"--{k.replace('_', '-')}" for k in ("out", "n_train", "n_test") if getattr(args, k) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.dataset == "mura":
        from detx.synthetic.mura import generate_mura

        try:
            summary = generate_mura(args.out, n_train=args.n_train, n_valid=args.n_test, seed=args.seed,
                                    min_size=args.min_size, max_size=args.max_size, progress=not args.no_progress)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {summary['images']['train']} train and {summary['images']['valid']} valid images "
              f"({summary['studies']['train']} + {summary['studies']['valid']} studies, "
              f"{summary['abnormal_studies']['train']} + {summary['abnormal_studies']['valid']} abnormal) in the MURA "
              f"v1.1 layout to {summary['out']}")
        return 0
    try:
        summary = generate_dataset(args.out, dataset=args.dataset, n_train=args.n_train, n_test=args.n_test,
                                   seed=args.seed, min_size=args.min_size, max_size=args.max_size,
                                   classes=args.classes, normal_fraction=args.normal_fraction,
                                   progress=not args.no_progress, profile=args.profile,
                                   annotations_only=args.annotations_only, lung_masks=args.lung_masks)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['images']['train']} train and {summary['images']['test']} test images "
          f"({summary['abnormal']['train']} + {summary['abnormal']['test']} abnormal) to {summary['out']}")
    print("boxes per class: " + ", ".join(f"{k}: {v}" for k, v in summary["boxes_per_class"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
