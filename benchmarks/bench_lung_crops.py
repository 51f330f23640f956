#!/usr/bin/env python
"""The tiny image classifier on lung crops vs on whole images, the same synthetic chests (docs/lung-fields.md).

One synthetic VinBigData-layout set (classic profile, with ``--lung-masks``) is prepared twice by
``datasets/prepare_vindr_cxr.py``: whole images, and ``--crop lungs`` with the lung box from the drawn masks
(``--lung-source masks``) or from the tiny lung segmenter (``--lung-source segmenter``: ``configs/quick_schedules/
lungs_mask_tiny.yaml`` trained on the lung masks of another synthetic set, another seed). The tiny classifier
(``configs/quick_schedules/vindr_cxr_cls_tiny.yaml``) trains on fold ``--fold`` of each with the same settings; the table
gives the held-out fold's AUC of P(abnormal) and the mean per-class AUC (``cls/auc``, ``cls/auc_macro`` of the final
evaluation), the CPU seconds each training used, and how much of the image the crops kept.

    nice -n 5 python benchmarks/bench_lung_crops.py --out output/bench_lung_crops [--n-train 160] [--max-iter 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logged_run import run_logged  # noqa: E402

from detx.viz.curves import last_metric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLS_TINY = ROOT / "configs/quick_schedules/vindr_cxr_cls_tiny.yaml"
LUNGS_TINY = ROOT / "configs/quick_schedules/lungs_mask_tiny.yaml"


def _crop_iou_vs_masks(meta, masks: Path, margin: float) -> dict[str, float]:
    """IoU of each recorded crop with the crop the drawn lung masks give (same margin): mean and min."""
    import numpy as np

    from detx.core.crop import crop_around
    from detx.data.lung_masks import lung_boxes_from_masks
    from detx.data.readers import ProblemLog

    sizes = {str(r.image_id): (int(r.orig_width), int(r.orig_height)) for r in meta.itertuples()}
    boxes = lung_boxes_from_masks(masks, sizes, ProblemLog(strict=True))
    ious = []
    for r in meta.itertuples():
        c = crop_around(boxes[str(r.image_id)], sizes[str(r.image_id)], margin)
        ix = max(0, min(c.x1, r.crop_x1) - max(c.x0, r.crop_x0))
        iy = max(0, min(c.y1, r.crop_y1) - max(c.y0, r.crop_y0))
        inter = ix * iy
        union = (c.x1 - c.x0) * (c.y1 - c.y0) + (r.crop_x1 - r.crop_x0) * (r.crop_y1 - r.crop_y0) - inter
        ious.append(inter / union)
    return {"mean": float(np.mean(ious)), "min": float(np.min(ious))}


def _fmt(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="work folder (data, runs, bench_lung_crops.json); default: a "
                   "temporary folder, removed at the end")
    p.add_argument("--json", default=None, help="also write the rows for benchmarks/run_all.py (make bench) here")
    p.add_argument("--quick", action="store_true", help="make bench's size: 80 images, 100 iterations")
    p.add_argument("--n-train", type=int, default=160, help="synthetic train images (default 160)")
    p.add_argument("--min-size", type=int, default=192, help="synthetic images' smallest longer side (default 192)")
    p.add_argument("--max-size", type=int, default=256, help="synthetic images' largest longer side (default 256)")
    p.add_argument("--size", type=int, default=128, help="prepared PNG size and classifier input (default 128)")
    p.add_argument("--folds", type=int, default=4, help="folds (default 4)")
    p.add_argument("--fold", type=int, default=0, help="the held-out fold (default 0)")
    p.add_argument("--max-iter", type=int, default=200, help="classifier iterations (default 200)")
    p.add_argument("--margin", type=float, default=0.05, help="--crop-margin (default 0.05)")
    p.add_argument("--lung-source", default="masks", choices=["masks", "segmenter"],
                   help="where the lung box comes from (default masks: the drawn ones)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.max_iter = min(args.n_train, 80), min(args.max_iter, 100)
    if args.out is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return _bench(args, Path(tmp))
    return _bench(args, Path(args.out).resolve())


def _bench(args: argparse.Namespace, out: Path) -> int:
    log = out / "log.txt"
    py = sys.executable
    t0 = time.time()
    data = out / "synthetic"
    if not (data / "train.csv").is_file():
        run_logged([py, "-m", "detx.synthetic", "--out", data, "--n-train", args.n_train, "--n-test", 2,
                    "--seed", args.seed, "--min-size", args.min_size, "--max-size", args.max_size, "--lung-masks",
                    "--no-progress"], log)
    prep = [py, "datasets/prepare_vindr_cxr.py", "--csv", data / "train.csv", "--dicom-dir", data / "train",
            "--size", args.size, "--folds", args.folds, "--workers", 1, "--no-report"]
    run_logged([*prep, "--out", out / "whole"], log)
    crop_opts = ["--crop", "lungs", "--crop-margin", args.margin]
    segmenter_cpu = None
    if args.lung_source == "masks":
        crop_opts += ["--lung-masks", data / "lung_masks" / "train"]
    else:  # the segmenter learns from another set's masks
        lungs = out / "lung_set"
        run_logged([py, "-m", "detx.synthetic", "--out", lungs, "--n-train", 32, "--n-test", 1,
                    "--seed", args.seed + 1000, "--min-size", args.min_size, "--max-size", args.max_size,
                    "--lung-masks", "--no-progress"], log)
        run_logged([py, "datasets/prepare_lung_masks.py", "--layout", "folders", "--images", lungs / "train",
                    "--masks", lungs / "lung_masks" / "train", "--out", out / "lungs_prepared", "--size", args.size,
                    "--folds", 0, "--workers", 1, "--quiet"], log)
        segmenter_cpu = run_logged([py, "tools/train_net.py", "--config-file", LUNGS_TINY, "DETX.DATA_ROOT",
                                    out / "lungs_prepared", "DETX.FOLD", -1, "OUTPUT_DIR", out / "lung_segmenter",
                                    "MODEL.DEVICE", "cpu", "TEST.EVAL_PERIOD", 0], log)
        crop_opts += ["--lung-config", LUNGS_TINY, "--lung-weights", out / "lung_segmenter" / "model_final.pth"]
    run_logged([*prep, "--out", out / "crops", *crop_opts], log)

    import pandas as pd

    meta = pd.read_csv(out / "crops" / "meta.csv", dtype={"image_id": str})
    kept = ((meta["crop_x1"] - meta["crop_x0"]) * (meta["crop_y1"] - meta["crop_y0"])
            / (meta["orig_width"] * meta["orig_height"]))
    crops_summary = json.loads((out / "crops" / "summary.json").read_text())
    crop_iou = _crop_iou_vs_masks(meta, data / "lung_masks" / "train", args.margin) \
        if args.lung_source == "segmenter" else None
    rows = {}
    for name in ("whole", "crops"):
        run = out / f"cls_{name}"
        cpu = run_logged([
            py, "tools/train_net.py", "--config-file", CLS_TINY, "DETX.DATA_ROOT", out / name, "DETX.FOLD",
            args.fold, "OUTPUT_DIR", run, "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", args.max_iter,
            "SOLVER.STEPS", f"({int(args.max_iter * 0.8)},)", "TEST.EVAL_PERIOD", args.max_iter,
            "DETX.VAL_PERIOD", -1, "DETX.EVAL.BOOTSTRAP", 0, "INPUT.MIN_SIZE_TRAIN", f"({args.size},)",
            "INPUT.MAX_SIZE_TRAIN", args.size, "INPUT.MIN_SIZE_TEST", args.size, "INPUT.MAX_SIZE_TEST",
            args.size], log)
        rows[name] = {"auc": last_metric(run / "metrics.json", "cls/auc"),
                      "auc_macro": last_metric(run / "metrics.json", "cls/auc_macro"), "cpu_s": round(cpu, 1)}
    result = {"settings": vars(args), "held_out_images": int((meta["fold"] == args.fold).sum()),
              "images": len(meta), "crop_area_kept": {"mean": float(kept.mean()), "min": float(kept.min()),
                                                      "max": float(kept.max())},
              "crop_problems": crops_summary.get("problems", {}), "segmenter_cpu_s": segmenter_cpu,
              "segmenter_crop_iou_vs_mask_crop": crop_iou,
              "runs": rows, "wall_s": round(time.time() - t0, 1)}
    (out / "bench_lung_crops.json").write_text(json.dumps(result, indent=2))
    print(f"tiny classifier, {len(meta)} synthetic chests ({result['held_out_images']} held out, fold {args.fold}), "
          f"{args.size} px, {args.max_iter} iterations; lung box from {args.lung_source}; the crops keep "
          f"{kept.mean():.0%} of the image on average")
    print(f"{'input':<14} {'AUC abnormal':>12} {'mean class AUC':>15} {'CPU s':>7}")
    for name, label in (("whole", "whole image"), ("crops", "lung crop")):
        r = rows[name]
        print(f"{label:<14} {_fmt(r['auc']):>12} {_fmt(r['auc_macro']):>15} {r['cpu_s']:>7.1f}")
    if crop_iou is not None:
        print(f"segmenter crops vs the drawn masks' crops: IoU mean {crop_iou['mean']:.3f}, min {crop_iou['min']:.3f} "
              f"(segmenter training {segmenter_cpu:.0f} CPU s)")
    if crops_summary.get("problems"):
        print(f"crop problems: {crops_summary['problems']}")
    print(f"written: {out / 'bench_lung_crops.json'}")
    if args.json:
        w, c = rows["whole"], rows["crops"]
        table = [{"case": f"held-out {what} AUC", "value": c[key], "unit": "", "baseline": "whole images",
                  "baseline_value": w[key], "ratio": c[key] / w[key] if c[key] and w[key] else float("nan")}
                 for what, key in (("P(abnormal)", "auc"), ("mean per-class", "auc_macro"))]
        notes = (f"The tiny classifier on lung crops (value) vs whole images (baseline) of the same {len(meta)} "
                 f"synthetic chests, fold {args.fold} held out ({result['held_out_images']} images), {args.size} px, "
                 f"{args.max_iter} iterations; lung box from {args.lung_source}. An accuracy comparison, not a speed "
                 "one (docs/lung-fields.md).")
        Path(args.json).write_text(json.dumps({"name": "lung_crops", "title": "Classifier on lung crops vs whole "
                                               "images", "rows": table, "notes": notes, "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
