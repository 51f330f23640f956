"""``tools/explain.py``'s whole job: heatmaps of an image classifier's output on every input image, scored against
the radiologists' boxes with the pointing game.

For each image: the heatmap of the chosen output (``abnormal`` by default, or a class) by Grad-CAM, DeepLIFT or
Integrated Gradients (:mod:`detx.inference.attribution`), its peak in original pixels, and an overlay PNG (heat over
the X-ray, ground-truth boxes drawn when the input is a labelled prepared JSON). ``heatmaps.csv`` lists the peaks and
whether each falls inside a box (``hit``); ``summary.json`` holds the pointing game overall and per class
(:mod:`detx.evaluation.pointing_game`; null without ground truth).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detx.core.errors import InputError
from detx.core.io import atomic_path, write_json, write_png
from detx.core.prepared import rescale_boxes
from detx.core.progress import progress_bar
from detx.engine.config import get_detx_cfg
from detx.engine.config import num_classes as model_num_classes
from detx.evaluation.pointing_game import Peak, peak_hits, pointing_game
from detx.inference.attribution import METHODS, Explainer
from detx.inference.predictor import collect_inputs, load_image
from detx.viz.heatmap import draw_heatmap
from detx.workflows.predict import class_names_for, decode_size

logger = logging.getLogger(__name__)

__all__ = ["ExplainOptions", "peak_in_original", "run_explain"]


@dataclass
class ExplainOptions:
    """What ``tools/explain.py`` takes (see its ``--help``)."""

    config_file: str
    weights: str
    input: str
    out: str
    method: str = "gradcam"
    class_name: str | None = None
    max_images: int | None = None
    dicom_size: int | None = None
    opts: list[str] = field(default_factory=list)
    progress: bool = True


def peak_in_original(heat: np.ndarray, orig_size: tuple[float, float]) -> tuple[float, float]:
    """The heatmap's maximum (the first in row-major order on ties) as (x, y) in original pixels: the centre of the
    peak pixel, scaled from the heatmap's frame (the model's input, same aspect) to the original image."""
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    h, w = heat.shape
    (x, y), = rescale_boxes([col + 0.5, row + 0.5, col + 0.5, row + 0.5], (w, h), orig_size)[:, :2]
    return float(x), float(y)


def run_explain(options: ExplainOptions) -> dict[str, Any]:
    """Write the overlays, ``heatmaps.csv`` and ``summary.json`` into ``options.out``; returns the summary.

    Raises:
        InputError: a detector config or checkpoint, an unknown ``--class``, an input without images.
    """
    if options.method not in METHODS:
        raise InputError(f"--method {options.method!r}: expected one of {METHODS}")
    cfg = get_detx_cfg(options.config_file, options.opts)
    explainer = Explainer(cfg, options.weights, options.method)
    inputs = collect_inputs(options.input)
    unsized = [r.image_id for r in inputs.images if r.kind == "png" and r.orig_width is None]
    if unsized:  # the heatmap peaks of heatmaps.csv are meant in original pixels
        logger.warning("%d PNG(s) have no original size (no meta.csv): their peaks in heatmaps.csv are in PNG pixels "
                       "(e.g. %s)", len(unsized), unsized[0])
    k = model_num_classes(cfg)
    classes = class_names_for(k, inputs.classes) if k else tuple(inputs.classes or ())
    names = ["abnormal", *classes[:k]]
    target = options.class_name or "abnormal"
    if target not in names:
        raise InputError(f"--class {target!r} is not an output of this classifier ({', '.join(names)})")
    t = names.index(target)
    dicom_size = decode_size([cfg], options.dicom_size, inputs)
    records = inputs.images[: options.max_images] if options.max_images else inputs.images
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    gt = inputs.gt
    gt_classes = tuple(inputs.classes or classes)
    peaks, probs, failed = [], [], {}
    for rec in progress_bar(records, desc=f"explain ({options.method})", unit="img", disable=not options.progress):
        loaded = load_image(rec, explainer.input_format, dicom_size)
        if loaded.error is not None:
            logger.warning("image %s skipped: %s", rec.image_id, loaded.error)
            failed[rec.image_id] = loaded.error
            continue
        (heat,), p = explainer.explain(loaded.image, [t])
        peak = Peak(rec.image_id, target, *peak_in_original(heat, loaded.orig_size))
        peaks.append(peak)
        probs.append(float(p[t]))
        picture = draw_heatmap(loaded.image, heat, loaded.orig_size, gt.get(rec.image_id) if gt else None,
                               (peak.x, peak.y), f"{target} p={p[t]:.2f} ({options.method})", gt_classes)
        write_png(out / f"{rec.image_id.replace('/', '_')}.png", picture)
    hits = peak_hits(peaks, gt, gt_classes) if gt else [None] * len(peaks)
    with atomic_path(out / "heatmaps.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image_id", "class", "p", "peak_x", "peak_y", "hit"])
        for peak, p, hit in zip(peaks, probs, hits):
            w.writerow([peak.image_id, peak.target, f"{p:.6g}", f"{peak.x:.1f}", f"{peak.y:.1f}",
                        "" if hit is None else int(hit)])
    game = pointing_game(peaks, gt, gt_classes)
    summary = {"method": options.method, "target": target, "config": str(options.config_file),
               "weights": str(options.weights), "input": str(options.input), "num_images": len(peaks),
               "failed": failed, "pointing_game": game["pointing_game"], "num_labelled": game["num_images"],
               "hits": game["hits"], "per_class": game["per_class"]}
    write_json(out / "summary.json", summary, indent=2)
    if not gt:
        logger.info("the input has no ground-truth boxes: no pointing game")
    return summary

