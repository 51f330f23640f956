"""A fixed medium evaluation case (a reader CSV in the Kaggle layout and a submission), written deterministically
from a seed, shared by tests/test_evaluate_scale.py and the script that wrote its expected metrics
(``python tests/evaluate_case.py OUT.json`` run on the code before the real-scale rewrite)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from detx.core.classes import VINDR_CXR_CLASSES

NUM_CLASSES = len(VINDR_CXR_CLASSES)


def _g(v: float) -> str:
    return f"{v:.6g}"


def write_case(out: Path, n_images: int = 300, seed: int = 7) -> tuple[Path, Path]:
    """``out/train.csv`` (8 readers, 3 per image, 40% abnormal images, each reader drawing a jittered copy of each
    lesion 80% of the time) and ``out/submission.csv`` (jittered lesion
    boxes, random extras, scores rounded to 2 decimals so ties occur, the No-finding entry; some images missing, one
    extra image, one bad entry)."""
    rng = np.random.default_rng(seed)
    readers = [f"R{i}" for i in range(1, 9)]
    gt_rows, sub_rows = [], []
    for i in range(n_images):
        image_id = f"img{i:04d}"
        panel = rng.choice(readers, 3, replace=False)
        m = int(rng.integers(1, 5)) if rng.random() < 0.4 else 0
        xy = rng.uniform(0, 1500, (m, 2))
        lesions = np.hstack([xy, xy + rng.uniform(30, 600, (m, 2))])
        classes = rng.integers(0, NUM_CLASSES, m)
        for r in panel:
            drawn = 0
            for k in range(m):
                if rng.random() < 0.8 or (k == m - 1 and drawn == 0):
                    b = lesions[k] + rng.normal(0, 15, 4)
                    b[2:] = np.maximum(b[2:], b[:2] + 2)
                    gt_rows.append([image_id, VINDR_CXR_CLASSES[classes[k]], int(classes[k]), r, *map(_g, b)])
                    drawn += 1
            if m == 0:
                gt_rows.append([image_id, "No finding", NUM_CLASSES, r, "", "", "", ""])
        if i % 50 == 49:
            continue  # missing from the submission
        n = 25
        xy = rng.uniform(0, 1800, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(20, 500, (n, 2))])
        pc = rng.integers(0, NUM_CLASSES, n)
        k = min(m, n)
        boxes[:k] = lesions[:k] + rng.normal(0, 25, (k, 4))
        boxes[:k, 2:] = np.maximum(boxes[:k, 2:], boxes[:k, :2] + 2)
        pc[:k] = np.where(rng.random(k) < 0.85, classes[:k], pc[:k])
        scores = np.round(rng.uniform(0, 1, n), 2)
        scores[:k] = np.round(rng.uniform(0.4, 1, k), 2)
        tokens = [" ".join([str(int(c)), _g(s), *map(_g, b)]) for c, s, b in zip(pc, scores, boxes)]
        tokens.append(f"{NUM_CLASSES} {_g(round(rng.uniform(0.6, 1) if m == 0 else rng.uniform(0, 0.5), 2))} 0 0 1 1")
        if i == 3:
            tokens.append("3 0.5 10 10 5 20")  # x_max < x_min: skipped in lenient mode
        sub_rows.append([image_id, " ".join(tokens)])
    sub_rows.append(["not_in_gt", "0 0.5 0 0 10 10"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        w.writerows(gt_rows)
    with open(out / "submission.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image_id", "PredictionString"])
        w.writerows(sub_rows)
    return out / "train.csv", out / "submission.csv"


if __name__ == "__main__":  # write the expected metrics of the current code
    import tempfile

    from detx.core.io import write_json
    from detx.workflows.evaluate import evaluate_files

    with tempfile.TemporaryDirectory() as d:
        gt, sub = write_case(Path(d))
        m = evaluate_files(gt, sub).metrics
        m["gt"] = m["pred"] = None  # temporary paths
        m["problems"]["messages"] = [s.replace(d, "<dir>") for s in m["problems"]["messages"]]
        m["coverage"] = m["coverage"]
    write_json(sys.argv[1], m, indent=1)
