#!/usr/bin/env python
"""The whole ``tools/evaluate.py`` process at real scale against the code before issue 24 and against pycocotools'
COCOeval alone.

Case (``benchmarks/eval_data.py``): the real Kaggle VinBigData train.csv (torchxrayvision wheel) as the ground truth
(readers fused by WBF, the human baseline computed from its rad_ids), its first 3,000 images and all 15,000, and a
synthetic submission of ~70 boxes per image (~1M boxes at 15,000). Each row runs a fresh process under
``/usr/bin/time`` (wall, user + system CPU, peak RSS):

* detx: ``tools/evaluate.py --gt train.csv --pred submission.csv --out metrics.json`` of this tree;
* baseline 1: the same command from the commit before the rewrite (``benchmarks/baseline_tree.py``; pycocotools'
  COCOeval, per-entry parsing, FROC matching twice); the two metrics JSONs are compared (COCO numbers to 1e-6,
  everything else to 1e-9) and the row fails when they differ;
* baseline 2: pycocotools' ``COCOeval`` alone on the same, *unfused* boxes (every reader's box as ground truth, the
  submission's finding boxes as results): building the COCO objects from in-memory lists, ``evaluate``,
  ``accumulate``, ``summarize``; the CSV parsing is not timed. It is only one of the numbers ``evaluate.py`` gives.

    python benchmarks/bench_evaluate.py [--quick] [--sizes 3000 15000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baseline_tree import REPO, baseline_tree  # noqa: E402
from eval_data import make_case  # noqa: E402

NUM_CLASSES = 14


def timed_process(cmd: list[str], pythonpath: str, cwd: str) -> dict[str, float]:
    """Run ``cmd`` under /usr/bin/time: wall s, cpu s (user + system), peak RSS MB."""
    with tempfile.NamedTemporaryFile(suffix=".time", delete=False) as f:
        out = f.name
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", out, *cmd], env=env, cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    e, u, s, m = Path(out).read_text().split()[-4:]
    os.unlink(out)
    return {"wall": wall, "cpu": float(u) + float(s), "rss_mb": float(m) / 1024.0, "stdout": proc.stdout}


def cocoeval_alone(gt_csv: str, sub_csv: str) -> dict[str, float]:
    """pycocotools' COCOeval on the unfused reader boxes and the submission's finding boxes (baseline 2)."""
    import contextlib
    import io

    import numpy as np
    import pandas as pd
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    table = pd.read_csv(gt_csv, dtype={"image_id": str})
    ids = {k: i + 1 for i, k in enumerate(pd.unique(table["image_id"]))}
    f = table[table["class_id"] < NUM_CLASSES]
    gb = f[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    gi = f["image_id"].map(ids).to_numpy()
    gc = f["class_id"].to_numpy()
    sub = pd.read_csv(sub_csv, dtype={"image_id": str}).fillna("")
    dets = []
    for image_id, text in zip(sub["image_id"], sub["PredictionString"]):
        v = np.array(text.split(), float).reshape(-1, 6)
        v = v[v[:, 0] < NUM_CLASSES]
        dets.append(np.column_stack([np.full(len(v), ids[image_id]), v]))
    d = np.concatenate(dets)
    t, c = time.perf_counter(), time.process_time()
    anns = [{"id": j + 1, "image_id": int(i), "category_id": int(c), "iscrowd": 0,
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
            for j, (i, c, b) in enumerate(zip(gi, gc, gb.tolist()))]
    res = [{"image_id": int(r[0]), "category_id": int(r[1]), "score": r[2],
            "bbox": [r[3], r[4], r[5] - r[3], r[6] - r[4]]} for r in d.tolist()]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i} for i in ids.values()], "annotations": anns,
                           "categories": [{"id": c} for c in range(NUM_CLASSES)]}
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "AP": float(ev.stats[0]),
            "boxes": len(res)}


#: keys the metrics JSON gained after the baseline commit (issue 25: the ground truth's boxes without a reader, the frame
#: check; issue 24: the pooled human baseline beside the old mean); the rest must be equal
ADDED_KEYS = {"gt_boxes_without_reader", "frame_warning", "mAP40", "images", "cases", "rule"}


def _compare(got, want, path=""):
    """The first difference of two metrics JSONs (None when equal): COCO numbers to 1e-6, the rest to 1e-9."""
    if isinstance(want, dict):
        if [k for k in got if k in want] != list(want) or set(got) - set(want) - ADDED_KEYS:
            return f"{path}: keys differ ({list(got)} vs {list(want)})"
        for k in want:
            if k in ("pred", "gt"):
                continue
            diff = _compare(got[k], want[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    if isinstance(want, list):
        if len(got) != len(want):
            return f"{path}: lengths differ"
        for i, (g, w) in enumerate(zip(got, want)):
            diff = _compare(g, w, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if isinstance(want, float) and isinstance(got, (int, float)):
        tol = 1e-6 if "coco" in path else 1e-9
        return None if math.isclose(got, want, rel_tol=0, abs_tol=tol) else f"{path}: {got} != {want}"
    return None if got == want else f"{path}: {got!r} != {want!r}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 and 1,000 images")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 15000])
    ap.add_argument("--boxes", type=int, default=70, help="finding boxes per image in the submission")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sizes = [300, 1000] if args.quick else args.sizes
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp, baseline_tree() as old:
        for n in sizes:
            case = Path(tmp) / f"n{n}"
            gt, sub = make_case(case, n_images=n, boxes_per_image=args.boxes)
            runs = {}
            for name, root in (("detx", REPO), ("before", old)):
                out = case / f"{name}.json"
                runs[name] = timed_process([sys.executable, "tools/evaluate.py", "--gt", str(gt), "--pred", str(sub),
                                            "--out", str(out)], str(root), str(root))
                runs[name]["metrics"] = json.loads(out.read_text())
                print(f"{n} images, {name}: {runs[name]['wall']:.1f} s wall, {runs[name]['cpu']:.1f} s CPU, "
                      f"peak {runs[name]['rss_mb']:.0f} MB", flush=True)
            diff = _compare(runs["detx"]["metrics"], runs["before"]["metrics"])
            if diff:
                raise SystemExit(f"{n} images: the metrics differ from the code before the rewrite: {diff}")
            code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from bench_evaluate import cocoeval_alone; "
                    f"print(json.dumps(cocoeval_alone({str(gt)!r}, {str(sub)!r})))")
            alone = timed_process([sys.executable, "-c", code], str(REPO), str(REPO))
            coco = json.loads(alone["stdout"].strip().splitlines()[-1])
            print(f"{n} images, pycocotools COCOeval alone ({coco['boxes']} boxes): {coco['seconds']:.1f} s wall, "
                  f"{coco['cpu_seconds']:.1f} s CPU", flush=True)
            d, b = runs["detx"], runs["before"]
            rows += [
                {"case": f"tools/evaluate.py, {n} images, {coco['boxes'] / 1e6:.2f}M boxes (wall)", "value": d["wall"],
                 "unit": "s", "baseline": "the same command before the rewrite (pycocotools)",
                 "baseline_value": b["wall"], "ratio": b["wall"] / d["wall"]},
                {"case": f"tools/evaluate.py, {n} images (CPU: user + system)", "value": d["cpu"], "unit": "s",
                 "baseline": "the same command before the rewrite", "baseline_value": b["cpu"],
                 "ratio": b["cpu"] / d["cpu"]},
                {"case": f"tools/evaluate.py, {n} images, whole process (wall)", "value": d["wall"], "unit": "s",
                 "baseline": "pycocotools COCOeval alone on the same unfused boxes (build, evaluate, accumulate)",
                 "baseline_value": coco["seconds"], "ratio": coco["seconds"] / d["wall"]},
                {"case": f"tools/evaluate.py, {n} images, whole process (CPU)", "value": d["cpu"], "unit": "s",
                 "baseline": "pycocotools COCOeval alone on the same unfused boxes (CPU)",
                 "baseline_value": coco["cpu_seconds"], "ratio": coco["cpu_seconds"] / d["cpu"]},
                {"case": f"tools/evaluate.py, {n} images, peak memory", "value": d["rss_mb"], "unit": "MB",
                 "baseline": "the same command before the rewrite", "baseline_value": b["rss_mb"],
                 "ratio": b["rss_mb"] / d["rss_mb"]},
            ]
            notes.append(f"{n} images: metrics JSON equal to the code before the rewrite")
    for r in rows:
        print(f"{r['case']}: {r['value']:.1f} {r['unit']}; baseline {r['baseline_value']:.1f}; ratio {r['ratio']:.2f}x")
    result = {"name": "evaluate", "title": "tools/evaluate.py at real scale (the VinBigData train.csv)", "rows": rows,
              "notes": "; ".join(notes) + f". {os.cpu_count()} CPU cores shared with other jobs: wall times are noisy, "
              "CPU times less so; one run each. Peak memory is the process's maximum resident set size."}
    if args.json:
        sys.path.insert(0, str(REPO))
        from detx.core.io import write_json

        write_json(args.json, result, indent=2)


if __name__ == "__main__":
    main()
