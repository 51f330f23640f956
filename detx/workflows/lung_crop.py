"""``prepare --crop lungs``: each image cut to its lung fields (with a margin), the crop recorded so that boxes go into
it exactly and predictions on it come back to original pixels (:mod:`detx.core.crop`, :mod:`detx.core.prepared`).

The lung fields' box comes from a mask folder (:func:`detx.data.lung_masks.lung_boxes_from_masks`: an image without a
usable mask is named and skipped) or from a trained lung segmenter (``configs/lungs/*.yaml``) run on the whole
image: the union of the best box of each lung; an image where it finds no lung keeps the whole image (a ``lungs_not_found``
problem: named and counted, an error under ``--strict``). A fused box reaching outside its image's crop is clipped to
it (``box_clipped_by_crop``) or, with nothing left inside, dropped (``box_outside_crop``): named and counted, never
silent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from detx.core.classes import NO_FINDING
from detx.core.crop import Crop, boxes_to_crop, crop_around
from detx.core.errors import InputError
from detx.core.io import write_png
from detx.data.dicom import load_dicom_image, resize_longest
from detx.data.lung_masks import lung_boxes_from_masks
from detx.data.readers import BOX_COLUMNS, ProblemLog

logger = logging.getLogger(__name__)

CROP_MODES = ("lungs",)
#: problems a crop repairs rather than skips (the image stays)
CROP_REPAIRS = ("box_clipped_by_crop", "lungs_not_found")


def check_crop_options(crop: str | None, lung_masks, lung_config, lung_weights, margin: float) -> None:
    """Raises InputError for an impossible combination of the ``--crop`` options."""
    if crop is None:
        if lung_masks or lung_config or lung_weights:
            raise InputError("--lung-masks / --lung-config / --lung-weights need --crop lungs")
        return
    if crop not in CROP_MODES:
        raise InputError(f"--crop {crop!r}: expected one of {CROP_MODES}")
    model = bool(lung_config) or bool(lung_weights)
    if bool(lung_masks) == model:
        raise InputError("--crop lungs needs either --lung-masks DIR or --lung-config CFG --lung-weights W (one of "
                         "the two)")
    if model and not (lung_config and lung_weights):
        raise InputError("--lung-config and --lung-weights go together")
    if not 0 <= margin <= 1:
        raise InputError(f"--crop-margin {margin} must be in [0, 1] (a fraction of the lung box's width / height)")


def segment_lungs(config: str | os.PathLike, weights: str | os.PathLike, pngs: dict[str, Path],
                  sizes: dict[str, tuple[int, int]], opts: list[str] | None = None, min_score: float = 0.5
                  ) -> dict[str, tuple[float, float, float, float] | None]:
    """The lung fields' box (original pixels) of each image by a trained lung segmenter run on its whole-image PNG:
    the union of the highest-scoring box of each class scoring at least ``min_score``; None where none does."""
    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedPredictor, InputImage, load_image

    cfg = get_detx_cfg(str(config), list(opts or []))
    model = BatchedPredictor(cfg, weights, amp=False)
    out: dict[str, tuple[float, float, float, float] | None] = {}
    for image_id, path in pngs.items():
        w, h = sizes[image_id]
        loaded = load_image(InputImage(image_id, Path(path), "png", w, h), model.input_format, 0)
        if loaded.error is not None:
            raise InputError(f"image {image_id}: {loaded.error}")
        (pred,) = model([loaded.image], [loaded.orig_size])
        best = []
        for c in np.unique(pred.classes):
            k = np.flatnonzero(pred.classes == c)
            k = k[np.argmax(pred.scores[k])]
            if pred.scores[k] >= min_score:
                best.append(pred.boxes[k])
        if not best:
            out[image_id] = None
            continue
        b = np.asarray(best)
        out[image_id] = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
    return out


def lung_crops(sizes: dict[str, tuple[int, int]], full_pngs: dict[str, Path], log: ProblemLog, *,
               lung_masks: str | os.PathLike | None = None, lung_config: str | os.PathLike | None = None,
               lung_weights: str | os.PathLike | None = None, margin: float = 0.05) -> dict[str, Crop]:
    """Each image's lung crop in original pixels (not resized yet); an image missing from the result is skipped
    (its problem is in ``log``)."""
    if lung_masks is not None:
        boxes = lung_boxes_from_masks(lung_masks, sizes, log)
    else:
        boxes = segment_lungs(lung_config, lung_weights, full_pngs, sizes)
        for image_id in sorted(i for i, b in boxes.items() if b is None):
            log.add("lungs_not_found", f"image {image_id}", f"the lung segmenter found no lung on image {image_id}; "
                    "the whole image is kept", image_id)
            w, h = sizes[image_id]
            boxes[image_id] = (0, 0, w, h)
    crops = {}
    for image_id, box in boxes.items():
        if box is None:
            continue
        crops[image_id] = crop_around(box, sizes[image_id], margin)
    return crops


def write_crop(src: str | os.PathLike, dst: str | os.PathLike, crop: Crop, size: int | None, bit_depth: int = 8
               ) -> Crop:
    """Decode a DICOM at full resolution, cut ``crop`` out of it, resize its longest side to ``size`` and write the PNG;
    returns the crop with its stored size (``out_size``)."""
    img, w, h = load_dicom_image(src, None, bit_depth)
    if (w, h) != (crop.orig_width, crop.orig_height):
        raise InputError(f"{src}: decodes to {w} x {h}, the crop was made for {crop.orig_width} x {crop.orig_height}")
    small = resize_longest(np.ascontiguousarray(crop.apply(img)), size)
    write_png(dst, small)
    return Crop(crop.x0, crop.y0, crop.x1, crop.y1, crop.orig_width, crop.orig_height, (small.shape[1], small.shape[0]))


def clip_to_crops(boxes: pd.DataFrame, crops: dict[str, Crop], log: ProblemLog) -> pd.DataFrame:
    """A box table (original pixels) with every box reaching outside its image's crop clipped to it
    (``box_clipped_by_crop``) or, when nothing of it is inside, dropped (``box_outside_crop``); each named in ``log``.
    """
    if not len(boxes):
        return boxes
    keep = np.ones(len(boxes), bool)
    out = boxes.copy()
    values = out[list(BOX_COLUMNS)].to_numpy(np.float64, copy=True)
    for pos, (image_id, name) in enumerate(zip(out["image_id"], out["class_name"])):
        crop = crops.get(image_id)
        if crop is None or name == NO_FINDING or not np.isfinite(values[pos]).all():
            continue
        _, outside = boxes_to_crop(values[pos], crop)
        if not outside[0]:
            continue
        b = values[pos]
        clipped = np.array([max(b[0], crop.x0), max(b[1], crop.y0), min(b[2], crop.x1), min(b[3], crop.y1)])
        where = f"image {image_id}"
        text = f"{name} box [{', '.join(f'{v:g}' for v in b)}] of image {image_id} reaches outside its lung crop " \
               f"[{crop.x0}, {crop.y0}, {crop.x1}, {crop.y1}]"
        if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
            log.add("box_outside_crop", where, text + "; nothing of it is inside: dropped", image_id)
            keep[pos] = False
            continue
        log.add("box_clipped_by_crop", where, text + f"; clipped to [{', '.join(f'{v:g}' for v in clipped)}]",
                image_id)
        values[pos] = clipped
    out[list(BOX_COLUMNS)] = values
    out = out[keep].reset_index(drop=True)
    out.attrs = dict(boxes.attrs)
    return out
