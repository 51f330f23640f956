#!/usr/bin/env python
"""Training throughput: detx's Trainer (albumentations mapper, detx hooks) vs detectron2's plain DefaultTrainer
with its default DatasetMapper (RandomFlip + ResizeShortestEdge), same model, same data, same run; and the
other detectors (tiny RetinaNet, tiny Cascade R-CNN) under detx's Trainer against the tiny Faster R-CNN.

All train tiny configs (ResNet-18-FPN) on a synthetic prepared dataset; the rounds alternate the order of the
runs and the medians of detectron2's own per-iteration ``time`` and ``data_time`` are reported (the first
iterations of each round are warm-up and dropped). ``data_time`` is how long the iteration waited for the data
loader. On a GPU machine pass ``--device cuda`` and a larger ``--size``.

    python benchmarks/bench_train.py [--quick] [--json OUT.json] [--data PREPARED_ROOT]
        [--cases default-trainer retinanet cascade]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/quick_schedules/vindr_cxr_tiny.yaml")
#: what each run trains: "detx" and "baseline" the tiny Faster R-CNN (detx's Trainer / detectron2's DefaultTrainer),
#: the others the named tiny detector under detx's Trainer
CONFIGS = {
    "detx": TINY,
    "baseline": TINY,
    "retinanet": str(ROOT / "configs/quick_schedules/vindr_cxr_retinanet_tiny.yaml"),
    "cascade": str(ROOT / "configs/quick_schedules/vindr_cxr_cascade_tiny.yaml"),
}
DETECTORS = {"retinanet": "tiny RetinaNet (R18-FPN, p3-p7, 9 anchors)", "cascade": "tiny Cascade R-CNN (R18-FPN, 3 stages)"}


def make_data(out: Path, n: int, size: int) -> Path:
    from detx.synthetic.generator import generate_dataset
    from detx.workflows.prepare import prepare_dataset

    raw = out / "raw"
    generate_dataset(raw, dataset="vindr-cxr", n_train=n, n_test=1, seed=0, min_size=size, max_size=2 * size,
                     progress=False)
    prepared = out / "prepared"
    prepare_dataset(dataset="vindr-cxr", csv=raw / "train.csv", dicom_dir=raw / "train", out=prepared, size=size,
                    folds=2, seed=0, workers=1, report=False, progress=False)
    return prepared


def run_once(kind: str, data: Path, iters: int, warmup: int, size: int, batch: int, device: str, workers: int,
             out: Path) -> tuple[float, float]:
    """Median (seconds per iteration, data-loader wait per iteration) of one training round."""
    from detectron2.engine import DefaultTrainer

    from detx.engine.config import get_detx_cfg
    from detx.engine.trainer import Trainer, prepare_training

    opts = ["DETX.DATA_ROOT", str(data), "OUTPUT_DIR", str(out), "MODEL.DEVICE", device,
            "SOLVER.MAX_ITER", str(warmup + iters), "SOLVER.IMS_PER_BATCH", str(batch),
            "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", str(workers),
            "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size), "DETX.CURVES", "False",
            # training throughput only: no periodic evaluation / validation
            "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "DETX.VAL_PERIOD", "-1", "SEED", "0"]
    cfg = get_detx_cfg(CONFIGS[kind], opts, freeze=False)
    prepare_training(cfg)
    cfg.DATASETS.TEST = ()
    if kind == "baseline":
        cfg.INPUT.RANDOM_FLIP = "horizontal"  # DatasetMapper's own augmentation
    cfg.freeze()
    trainer = (DefaultTrainer if kind == "baseline" else Trainer)(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    t = [v for v, it in trainer.storage.history("time").values() if it >= warmup]
    d = [v for v, it in trainer.storage.history("data_time").values() if it >= warmup]
    return statistics.median(t), statistics.median(d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations and rounds (smoke run)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--data", help="a prepared dataset root (default: generate 32 synthetic images)")
    p.add_argument("--size", type=int, default=256, help="training image size (shortest edge)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS")
    p.add_argument("--cases", nargs="+", default=["default-trainer", *DETECTORS],
                   choices=["default-trainer", *DETECTORS],
                   help="what to time against detx's Trainer on the tiny Faster R-CNN (default: all)")
    args = p.parse_args(argv)
    kinds = ["detx"] + (["baseline"] if "default-trainer" in args.cases else []) + \
        [k for k in DETECTORS if k in args.cases]
    iters, warmup, rounds = (4, 2, 1) if args.quick else (12, 3, 2)
    for name in ("detectron2", "fvcore", "detx"):
        # quiet, yet "enabled for INFO" so that DefaultTrainer does not install its console logger
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.propagate = False
        lg.addHandler(logging.NullHandler())
    import torch

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else make_data(tmp, 32 if not args.quick else 12, args.size)
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        t0 = time.perf_counter()
        for r in range(rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                res[kind].append(run_once(kind, data, iters, warmup, args.size, args.batch, args.device,
                                          args.workers, tmp / f"{kind}{r}"))
        elapsed = time.perf_counter() - t0
    sec = {k: statistics.median(v[0] for v in res[k]) for k in res}
    wait = {k: statistics.median(v[1] for v in res[k]) for k in res}
    where = f"{args.size} px, batch {args.batch}, {args.device}, {args.workers} loader workers"
    setting = f"tiny R18-FPN Faster R-CNN, {where}"
    rows = []
    if "baseline" in res:
        rows += [
            {"case": f"training iterations/s ({setting})", "value": 1.0 / sec["detx"], "unit": "it/s",
             "baseline": "detectron2 DefaultTrainer + DatasetMapper", "baseline_value": 1.0 / sec["baseline"],
             "ratio": sec["baseline"] / sec["detx"]},
            {"case": "data-loader wait per iteration (data_time)", "value": wait["detx"], "unit": "s",
             "baseline": "detectron2 DefaultTrainer + DatasetMapper", "baseline_value": wait["baseline"],
             "ratio": wait["detx"] / wait["baseline"] if wait["baseline"] > 0 else float("nan")},
        ]
    for kind, what in DETECTORS.items():
        if kind in res:  # ratio < 1: slower per iteration than the Faster R-CNN
            rows.append({"case": f"training iterations/s, {what}, detx Trainer ({where})", "value": 1.0 / sec[kind],
                         "unit": "it/s", "baseline": "tiny R18-FPN Faster R-CNN, detx Trainer (same run)",
                         "baseline_value": 1.0 / sec["detx"], "ratio": sec["detx"] / sec[kind]})
    shares = ", ".join(f"{k} {wait[k] / sec[k]:.0%}" for k in res)
    notes = (f"{rounds} alternating round(s) of {warmup}+{iters} iterations per run; medians of detectron2's "
             f"per-iteration time/data_time after warm-up; torch threads {threads}; {elapsed:.0f} s total. "
             f"data_time share of an iteration: {shares}. ratio > 1: faster than the baseline (it/s) / waits "
             "more (data_time).")
    for r in rows:
        print(f"{r['case']}: {r['value']:.4g} {r['unit']} | {r['baseline']} {r['baseline_value']:.4g} "
              f"{r['unit']} | ratio {r['ratio']:.3f}")
    print(notes)
    if args.json:
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"name": "train", "title": "Training throughput: detx Trainer vs "
                                               "detectron2 DefaultTrainer; RetinaNet and Cascade R-CNN vs "
                                               "Faster R-CNN", "rows": rows, "notes": notes}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
