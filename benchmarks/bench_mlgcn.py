#!/usr/bin/env python
"""ML-GCN head vs the linear head: per-class AUC of the tiny image classifier on the held-out fold.

Both runs are ordinary ``tools/train_net.py`` runs of ``configs/quick_schedules/vindr_cxr_cls_tiny.yaml`` on the same
synthetic VinBigData-layout images (prepared once, 2 folds), the same seed and schedule; only
``MODEL.CLASSIFIER.HEAD`` differs (``linear`` vs ``mlgcn``, tau 0.4, p 0.2, one-hot nodes). The AUCs are the trainer's
own last ``cls/*`` evaluation of fold 1 (``metrics.json``). An accuracy benchmark, not a speed one: on a few hundred
synthetic images it says whether the head trains and how far apart the two land, not which is better on real data.

    python benchmarks/bench_mlgcn.py [--n-train 160] [--size 128] [--iters 300] [--json OUT.json]
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

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/quick_schedules/vindr_cxr_cls_tiny.yaml"


def last_cls_metrics(out: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "cls/auc" in r]
    if not rows:
        raise RuntimeError(f"{out}/metrics.json has no cls/auc")
    return {k[4:]: v for k, v in rows[-1].items() if k.startswith("cls/")}


def train(data: Path, out: Path, head: str, iters: int, size: int) -> float:
    args = [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file", str(CONFIG),
            "DETX.DATA_ROOT", str(data), "DETX.FOLD", "1", "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
            "MODEL.CLASSIFIER.HEAD", head, "MODEL.CLASSIFIER.MLGCN.HIDDEN", "256",
            "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.8)},)", "TEST.EVAL_PERIOD", str(iters),
            "DETX.VAL_PERIOD", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(iters), "DETX.EVAL.BOOTSTRAP", "0",
            "DETX.CURVES", "False", "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
            "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size), "SEED", "0"]
    t = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"train_net.py ({head}) failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=160, help="synthetic training images (default 160)")
    p.add_argument("--size", type=int, default=128, help="image size (default 128)")
    p.add_argument("--iters", type=int, default=300, help="training iterations per head (default 300)")
    p.add_argument("--data", help="a prepared dataset root (default: generate synthetic images)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_train import make_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else make_data(tmp, args.n_train, args.size)
        res, secs = {}, {}
        for head in ("linear", "mlgcn"):
            secs[head] = train(data, tmp / head, head, args.iters, args.size)
            res[head] = last_cls_metrics(tmp / head)
    classes = sorted(k[4:] for k in res["linear"] if k.startswith("auc-"))

    def fmt(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["| output | linear head AUC | ML-GCN head AUC |", "|---|---|---|",
             f"| abnormal | {fmt(res['linear'].get('auc'))} | {fmt(res['mlgcn'].get('auc'))} |"]
    for c in classes:
        lines.append(f"| {c} | {fmt(res['linear'].get('auc-' + c))} | {fmt(res['mlgcn'].get('auc-' + c))} |")
    lines.append(f"| macro (classes) | {fmt(res['linear'].get('auc_macro'))} | {fmt(res['mlgcn'].get('auc_macro'))} |")
    notes = (f"{args.n_train} synthetic images ({args.size} px), fold 1 held out, {args.iters} iterations each, seed 0; "
             f"training time linear {secs['linear']:.0f} s, ML-GCN {secs['mlgcn']:.0f} s (shared CPU, noisy).")
    print("\n".join(lines))
    print(notes)
    if args.json:
        Path(args.json).write_text(json.dumps({"name": "mlgcn", "per_class": res, "seconds": secs, "notes": notes},
                                              indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
