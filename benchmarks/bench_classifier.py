#!/usr/bin/env python
"""Image-classifier training throughput: detx's Trainer with ``DetxClassifier`` (torchvision DenseNet-121 backbone,
the albumentations mapper, detx's hooks) vs a plain PyTorch loop with the same torchvision DenseNet-121, the same
images, batch size, optimizer and loss, in the same run.

The rounds alternate between the two; medians of the per-iteration time after warm-up are reported (the plain loop
times data loading and the step the way detectron2's ``time`` does). On a GPU machine pass ``--device cuda``.

    python benchmarks/bench_classifier.py [--quick] [--json OUT.json] [--device cuda] [--size 256]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/classification/vindr_cxr_densenet121.yaml")


def run_detx(data: Path, iters: int, warmup: int, size: int, batch: int, device: str, out: Path) -> float:
    from detx.engine.config import get_detx_cfg
    from detx.engine.trainer import Trainer, prepare_training

    opts = ["DETX.DATA_ROOT", str(data), "OUTPUT_DIR", str(out), "MODEL.DEVICE", device,
            "SOLVER.MAX_ITER", str(warmup + iters), "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.BASE_LR", "0.01",
            "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size), "DETX.CURVES", "False",
            "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "DETX.VAL_PERIOD", "-1", "SEED", "0",
            "DETX.AUG.AFFINE_PROB", "0", "DETX.AUG.BRIGHTNESS_CONTRAST_PROB", "0"]  # the baseline only flips
    cfg = get_detx_cfg(CONFIG, opts, freeze=False)
    prepare_training(cfg)
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return statistics.median(v for v, it in trainer.storage.history("time").values() if it >= warmup)


def run_plain(data: Path, iters: int, warmup: int, size: int, batch: int, device: str) -> float:
    """torchvision DenseNet-121 (15 sigmoid outputs) trained by hand on the same PNGs and labels."""
    import cv2
    import torch
    import torchvision

    from detx.core.prepared import image_level_targets, load_prepared_coco

    coco = load_prepared_coco(data / "annotations" / "train_fold0.json")
    items = []
    for uid, im in coco.images.items():
        anns = [{"category_id": int(c)} for c in coco.gt[uid][1]]
        items.append((coco.image_path(uid), image_level_targets({**im, "annotations": anns}, 14)))

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(items)

        def __getitem__(self, i: int):
            path, target = items[i]
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
            h, w = img.shape[:2]
            s = min(size / min(h, w), size / max(h, w))  # detectron2's ResizeShortestEdge(size, max_size=size)
            img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
            if np.random.rand() < 0.5:
                img = img[:, ::-1]
            x = (torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))).float() - 120.0) / 58.0
            return x, torch.as_tensor(target)

    def collate(batch_):
        xs, ys = zip(*batch_)
        hh, ww = max(x.shape[1] for x in xs), max(x.shape[2] for x in xs)
        out = torch.zeros(len(xs), 3, hh, ww)
        for k, x in enumerate(xs):
            out[k, :, : x.shape[1], : x.shape[2]] = x
        return out, torch.stack(ys)

    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=15).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sampler = torch.utils.data.RandomSampler(items, replacement=True, num_samples=batch * (warmup + iters))
    loader = torch.utils.data.DataLoader(Images(), batch_size=batch, sampler=sampler, collate_fn=collate)
    times = []
    t = time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return statistics.median(times[warmup:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations, smaller images (smoke run)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--data", help="a prepared dataset root (default: generate synthetic images)")
    p.add_argument("--size", type=int, default=None, help="training image size (default 128; --quick 64)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    iters, warmup, rounds = (3, 1, 1) if args.quick else (10, 2, 2)
    size = args.size or (64 if args.quick else 128)
    for name in ("detectron2", "fvcore", "detx"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.propagate = False
        lg.addHandler(logging.NullHandler())
    import torch
    from bench_train import make_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else make_data(tmp, 24 if not args.quick else 12, max(size, 64))
        res: dict[str, list[float]] = {"detx": [], "plain": []}
        t0 = time.perf_counter()
        for r in range(rounds):
            for kind in ("detx", "plain") if r % 2 == 0 else ("plain", "detx"):
                if kind == "detx":
                    res[kind].append(run_detx(data, iters, warmup, size, args.batch, args.device, tmp / f"d{r}"))
                else:
                    res[kind].append(run_plain(data, iters, warmup, size, args.batch, args.device))
        elapsed = time.perf_counter() - t0
    sec = {k: statistics.median(v) for k, v in res.items()}
    where = f"CUDA {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else f"{args.device}"
    rows = [{"case": f"classifier training iterations/s (DenseNet-121, {size} px, batch {args.batch}, {where})",
             "value": 1.0 / sec["detx"], "unit": "it/s",
             "baseline": "plain PyTorch loop, same torchvision DenseNet-121 and images",
             "baseline_value": 1.0 / sec["plain"], "ratio": sec["plain"] / sec["detx"]}]
    notes = (f"{rounds} alternating round(s) of {warmup}+{iters} iterations; medians of the per-iteration time "
             f"(data loading + step) after warm-up; torch threads {torch.get_num_threads()}; {elapsed:.0f} s total. "
             "Both flip horizontally and nothing else; detx adds its mapper, masked pooling and hooks. ratio > 1: "
             "detx faster.")
    for r in rows:
        print(f"{r['case']}: detx {r['value']:.4g} {r['unit']} | {r['baseline']} {r['baseline_value']:.4g} "
              f"{r['unit']} | ratio {r['ratio']:.3f}")
    print(notes)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"name": "classifier", "title": "Image-classifier training: detx "
                                               "Trainer vs a plain PyTorch loop", "rows": rows, "notes": notes},
                                              indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
