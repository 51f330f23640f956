#!/usr/bin/env python
"""Time detx inference against its baselines, in one process on the same inputs.

1. Prediction throughput (images/s) of the tiny config on the CPU: ``BatchedPredictor`` (several
   images per forward pass) against detectron2's ``DefaultPredictor`` called image by image. The model
   is random-init (speed does not depend on the weights).
2. The other detectors' prediction throughput: ``BatchedPredictor`` on the tiny RetinaNet and the tiny Cascade
   R-CNN against the tiny Faster R-CNN, same images, same run (with CUDA also RetinaNet R101-FPN and Cascade
   R-CNN R50-FPN against Faster R-CNN R50-FPN at 1024 px).
3. Batching images of mixed sizes (a prepared set with VinBigData-like sizes: original widths and heights drawn from
   1,800-3,100 px, prepared at longest side 1024): detx's CPU default (``exact``: one image per forward pass) and
   its same-shape batching (``batches_by_key`` + ``BatchedPredictor(exact=False)``, what CUDA runs; also with oneDNN
   off, which makes it bit-exact) against detectron2's ``DefaultPredictor`` image by image and against the previous
   batching (sorted by aspect ratio, each batch padded to its largest image); the boxes that differ from the image
   alone are counted for each batching.
4. Ensembling 5 models x hflip (10 prediction sets) of 100 boxes each on 3,000 images with WBF:
   ``weighted_boxes_fusion_batched`` (all images in one call) against ``ensemble_boxes.weighted_boxes_fusion``
   called image by image; both outputs are checked equal.

    python benchmarks/bench_inference.py [--quick] [--json OUT.json] [--cases predictor detectors batching wbf]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

CONFIG = str(Path(__file__).resolve().parent.parent / "configs/quick_schedules/vindr_cxr_tiny.yaml")
R50_CONFIG = str(Path(__file__).resolve().parent.parent / "configs/vindr_cxr/faster_rcnn_R_50_FPN.yaml")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: (name, config) of the other detectors, and the Faster R-CNN each is timed against: tiny ones on the CPU, real
#: ones on CUDA
TINY_DETECTORS = [("tiny RetinaNet", str(CONFIGS / "quick_schedules/vindr_cxr_retinanet_tiny.yaml")),
                  ("tiny Cascade R-CNN", str(CONFIGS / "quick_schedules/vindr_cxr_cascade_tiny.yaml"))]
REAL_DETECTORS = [("RetinaNet R101-FPN", str(CONFIGS / "vindr_cxr/retinanet_R_101_FPN.yaml")),
                  ("Cascade R-CNN R50-FPN", str(CONFIGS / "vindr_cxr/cascade_rcnn_R_50_FPN.yaml"))]


def bench_predictor(n_images: int, batch_size: int, config: str = CONFIG, device: str = "cpu",
                    size: int = 256) -> list[dict]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedPredictor

    cfg = get_detx_cfg(config, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", str(size),
                                "INPUT.MAX_SIZE_TEST", str(size)], freeze=False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        DetectionCheckpointer(build_model(cfg), save_dir=tmp).save("model")
        cfg.MODEL.WEIGHTS = f"{tmp}/model.pth"
        batched = BatchedPredictor(cfg, cfg.MODEL.WEIGHTS)
        single = DefaultPredictor(cfg)
    rng = np.random.default_rng(0)
    h, w = size // 8, size * 3 // 32  # blocky noise, size x 0.75 size (portrait, like a chest X-ray)
    images = [np.repeat(np.kron((rng.random((h, w)) * 255).astype(np.uint8), np.ones((8, 8), np.uint8))[:, :, None],
                        3, axis=2) for _ in range(n_images)]
    sizes = [(1920, 2560)] * n_images
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    batched(images[:batch_size], sizes[:batch_size])  # warm-up
    single(images[0])
    sync()
    t = time.perf_counter()
    for i in range(0, n_images, batch_size):
        batched(images[i:i + batch_size], sizes[i:i + batch_size])
    sync()
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    for image in images:
        single(image)
    sync()
    t_single = time.perf_counter() - t
    ips_b, ips_s = n_images / t_batched, n_images / t_single
    name = Path(config).stem
    where = f"CUDA {torch.cuda.get_device_name(0)}, AMP" if device.startswith("cuda") else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, {where}, {n_images} images {size}x{size * 3 // 4}:")
    print(f"  BatchedPredictor batch {batch_size}: {ips_b:7.2f} img/s")
    print(f"  DefaultPredictor one at a time: {ips_s:7.2f} img/s   ratio {ips_b / ips_s:.2f}x")
    return [{"case": f"{name} {where} predict, batch {batch_size} ({n_images} images, {size} px)", "value": ips_b,
             "unit": "images/s", "baseline": "detectron2 DefaultPredictor, one image at a time",
             "baseline_value": ips_s, "ratio": ips_b / ips_s}]


def _random_predictor(config: str, device: str, size: int, tmp: str):
    """A BatchedPredictor of ``config`` with random-init weights (speed does not depend on them)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedPredictor

    cfg = get_detx_cfg(config, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", str(size),
                                "INPUT.MAX_SIZE_TEST", str(size)])
    torch.manual_seed(0)
    name = Path(config).stem
    DetectionCheckpointer(build_model(cfg), save_dir=tmp).save(name)
    return BatchedPredictor(cfg, f"{tmp}/{name}.pth")


def bench_detectors(n_images: int, batch_size: int, detectors: list[tuple[str, str]], baseline: tuple[str, str],
                    device: str = "cpu", size: int = 256, rounds: int = 2) -> list[dict]:
    """Images/s of ``BatchedPredictor`` for each detector against the Faster R-CNN ``baseline``, in alternating
    rounds on the same images (best round each)."""
    rng = np.random.default_rng(0)
    h, w = size // 8, size * 3 // 32
    images = [np.repeat(np.kron((rng.random((h, w)) * 255).astype(np.uint8), np.ones((8, 8), np.uint8))[:, :, None],
                        3, axis=2) for _ in range(n_images)]
    sizes = [(1920, 2560)] * n_images
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: _random_predictor(cfg, device, size, tmp) for name, cfg in [baseline, *detectors]}
    best = dict.fromkeys(models, float("inf"))
    for pred in models.values():
        pred(images[:batch_size], sizes[:batch_size])  # warm-up
    for r in range(rounds):
        for name in list(models) if r % 2 == 0 else list(models)[::-1]:
            sync()
            t = time.perf_counter()
            for i in range(0, n_images, batch_size):
                models[name](images[i:i + batch_size], sizes[i:i + batch_size])
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    ips = {name: n_images / t for name, t in best.items()}
    where = f"CUDA {torch.cuda.get_device_name(0)}, AMP" if device.startswith("cuda") else \
        f"CPU ({torch.get_num_threads()} threads)"
    base = baseline[0]
    print(f"BatchedPredictor batch {batch_size}, {where}, {n_images} images {size}x{size * 3 // 4}:")
    rows = []
    for name, _ in detectors:
        print(f"  {name}: {ips[name]:7.2f} img/s   {base}: {ips[base]:7.2f} img/s   ratio {ips[name] / ips[base]:.2f}x")
        rows.append({"case": f"{name} {where} predict, batch {batch_size} ({n_images} images, {size} px)",
                     "value": ips[name], "unit": "images/s", "baseline": f"{base}, BatchedPredictor (same run)",
                     "baseline_value": ips[base], "ratio": ips[name] / ips[base]})
    return rows


def vinbigdata_like_sizes(n_images: int, seed: int = 0, prepared: int = 1024) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(original (width, height), prepared (height, width)) of ``n_images`` images: original sides drawn uniformly
    from 1,800-3,100 px (the range of VinBigData's DICOMs), prepared with the longest side ``prepared`` and the aspect
    ratio kept (rounded as ``datasets/prepare_*.py`` does)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_images):
        ow, oh = (int(v) for v in rng.integers(1800, 3101, 2))
        scale = prepared / max(ow, oh)
        out.append(((ow, oh), (max(1, round(oh * scale)), max(1, round(ow * scale)))))
    return out


def bench_batching(n_images: int, batch_size: int, config: str = CONFIG, size: int = 512, rounds: int = 2
                   ) -> list[dict]:
    """Images/s on a prepared set of mixed VinBigData-like sizes: detx's exact CPU default and same-shape batching
    against DefaultPredictor and the previous pad-to-largest batching; best of ``rounds`` alternating rounds; and per
    batching the boxes that differ (> 1e-3 px in original pixels) from the image predicted alone."""
    from detectron2.engine import DefaultPredictor

    from detx.inference.predictor import BatchedPredictor, batches_by_key, inference_resize, model_input
    from detx.inference.tta import TTAView

    rng = np.random.default_rng(1)
    sizes = vinbigdata_like_sizes(n_images)
    images = []
    for _, (h, w) in sizes:
        g = (rng.random((h // 8 + 1, w // 8 + 1)) * 255).astype(np.uint8)
        images.append(np.repeat(np.kron(g, np.ones((8, 8), np.uint8))[:h, :w, None], 3, axis=2))
    orig = [o for o, _ in sizes]
    with tempfile.TemporaryDirectory() as tmp:
        exact = _random_predictor(config, "cpu", size, tmp)
        onednn = BatchedPredictor(exact.cfg, f"{tmp}/{Path(config).stem}.pth", exact=False)
        cfg = exact.cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = f"{tmp}/{Path(config).stem}.pth"
        default = DefaultPredictor(cfg)
    order = sorted(range(n_images), key=lambda i: orig[i][1] / orig[i][0])  # predict_all's order: aspect ratio
    view = TTAView()
    groups = list(batches_by_key(order, lambda i: exact.batch_key(images[i].shape[:2], view), batch_size))
    shapes = {exact.batch_key(im.shape[:2], view) for im in images}

    def same_shape(model):
        out = {}
        for g in groups:
            out.update(zip(g, model([images[i] for i in g], [orig[i] for i in g])))
        return out

    def same_shape_native():
        with torch.backends.mkldnn.flags(enabled=False):
            return same_shape(onednn)

    @torch.no_grad()
    def pad_to_largest():  # the previous BatchedPredictor: a batch of mixed shapes padded to its largest image
        resize = inference_resize(exact.cfg.INPUT.MIN_SIZE_TEST, exact.cfg.INPUT.MAX_SIZE_TEST)
        out = {}
        for k in range(0, n_images, batch_size):
            idx = order[k:k + batch_size]
            res = onednn.model([{"image": model_input(images[i], resize, "BGR"), "height": orig[i][1],
                                 "width": orig[i][0]} for i in idx])
            out.update({i: r["instances"].pred_boxes.tensor.numpy() for i, r in zip(idx, res)})
        return out

    def one_by_one():
        return {i: default(images[i]) for i in range(n_images)}

    cases = {"exact (CPU default)": lambda: same_shape(exact), "same-shape batches": lambda: same_shape(onednn),
             "same-shape, oneDNN off": same_shape_native, "pad to largest (before)": pad_to_largest,
             "DefaultPredictor": one_by_one}
    for i in {exact.batch_key(im.shape[:2], view): i for i, im in enumerate(images)}.values():
        onednn([images[i]], [orig[i]])  # warm-up: oneDNN builds its kernels once per input shape
        with torch.backends.mkldnn.flags(enabled=False):
            onednn([images[i]], [orig[i]])
    best = dict.fromkeys(cases, float("inf"))
    results = {}
    for r in range(rounds):
        for name in list(cases) if r % 2 == 0 else list(cases)[::-1]:
            t = time.perf_counter()
            results[name] = cases[name]()
            best[name] = min(best[name], time.perf_counter() - t)
    ips = {name: n_images / t for name, t in best.items()}
    # boxes without an equal twin (1e-3 px, original pixels) among the same image's predicted alone
    alone = {i: onednn([images[i]], [orig[i]])[0].boxes for i in range(n_images)}
    with torch.backends.mkldnn.flags(enabled=False):
        alone_native = {i: onednn([images[i]], [orig[i]])[0].boxes for i in range(n_images)}

    def moved(boxes: dict, ref: dict) -> tuple[int, int]:
        n_moved = n = 0
        for i, b in boxes.items():
            b = b.boxes if hasattr(b, "boxes") else b
            n += len(b)
            if len(ref[i]) == 0:
                n_moved += len(b)
            elif len(b):
                n_moved += int((np.abs(b[:, None, :] - ref[i][None]).max(axis=2).min(axis=1) > 1e-3).sum())
        return n_moved, n

    diffs = {"exact (CPU default)": moved(results["exact (CPU default)"], alone),
             "same-shape batches": moved(results["same-shape batches"], alone),
             "same-shape, oneDNN off": moved(results["same-shape, oneDNN off"], alone_native),
             "pad to largest (before)": moved(results["pad to largest (before)"], alone)}
    where = f"CPU ({torch.get_num_threads()} threads)"
    base = "DefaultPredictor"
    print(f"Batching {n_images} VinBigData-like images (1,800-3,100 px, prepared at 1024, tested at {size} px), "
          f"batch {batch_size}, {where}: {len(shapes)} padded shapes, {len(groups)} same-shape batches")
    for name in cases:
        extra = "" if name == base else \
            f"   boxes differing from alone: {diffs[name][0]} of {diffs[name][1]}"
        print(f"  {name:26s} {ips[name]:7.2f} img/s   ratio to {base} {ips[name] / ips[base]:.2f}x{extra}")
    rows = []
    for name in cases:
        if name == base:
            continue
        rows.append({"case": f"{name}, batch {batch_size}, {n_images} mixed VinBigData-like images, "
                             f"{size} px, {where}", "value": ips[name], "unit": "images/s",
                     "baseline": "detectron2 DefaultPredictor, one image at a time (same run)",
                     "baseline_value": ips[base], "ratio": ips[name] / ips[base],
                     "boxes_differing_from_alone": diffs[name][0], "boxes": diffs[name][1]})
    return rows


def make_sets(n_images: int, n_sets: int, n_boxes: int, seed: int = 0):
    """Per image 25 objects; each set (model x view) sees each with jitter and adds false positives."""
    rng = np.random.default_rng(seed)
    per_image = []
    for _ in range(n_images):
        xy = rng.uniform(0, 0.8, (25, 2))
        obj = np.hstack([xy, xy + rng.uniform(0.02, 0.2, (25, 2))])
        obj_cls = rng.integers(0, 14, 25)
        sets = []
        for _ in range(n_sets):
            k = n_boxes // 2
            pick = rng.integers(0, 25, k)
            b_true = np.clip(obj[pick] + rng.normal(0, 0.01, (k, 4)), 0, 1)
            xy = rng.uniform(0, 0.8, (n_boxes - k, 2))
            b_fp = np.hstack([xy, xy + rng.uniform(0.02, 0.2, (n_boxes - k, 2))])
            boxes = np.vstack([b_true, b_fp])
            classes = np.r_[obj_cls[pick], rng.integers(0, 14, n_boxes - k)]
            scores = np.r_[rng.uniform(0.3, 1.0, k), rng.uniform(0.01, 0.5, n_boxes - k)]
            sets.append((boxes, scores, classes))
        per_image.append(sets)
    return per_image


def bench_wbf(n_images: int, n_sets: int = 10, n_boxes: int = 100) -> list[dict]:
    from ensemble_boxes import weighted_boxes_fusion as eb_wbf

    from detx.inference.ensemble import weighted_boxes_fusion_batched

    data = make_sets(n_images, n_sets, n_boxes)
    flat = [np.concatenate([s[j] for sets in data for s in sets]) for j in range(3)]
    image_index = np.repeat(np.arange(n_images), n_sets * n_boxes)
    model_index = np.tile(np.repeat(np.arange(n_sets), n_boxes), n_images)
    kw = {"iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}
    weighted_boxes_fusion_batched(flat[0][:200], flat[1][:200], flat[2][:200], image_index[:200], model_index[:200],
                                  n_sets, **kw)  # numba compile (cached on disk after the first run)
    t = time.perf_counter()
    b, s, lab, im = weighted_boxes_fusion_batched(*flat, image_index, model_index, n_sets, **kw)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    ref = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sets in data:
            ref.append(eb_wbf([x[0] for x in sets], [x[1] for x in sets], [x[2] for x in sets], **kw))
    t_ref = time.perf_counter() - t
    n_ref = sum(len(r[1]) for r in ref)
    assert n_ref == len(s), (n_ref, len(s))
    assert np.allclose(np.concatenate([r[1] for r in ref]), s) and np.allclose(np.concatenate([r[0] for r in ref]), b)
    print(f"WBF of {n_sets} sets x {n_boxes} boxes on {n_images} images ({n_images * n_sets * n_boxes:,} boxes):")
    print(f"  detx weighted_boxes_fusion_batched: {t_batched:7.2f} s")
    print(f"  ensemble-boxes image by image:      {t_ref:7.2f} s   ratio {t_ref / t_batched:.1f}x faster")
    return [{"case": f"WBF 5 models x hflip, {n_images} images x {n_boxes} boxes", "value": t_batched, "unit": "s",
             "baseline": "ensemble_boxes.weighted_boxes_fusion image by image", "baseline_value": t_ref,
             "ratio": t_ref / t_batched}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--json", default=None, help="write the results JSON here")
    p.add_argument("--cases", nargs="+", default=["predictor", "detectors", "batching", "wbf"],
                   choices=["predictor", "detectors", "batching", "wbf"], help="what to run (default: all)")
    args = p.parse_args()
    rows = []
    if "predictor" in args.cases:
        rows += bench_predictor(8 if args.quick else 24, 4 if args.quick else 8)
        if torch.cuda.is_available():  # the GPU case: R50-FPN at 1024 px, batched + AMP
            rows += bench_predictor(16 if args.quick else 64, 8, R50_CONFIG, "cuda", 1024)
    if "detectors" in args.cases:
        rows += bench_detectors(8 if args.quick else 24, 4 if args.quick else 8, TINY_DETECTORS,
                                ("tiny Faster R-CNN", CONFIG), rounds=1 if args.quick else 2)
        if torch.cuda.is_available():
            rows += bench_detectors(16 if args.quick else 64, 8, REAL_DETECTORS, ("Faster R-CNN R50-FPN", R50_CONFIG),
                                    "cuda", 1024, rounds=1 if args.quick else 2)
    if "batching" in args.cases:
        rows += bench_batching(12 if args.quick else 32, 4 if args.quick else 8, rounds=1 if args.quick else 2)
    if "wbf" in args.cases:
        rows += bench_wbf(300 if args.quick else 3000)
    if args.json:
        from detx.core.io import write_json

        notes = [] if torch.cuda.is_available() else \
            ["No CUDA in this run: the R50-FPN / R101-FPN 1024 px GPU/AMP cases were not measured."]
        if {"predictor", "detectors"} & set(args.cases):
            notes.append("Random-init models (speed does not depend on weights).")
        if "detectors" in args.cases:
            notes.append("Detectors: best of alternating rounds on the same images; ratio < 1: slower than the "
                         "Faster R-CNN.")
        if "batching" in args.cases:
            notes.append("Batching: best of alternating rounds; 'exact' (the CPU default) runs one image per forward "
                         "pass; same-shape batches are what CUDA runs; oneDNN's kernels depend on the batch size.")
        if "wbf" in args.cases:
            notes.append("WBF outputs checked equal to ensemble-boxes.")
        write_json(args.json, {"name": "inference", "title": "Batched prediction and WBF ensembling; RetinaNet and "
                               "Cascade R-CNN vs Faster R-CNN", "rows": rows, "notes": " ".join(notes)}, indent=2)

if __name__ == "__main__":
    main()
