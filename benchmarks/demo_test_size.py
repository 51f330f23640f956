#!/usr/bin/env python
"""How much of the demo's spread is the size of its test set: one finished demo's models scored on many test sets.

The demo scores its models on 40 generated test images (and a held-out fold of 40). This script takes a finished
demo folder (``make demo`` -> ``output/demo``), draws a larger synthetic test set with another generator seed (so no
image is one the models trained on), predicts it with the demo's own detector and CNN exactly as the demo predicts its
test set, and scores:

- all the images: the challenge metric (mAP40, bootstrap 95% interval) and the image-level AUC;
- disjoint random subsets of each ``--subsets`` size: their mAP40 and AUC, min / max / standard deviation.

The same models on subsets of 40 images show the spread a 40-image test set gives with no change in training at all
(the part of the seed-to-seed spread that is sampling, docs/reproducibility.md):

    python benchmarks/demo_test_size.py --demo output/demo --n-test 400 --json output/demo_test_size.json

Generation and prediction are reused when their files exist (``--work``, default ``<demo>/test_size``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logged_run import run_logged  # noqa: E402


def run(cmd: list[str], log: Path) -> None:
    """One step, printed and run with its output in ``log`` (benchmarks/logged_run.py)."""
    print("$", " ".join(cmd), flush=True)
    run_logged(cmd, log)


def subset_figures(values: list[float]) -> dict:
    """min, max, standard deviation (ddof 1) and mean of the subsets' values."""
    v = np.asarray([x for x in values if x is not None], float)
    return {"n": int(v.size), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "values": [float(x) for x in v]}


def score(gt_csv: Path, submission: Path, subsets: list[int], n_boot: int) -> dict:
    """mAP40 and image-level AUC on all images and on disjoint random subsets of each size."""
    from sklearn.metrics import roc_auc_score

    from detx.core.image_scores import image_scores_from_predictions
    from detx.core.predictions import Predictions
    from detx.core.submission import read_submission
    from detx.evaluation.ground_truth import load_ground_truth
    from detx.evaluation.vinbigdata import bootstrap_map_ci, vinbigdata_map

    gts = load_ground_truth(gt_csv)
    k = len(gts.classes)
    preds = dict(read_submission(submission, strict=False, num_classes=k + 1, image_ids=list(gts.gt)))
    ids = sorted(gts.gt)

    def figures(sub: list[str]) -> tuple[float, float | None]:
        m = vinbigdata_map({i: gts.gt[i] for i in sub}, {i: preds[i] for i in sub if i in preds}, num_classes=k)
        labels = [int(len(gts.gt[i][1]) > 0) for i in sub]
        scores = [image_scores_from_predictions(preds.get(i, Predictions()), k) for i in sub]
        auc = float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None
        return float(m["mAP40"]), auc

    full_map, full_auc = figures(ids)
    ci = bootstrap_map_ci(gts.gt, preds, num_classes=k, n_boot=n_boot)
    order = list(np.random.default_rng(0).permutation(ids))
    out = {"images": len(ids), "mAP40": full_map, "mAP40_ci95": list(ci) if ci else None, "auc": full_auc,
           "subsets": {}}
    for n in subsets:
        parts = [order[j:j + n] for j in range(0, len(order) - n + 1, n)]
        if len(parts) < 2:
            continue
        got = [figures(p) for p in parts]
        out["subsets"][str(n)] = {"mAP40": subset_figures([g[0] for g in got]),
                                  "auc": subset_figures([g[1] for g in got])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="output/demo", help="a finished vindr-cxr demo folder")
    p.add_argument("--n-test", type=int, default=400, help="images of the larger test set")
    p.add_argument("--seed", type=int, default=100, help="generator seed of the larger test set (not the demo's)")
    p.add_argument("--subsets", type=int, nargs="+", default=[40, 100, 200])
    p.add_argument("--n-boot", type=int, default=300)
    p.add_argument("--work", default=None, help="generated images and predictions (default <demo>/test_size)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()
    demo = Path(args.demo)
    results = json.loads((demo / "results.json").read_text())
    s = results["settings"]
    if s["dataset"] != "vindr-cxr":
        raise SystemExit(f"{demo}: a {s['dataset']} demo; this measures the vindr-cxr demo's test set")
    if args.seed == s["seed"]:
        raise SystemExit(f"--seed {args.seed} is the demo's own seed: its test images could repeat its training ones")
    work = Path(args.work) if args.work else demo / "test_size"
    work.mkdir(parents=True, exist_ok=True)
    log, raw, sub = work / "log.txt", work / "raw", work / "submission.csv"
    py = sys.executable
    if not (raw / "test_ground_truth.csv").exists():
        run([py, "-m", "detx.synthetic", "--out", str(raw), "--dataset", "vindr-cxr", "--n-train", "8", "--n-test",
             str(args.n_test), "--seed", str(args.seed), "--min-size", str(s["min_size"]), "--max-size",
             str(s["max_size"])], log)
    if not sub.exists():  # the demo's own test-set command, on the larger set
        from detx.workflows.demo import DemoSettings, test_prediction_cmd

        settings = DemoSettings(out=demo, python=py, **{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in s.items()})
        run(test_prediction_cmd(settings, raw / "test", sub, work / "cache"), log)
    figures = score(raw / "test_ground_truth.csv", sub, args.subsets, args.n_boot)
    figures.update({"demo": str(demo), "demo_seed": s["seed"], "test_seed": args.seed,
                    "demo_test_mAP40": results["numbers"].get("test_mAP40"),
                    "demo_test_auc": results["numbers"].get("test_auc"),
                    "environment": results.get("environment")})
    ci = figures["mAP40_ci95"]
    print(f"\nthe demo's models (seed {s['seed']}) on {figures['images']} new test images (seed {args.seed}): "
          f"mAP40 {figures['mAP40']:.3f}" + (f" (95% {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
          + f", AUC {figures['auc']:.3f}; on the demo's own {s['n_test']}: mAP40 {figures['demo_test_mAP40']:.3f}, "
          f"AUC {figures['demo_test_auc']:.3f}")
    print(f"{'subset size':>11}  {'subsets':>7}  {'mAP40 min-max':>15}  {'sd':>6}  {'mean':>6}  "
          f"{'AUC min-max':>13}  {'sd':>6}")
    for n, f in figures["subsets"].items():
        m, a = f["mAP40"], f["auc"]
        print(f"{n:>11}  {m['n']:>7}  {m['min']:.3f}-{m['max']:.3f}      {m['sd']:.3f}  {m['mean']:.3f}  "
              f"{a['min']:.3f}-{a['max']:.3f}    {a['sd']:.3f}")
    if args.json:
        from detx.core.io import write_json

        write_json(args.json, figures, indent=2)


if __name__ == "__main__":
    main()
