#!/usr/bin/env python
"""The image classifier's training recipes at equal CPU cost on the demo's synthetic chest set, side by side with the
detection-derived P(abnormal) (docs/classifiers.md).

Recipes (each through ``tools/train_net.py``, the tiny classifier's 256 px input, fold 0):

- ``scratch``: BCE from random weights (the demo's old recipe);
- ``supcon+frozen`` / ``supcon+finetune``: stage 1 SupCon (``--stage1-share`` of the budget, one run shared by both),
  then stage 2 with the backbone frozen (features cached) or fine-tuned;
- ``detector-init``: BCE from the demo detector's backbone (``train/model_best.pth``);
- ``vgg16-frozen``: torchvision VGG16 (random init: ImageNet weights are a download), frozen, cached features, a head.

Every training run gets ``DETX.CPU_BUDGET_S`` (its steps stop when the budget is spent); the table's "CPU s" is the
CPU time the recipe's processes really used, feature extraction and evaluation included. Columns: held-out AUC (fold 0,
the final model), test AUC (the synthetic test DICOMs, as ``tools/predict.py`` classifies them), the pointing game of
Grad-CAM on the held-out abnormal images (``tools/explain.py``). The reference row is the demo's detection-derived
P(abnormal) (the fitted classifier on the detector's boxes).

    python -m detx.workflows.demo --out output/demo          # first: the demo's data, detector and reference numbers
    python benchmarks/bench_classifier_recipes.py --demo-dir output/demo [--cpu-seconds 120] [--out DIR]
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
Q = ROOT / "configs/quick_schedules"
RECIPES = ("scratch", "supcon+frozen", "supcon+finetune", "detector-init", "vgg16-frozen")


def train(out: Path, config: Path, demo: Path, budget: float, size: int, log: Path, *opts: str) -> tuple[Path, float]:
    """One training run under the CPU budget; returns its OUTPUT_DIR and the CPU seconds it used (recorded in
    ``OUTPUT_DIR/cpu_s.txt``, so that a second invocation reuses the run and its figure)."""
    if (out / "model_final.pth").is_file() and (out / "cpu_s.txt").is_file():
        return out, float((out / "cpu_s.txt").read_text())
    cpu = run_logged([
        sys.executable, "tools/train_net.py", "--config-file", config, "--overwrite",
        "DETX.DATA_ROOT", demo / "prepared", "DETX.FOLD", "0", "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu",
        "MODEL.CLASSIFIER.NUM_CLASSES", "14", "SOLVER.MAX_ITER", "5000", "SOLVER.STEPS", "()",
        "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "DETX.VAL_PERIOD", "-1",
        "DETX.BEST_METRIC", "", "DETX.CURVES", "False", "DETX.EVAL.BOOTSTRAP", "0", "DETX.CPU_BUDGET_S", str(budget),
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", size, "INPUT.MIN_SIZE_TEST", size,
        "INPUT.MAX_SIZE_TEST", size, "SEED", "0", *opts], log)
    (out / "cpu_s.txt").write_text(f"{cpu:.1f}\n")
    return out, cpu


def score(run: Path, demo: Path, size: int, log: Path) -> dict[str, float | None]:
    """Held-out AUC (the final evaluation of training), test AUC and pointing game of a trained run."""
    cfg, w = run / "config.yaml", run / "model_final.pth"
    test_csv, test_json, heat = run / "test_classification.csv", run / "test_metrics.json", run / "heatmaps"
    if not test_json.is_file():
        run_logged([sys.executable, "tools/predict.py", "--quiet", "--classifier-config", cfg,
                    "--classifier-weights", w, "--input", demo / "raw" / "test", "--dicom-size", size,
                    "--cache-dir", demo / "cache", "--classification-out", test_csv], log)
        run_logged([sys.executable, "tools/evaluate.py", "--gt", demo / "raw" / "test_ground_truth.csv",
                    "--pred", test_csv, "--out", test_json], log)
    if not (heat / "summary.json").is_file():
        run_logged([sys.executable, "tools/explain.py", "--config-file", cfg, "--weights", w, "--input",
                    demo / "prepared" / "annotations" / "val_fold0.json", "--out", heat, "--method", "gradcam"], log)
    return {"heldout_auc": last_metric(run / "metrics.json", "cls/auc"),
            "test_auc": (json.loads(test_json.read_text()).get("image_level") or {}).get("auc"),
            "pointing_game": json.loads((heat / "summary.json").read_text()).get("pointing_game"),
            "iterations": last_metric(run / "metrics.json", "cpu_budget_iters")}


def reference(demo: Path) -> dict[str, float | None]:
    val, det = demo / "val" / "metrics.json", demo / "test_detection_only" / "metrics.json"
    return {"heldout_auc": (json.loads(val.read_text()).get("image_level") or {}).get("auc") if val.is_file() else None,
            "test_auc": (json.loads(det.read_text()).get("image_level") or {}).get("auc") if det.is_file() else None,
            "pointing_game": None, "iterations": None, "cpu_s": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", type=Path, default=ROOT / "output" / "demo",
                    help="a demo output folder (its prepared data, detector and reference metrics)")
    ap.add_argument("--out", type=Path, default=None, help="default: DEMO_DIR/recipes")
    ap.add_argument("--cpu-seconds", type=float, default=120.0, help="CPU budget of each recipe's training steps")
    ap.add_argument("--stage1-share", type=float, default=0.7, help="the share of SupCon's stage 1 in the budget")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    demo = args.demo_dir.resolve()
    out = (args.out or demo / "recipes").resolve()
    det = demo / "train" / "model_best.pth"
    if not (demo / "prepared" / "annotations" / "val_fold0.json").is_file() or not det.is_file():
        print(f"{demo} is not a demo folder with a trained detector: run python -m detx.workflows.demo --out {demo}",
              file=sys.stderr)
        return 2
    log = out / "bench.log"
    b, s1 = args.cpu_seconds, args.cpu_seconds * args.stage1_share
    tiny, cache = str(Q / "vindr_cxr_cls_tiny.yaml"), "MODEL.CLASSIFIER.FEATURE_CACHE"
    rows: dict[str, dict] = {}
    stage1 = out / "supcon-stage1"
    for name in args.recipes.split(","):
        if name not in RECIPES:
            print(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}", file=sys.stderr)
            return 2
        shared_cpu = 0.0
        if name.startswith("supcon"):  # stage 1, once for both stage-2 variants; its CPU counts for each
            _, shared_cpu = train(stage1, Q / "vindr_cxr_cls_supcon_tiny.yaml", demo, s1, args.size, log)
        if name == "scratch":
            run, cpu = train(out / name, tiny, demo, b, args.size, log)
        elif name.startswith("supcon"):
            frozen = name == "supcon+frozen"
            run, cpu = train(out / name, Q / "vindr_cxr_cls_stage2_tiny.yaml", demo, b - s1, args.size, log,
                             "MODEL.WEIGHTS", stage1 / "model_final.pth", "MODEL.CLASSIFIER.FREEZE_BACKBONE",
                             str(frozen), *([cache, out / name / "features.pt"] if frozen else
                                            ["SOLVER.BASE_LR", "0.005"]))
        elif name == "detector-init":
            run, cpu = train(out / name, tiny, demo, b, args.size, log, "MODEL.WEIGHTS", det)
        else:  # vgg16-frozen
            run, cpu = train(out / name, Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml", demo, b, args.size, log,
                             cache, out / name / "features.pt")
        rows[name] = {**score(run, demo, args.size, log), "cpu_s": cpu + shared_cpu}
        print(f"{name}: {rows[name]}", flush=True)
    knn = last_metric(stage1 / "metrics.json", "cls/knn_auc") if (stage1 / "metrics.json").is_file() else None
    rows = {"detection-derived (reference)": reference(demo), **rows}  # read last: the demo may still be finishing

    def f(v: float | None, nd: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{nd}f}"

    print(f"\nrecipes at a CPU budget of {b:.0f} s of training steps each ({args.size} px, fold 0 of {demo}; "
          f"SupCon stage 1 {s1:.0f} s, its k-NN AUC {f(knn)}):")
    print(f"{'recipe':32s} {'held-out AUC':>12s} {'test AUC':>9s} {'pointing':>9s} {'iters':>6s} {'CPU s':>6s}")
    for name, r in rows.items():
        print(f"{name:32s} {f(r['heldout_auc']):>12s} {f(r['test_auc']):>9s} {f(r['pointing_game']):>9s} "
              f"{f(r['iterations'], 0):>6s} {f(r['cpu_s'], 0):>6s}")
    if args.json:
        args.json.write_text(json.dumps({"cpu_seconds": b, "stage1_knn_auc": knn, "rows": rows,
                                         "date": time.strftime("%Y-%m-%d")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
