#!/usr/bin/env python
"""A real-scale evaluation case: the real Kaggle VinBigData ``train.csv`` (from the torchxrayvision wheel) as the
ground truth and a synthetic submission of about ``--boxes`` boxes per image built from it.

Per image: every reader box of the image, jittered (each coordinate moved by N(0, 3%) of the box's size, the class
kept 90% of the time), then random boxes anywhere on a 2,500 x 3,000 frame until the image has ``--boxes`` finding
boxes, scores uniform in [0, 1] (jittered boxes drawn higher); plus the ``14 p 0 0 1 1`` No-finding entry with p high
on normal images. ``--images N`` keeps the first N images of the CSV (in file order of first appearance).

    python benchmarks/eval_data.py --out /tmp/eval15k [--images 15000] [--boxes 70] [--seed 0]

writes ``OUT/train.csv`` (the ground-truth rows of the kept images) and ``OUT/submission.csv``. Used by
``benchmarks/bench_evaluate.py``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

NUM_CLASSES = 14
FRAME = (2500.0, 3000.0)


def real_train_csv() -> Path:
    """The Kaggle VinBigData train.csv shipped in the torchxrayvision wheel (a [dev] extra)."""
    import torchxrayvision

    path = Path(torchxrayvision.__file__).parent / "data" / "vinbigdata-train.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install torchxrayvision (pip install detx[dev])")
    return path


def _g(v: np.ndarray) -> list[str]:
    return [f"{x:.6g}" for x in v.tolist()]


def make_case(out: str | os.PathLike, n_images: int | None = None, boxes_per_image: int = 70,
              seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/train.csv`` and ``out/submission.csv`` (see the module docstring); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(real_train_csv(), "rb") as f:
        text = f.read().decode("utf-8")
    table = pd.read_csv(io.StringIO(text), dtype={"image_id": str, "rad_id": str})
    ids = pd.unique(table["image_id"])
    if n_images is not None:
        ids = ids[:n_images]
        table = table[table["image_id"].isin(set(ids))]
    gt_path = out / "train.csv"
    table.to_csv(gt_path, index=False)

    rng = np.random.default_rng(seed)
    finding = table[table["class_id"] < NUM_CLASSES]
    by_image = finding.groupby("image_id", sort=False).indices
    fb = finding[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)
    fc = finding["class_id"].to_numpy(np.int64)
    w, h = FRAME
    sub_path = out / "submission.csv"
    with open(sub_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "PredictionString"])
        for image_id in ids:
            idx = by_image.get(image_id, np.zeros(0, np.int64))
            gb, gc = fb[idx], fc[idx].copy()
            size = np.maximum(gb[:, 2:] - gb[:, :2], 1.0)
            jit = gb + rng.normal(0, 0.03, gb.shape) * np.hstack([size, size])
            jit[:, 2:] = np.maximum(jit[:, 2:], jit[:, :2] + 1)
            swap = rng.random(len(gc)) < 0.1
            gc[swap] = rng.integers(0, NUM_CLASSES, int(swap.sum()))
            n_rand = max(boxes_per_image - len(gc), 0)
            xy = rng.uniform(0, 0.8, (n_rand, 2)) * [w, h]
            wh = rng.uniform(0.02, 0.3, (n_rand, 2)) * [w, h]
            boxes = np.vstack([jit, np.hstack([xy, xy + wh])])
            classes = np.r_[gc, rng.integers(0, NUM_CLASSES, n_rand)]
            scores = np.r_[rng.uniform(0.3, 1.0, len(gc)), rng.uniform(0.0, 0.7, n_rand)]
            p_none = rng.uniform(0.0, 0.4) if len(gc) else rng.uniform(0.6, 1.0)
            cols = [[str(int(c)) for c in classes], _g(scores), *(_g(boxes[:, j]) for j in range(4))]
            tokens = [" ".join(t) for t in zip(*cols)]
            tokens.append(f"{NUM_CLASSES} {p_none:.6g} 0 0 1 1")
            writer.writerow([image_id, " ".join(tokens)])
    return gt_path, sub_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=None, help="first N images of the CSV (default: all 15,000)")
    parser.add_argument("--boxes", type=int, default=70, help="finding boxes per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gt, sub = make_case(args.out, args.images, args.boxes, args.seed)
    print(f"wrote {gt} and {sub}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
