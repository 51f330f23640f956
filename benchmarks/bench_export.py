#!/usr/bin/env python
"""Exported models and multi-process prediction against eager, single-process detx, in the same run.

1. Latency (median ms per image) and throughput (images/s) of the tiny detector exported to TorchScript and to ONNX
   (onnxruntime) against the eager ``BatchedPredictor`` called the same way, one image per call (an exported graph
   takes one image), on the same images through the same resize and original-pixel scaling. With CUDA present the
   R50-FPN at 1024 px is added (TorchScript on the GPU vs eager with AMP). Random-init models: speed does not
   depend on the weights.
2. ``tools/predict.py`` on a PNG folder with 1 process against ``--num-gpus 2`` (detectron2 ``launch``; on the CPU
   two processes over gloo), both timed as whole commands (interpreter start, model loading, spawning included)
   and checked to write the same submission.

    python benchmarks/bench_export.py [--quick] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs/quick_schedules/vindr_cxr_tiny.yaml")
R50_CONFIG = str(ROOT / "configs/vindr_cxr/faster_rcnn_R_50_FPN.yaml")


def _images(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    h, w = size // 8, size * 3 // 32  # blocky noise, size x 0.75 size (portrait, like a chest X-ray)
    return [np.repeat(np.kron((rng.random((h, w)) * 255).astype(np.uint8), np.ones((8, 8), np.uint8))[:, :, None],
                      3, axis=2) for _ in range(n)]


def _time_calls(fn, images, sizes, sync) -> tuple[float, float]:
    """(median latency in ms, throughput in images/s) of fn called one image at a time, after one warm-up call."""
    fn([images[0]], [sizes[0]])
    sync()
    lat = []
    t0 = time.perf_counter()
    for im, wh in zip(images, sizes):
        t = time.perf_counter()
        fn([im], [wh])
        sync()
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return 1000 * statistics.median(lat), len(images) / total


def bench_exported(n_images: int, config: str = CONFIG, device: str = "cpu", size: int = 256) -> list[dict]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg
    from detx.inference.exported import ExportedPredictor
    from detx.inference.predictor import BatchedPredictor
    from detx.workflows.export import ExportOptions, run_export

    opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST",
            str(size)]
    cfg = get_detx_cfg(config, opts, freeze=False)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    images, sizes = _images(n_images, size), [(1920, 2560)] * n_images
    name = Path(config).stem
    where = f"CUDA {torch.cuda.get_device_name(0)}" if cuda else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        DetectionCheckpointer(build_model(cfg), save_dir=tmp).save("model")
        weights = f"{tmp}/model.pth"
        eager = BatchedPredictor(cfg, weights)  # AMP on CUDA, as predict runs it
        lat_e, ips_e = _time_calls(eager, images, sizes, sync)
        print(f"{name}, {where}, {n_images} images {size}x{size * 3 // 4}, one image per call:")
        print(f"  eager BatchedPredictor{' (AMP)' if cuda else ''}: {lat_e:8.1f} ms/image {ips_e:7.2f} images/s")
        formats = ["torchscript"] + ([] if cuda else ["onnx"])  # onnxruntime's CPU build here: no CUDA provider
        for fmt in formats:
            out = f"{tmp}/model.{fmt}"
            run_export(ExportOptions(config, weights, fmt, out, opts, verify=False))
            runner = ExportedPredictor(out)
            lat, ips = _time_calls(runner, images, sizes, sync)
            print(f"  exported {fmt:11s}: {lat:8.1f} ms/image {ips:7.2f} images/s   "
                  f"throughput ratio {ips / ips_e:.2f}x, latency ratio {lat_e / lat:.2f}x")
            base = f"eager BatchedPredictor{' with AMP' if cuda else ''}, one image per call"
            rows += [{"case": f"{name} {where} exported {fmt}: throughput ({n_images} images, {size} px)",
                      "value": ips, "unit": "images/s", "baseline": base, "baseline_value": ips_e,
                      "ratio": ips / ips_e},
                     {"case": f"{name} {where} exported {fmt}: median latency", "value": lat, "unit": "ms",
                      "baseline": base, "baseline_value": lat_e, "ratio": lat_e / lat}]
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_processes(n_images: int, size: int = 256) -> list[dict]:
    import cv2
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for k, im in enumerate(_images(n_images, size)):
            cv2.imwrite(str(folder / f"im{k:04d}.png"), im[:, :, 0])
        cfg = get_detx_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(cfg), save_dir=tmp).save("model")
        base = [sys.executable, str(ROOT / "tools/predict.py"), "--quiet", "--config-file", CONFIG, "--weights",
                f"{tmp}/model.pth", "--input", str(folder), "--batch-size", "1"]
        times = {}
        for n in (1, 2):
            cmd = base + ["--out", f"{tmp}/sub{n}.csv"]
            if n > 1:
                cmd += ["--num-gpus", str(n), "--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
            t = time.perf_counter()
            subprocess.run(cmd + ["MODEL.DEVICE", "cpu"], check=True, cwd=ROOT, capture_output=True)
            times[n] = time.perf_counter() - t
        same = Path(f"{tmp}/sub1.csv").read_bytes() == Path(f"{tmp}/sub2.csv").read_bytes()
    assert same, "2 processes wrote another submission than 1"
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"tools/predict.py, tiny config, {n_images} PNGs {size} px, CPU ({os.cpu_count()} cores, {threads} "
          "threads per process), whole command:")
    print(f"  1 process:   {times[1]:7.1f} s  {n_images / times[1]:6.2f} images/s")
    print(f"  2 processes: {times[2]:7.1f} s  {n_images / times[2]:6.2f} images/s   ratio {times[1] / times[2]:.2f}x"
          "  (same submission, byte for byte)")
    return [{"case": f"tools/predict.py --num-gpus 2 on the CPU, tiny config, {n_images} images (whole command)",
             "value": n_images / times[2], "unit": "images/s", "baseline": "1 process, same command",
             "baseline_value": n_images / times[1], "ratio": times[1] / times[2]}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--json", default=None, help="write the results JSON here")
    args = p.parse_args()
    rows = bench_exported(8 if args.quick else 32)
    if torch.cuda.is_available():
        rows += bench_exported(16 if args.quick else 64, R50_CONFIG, "cuda", 1024)
    rows += bench_processes(8 if args.quick else 48)
    if args.json:
        from detx.core.io import write_json

        write_json(args.json, {
            "name": "export", "title": "Exported models and multi-process prediction", "rows": rows,
            "notes": ("" if torch.cuda.is_available() else
                      "No CUDA in this run: the R50-FPN 1024 px exported-vs-eager GPU case was not measured. ")
            + "Random-init models (speed does not depend on weights); exported graphs take one image per call, so "
              "eager is timed one image per call too. The process counts are timed as whole commands (start-up "
              "and spawning included) and their submissions checked byte-identical."}, indent=2)


if __name__ == "__main__":
    main()
