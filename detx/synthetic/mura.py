"""Synthetic musculoskeletal radiographs in the exact MURA v1.1 layout (tests and ``make demo DATASET=mura``).

Each image shows soft tissue and long bones (cortex brighter than the medulla, rounded ends) of one of MURA's seven
body parts; an abnormal study shows one sign on every view: a fracture line across a bone (with a small step), metal
hardware (a plate with screws) or a lytic lesion. Patients have 1-3 studies of 1-3 views each. The release's folders
and four CSVs are written as MURA ships them::

    <out>/MURA-v1.1/{train,valid}/XR_<PART>/patient<id>/study<n>_<positive|negative>/image<k>.png
    <out>/MURA-v1.1/{train,valid}_image_paths.csv        MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    <out>/MURA-v1.1/{train,valid}_labeled_studies.csv    MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1

Some PNGs are 3-channel, as in the release. The same seed writes the same files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detx.core.classes import MURA_BODY_PARTS
from detx.core.io import atomic_write_text, write_png

logger = logging.getLogger(__name__)

__all__ = ["SIGNS", "draw_radiograph", "generate_mura"]

SIGNS: tuple[str, ...] = ("fracture", "hardware", "lesion")
#: bones per body part (parallel long bones; the hand and fingers have more, thinner ones)
BONES: dict[str, int] = {"XR_ELBOW": 2, "XR_FINGER": 3, "XR_FOREARM": 2, "XR_HAND": 4, "XR_HUMERUS": 1,
                         "XR_SHOULDER": 1, "XR_WRIST": 2}


def _bone_axes(rng: np.random.Generator, part: str, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(start, end, thickness) of each bone in pixel coordinates, roughly along the image's long axis."""
    n = BONES[part]
    angle = rng.uniform(-0.35, 0.35)
    direction = np.array([np.sin(angle), np.cos(angle)])  # (x, y), mostly vertical
    normal = np.array([direction[1], -direction[0]])
    centre = np.array([w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2])
    thick = {1: 0.16, 2: 0.09, 3: 0.06, 4: 0.05}[n] * w
    spacing = thick * rng.uniform(1.5, 2.2)
    length = h * rng.uniform(0.6, 0.85) * (0.7 if part == "XR_FINGER" else 1.0)
    out = []
    for k in range(n):
        offset = (k - (n - 1) / 2) * spacing
        c = centre + normal * offset
        half = length / 2 * rng.uniform(0.85, 1.0)
        out.append((c - direction * half, c + direction * half, thick * rng.uniform(0.85, 1.1)))
    return out


def draw_radiograph(rng: np.random.Generator, part: str, h: int, w: int, sign: str | None) -> np.ndarray:
    """One uint8 (h, w) radiograph of ``part`` with ``sign`` (None for a normal one)."""
    img = np.full((h, w), rng.uniform(15, 35), np.float32)
    bones = _bone_axes(rng, part, h, w)
    tissue = np.zeros((h, w), np.float32)
    for a, b, t in bones:
        cv2.line(tissue, tuple(int(v) for v in a), tuple(int(v) for v in b), 1.0, int(t * 3.2), cv2.LINE_AA)
    tissue = cv2.GaussianBlur(tissue, (0, 0), max(2.0, w / 30))
    img += 70 * np.clip(tissue * 1.8, 0, 1)
    if part == "XR_SHOULDER":  # the humeral head
        a, _, t = bones[0]
        cv2.circle(img, tuple(int(v) for v in a), int(t * 1.6), 190, -1, cv2.LINE_AA)
    for a, b, t in bones:
        pa, pb = tuple(int(v) for v in a), tuple(int(v) for v in b)
        cv2.line(img, pa, pb, float(rng.uniform(200, 225)), int(t), cv2.LINE_AA)  # cortex
        cv2.line(img, pa, pb, float(rng.uniform(150, 175)), max(1, int(t * 0.5)), cv2.LINE_AA)  # medulla
        for end in (pa, pb):
            cv2.circle(img, end, int(t * 0.75), float(rng.uniform(195, 215)), -1, cv2.LINE_AA)
    if sign is not None:
        a, b, t = bones[int(rng.integers(len(bones)))]
        pos = rng.uniform(0.3, 0.7)
        p = a + (b - a) * pos
        d = (b - a) / max(np.linalg.norm(b - a), 1e-6)
        n = np.array([d[1], -d[0]])
        if sign == "fracture":
            tilt = n * np.cos(0.4) + d * np.sin(rng.uniform(-0.4, 0.4))
            q0, q1 = p - tilt * t * 0.8, p + tilt * t * 0.8
            cv2.line(img, tuple(int(v) for v in q0), tuple(int(v) for v in q1), 35, max(2, int(t * 0.12)),
                     cv2.LINE_AA)
            shift = (n * t * rng.uniform(0.12, 0.25)).astype(np.float32)  # the distal part steps sideways
            m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
            moved = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
            yy, xx = np.mgrid[0:h, 0:w]
            beyond = ((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) > 0
            img = np.where(beyond, moved, img)
        elif sign == "hardware":
            half = t * rng.uniform(1.8, 2.6)
            q0, q1 = p - d * half + n * t * 0.55, p + d * half + n * t * 0.55
            cv2.line(img, tuple(int(v) for v in q0), tuple(int(v) for v in q1), 255, max(2, int(t * 0.22)),
                     cv2.LINE_AA)
            for s in np.linspace(-0.8, 0.8, int(rng.integers(3, 6))):
                c = p + d * half * s
                cv2.line(img, tuple(int(v) for v in c + n * t * 0.7), tuple(int(v) for v in c - n * t * 0.7), 250,
                         max(1, int(t * 0.1)), cv2.LINE_AA)
        else:  # a lytic lesion: a dark, sharply bounded oval in the bone
            axes = (max(2, int(t * rng.uniform(0.3, 0.45))), max(2, int(t * rng.uniform(0.5, 0.9))))
            angle = float(np.degrees(np.arctan2(d[1], d[0])))
            cv2.ellipse(img, tuple(int(v) for v in p), axes[::-1], angle, 0, 360, 70, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    img += rng.normal(0, 4.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_mura(out: str | os.PathLike, n_train: int = 120, n_valid: int = 40, seed: int = 0, min_size: int = 256,
                  max_size: int = 512, abnormal_fraction: float = 0.45, rgb_fraction: float = 0.3,
                  progress: bool = True) -> dict[str, Any]:
    """Write at least ``n_train`` / ``n_valid`` images (whole studies) in the MURA v1.1 layout under ``out``.

    Returns:
        A summary: images, studies and abnormal studies per split, the signs drawn, and the CSV paths.
    """
    from detx.core.progress import progress_bar

    for name, n in (("n_train", n_train), ("n_valid", n_valid)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    release = Path(out) / "MURA-v1.1"
    master = np.random.default_rng([seed, 7])
    summary: dict[str, Any] = {"out": str(out), "seed": seed, "images": {}, "studies": {}, "abnormal_studies": {},
                               "signs": dict.fromkeys(SIGNS, 0), "files": {}}
    patient = 0
    for split, target in (("train", n_train), ("valid", n_valid)):
        paths, studies = [], []
        bar = progress_bar(total=target, desc=f"synthetic MURA {split}", unit="img", disable=not progress)
        n_images = n_abnormal = 0
        while n_images < target:
            patient += 1
            for s in range(1, int(master.integers(1, 4)) + 1):
                part = str(master.choice(MURA_BODY_PARTS))
                abnormal = bool(master.random() < abnormal_fraction)
                sign = str(master.choice(SIGNS)) if abnormal else None
                folder = f"{split}/{part}/patient{patient:05d}/study{s}_{'positive' if abnormal else 'negative'}"
                for k in range(1, int(master.integers(1, 4)) + 1):
                    rng = np.random.default_rng([seed, patient, s, k])
                    long_side = int(rng.integers(min_size, max_size + 1))
                    h, w = long_side, max(32, int(long_side * rng.uniform(0.6, 0.8)))
                    img = draw_radiograph(rng, part, h, w, sign)
                    if rng.random() < rgb_fraction:
                        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                    write_png(release / folder / f"image{k}.png", img)
                    paths.append(f"MURA-v1.1/{folder}/image{k}.png")
                    n_images += 1
                    bar.update()
                studies.append(f"MURA-v1.1/{folder}/,{int(abnormal)}")
                n_abnormal += abnormal
                if sign:
                    summary["signs"][sign] += 1
        bar.close()
        atomic_write_text(release / f"{split}_image_paths.csv", "\n".join(paths) + "\n")
        atomic_write_text(release / f"{split}_labeled_studies.csv", "\n".join(studies) + "\n")
        summary["images"][split] = n_images
        summary["studies"][split] = len(studies)
        summary["abnormal_studies"][split] = n_abnormal
        summary["files"][split] = [str(release / f"{split}_image_paths.csv"),
                                   str(release / f"{split}_labeled_studies.csv")]
    logger.info("wrote synthetic MURA to %s: %s", out, summary["images"])
    return summary
