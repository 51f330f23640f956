"""Lung-mask datasets (Montgomery, Shenzhen, JSRT/SCR or any image + mask folders, the synthetic generator's
``--lung-masks``) -> the prepared layout a detectron2 Mask R-CNN lung segmenter trains on.

``OUT/images/<id>.png`` (longest side ``--size``), ``OUT/meta.csv`` (image_id, orig_width, orig_height, width, height,
fold, the mask files), ``OUT/annotations/{all,train_fold<k>,val_fold<k>}.json``: COCO with the categories
``left lung`` (id 0) and ``right lung`` (id 1) (the patient's sides), one annotation of each per image with its
polygon segmentation and box in PNG pixels; ``info.dataset`` is ``lungs`` (registered as ``lungs_<split>``).
Bad pairs (:func:`detx.data.lung_masks.read_lung_pairs`: missing mask, other size, unreadable, empty) are named in
``problems.csv``, counted in ``summary.json`` and skipped; ``strict`` stops at the first (exit status 1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from detx.core.errors import InputError
from detx.core.io import atomic_write_text, folder_lock, write_json
from detx.data.coco_json import build_coco, write_coco
from detx.data.dicom import convert_dicoms
from detx.data.folds import assign_folds
from detx.data.lung_masks import (
    DICOM_SUFFIXES,
    LAYOUTS,
    LUNG_CLASSES,
    lung_box,
    mask_polygons,
    read_lung_pairs,
    read_lung_sides,
)
from detx.data.readers import ProblemLog, make_table
from detx.workflows.prepare import add_common_prepare_arguments, skipped_and_folds_lines, write_fold_splits

logger = logging.getLogger(__name__)

DATASET = "lungs"


@dataclass
class LungMaskSummary:
    """What a lung-mask preparation did (also ``OUT/summary.json``)."""

    out: str
    settings: dict
    pairs: int = 0
    images: int = 0
    images_converted: int = 0
    images_already_done: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    folds: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(self.problems.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "dataset": DATASET, "classes": list(LUNG_CLASSES), "skipped": self.skipped}

    def format(self) -> str:
        lines = [f"Prepared lung masks ({self.settings['layout']} layout) in {self.out}",
                 f"  images: {self.images} of {self.pairs} good pairs; converted {self.images_converted}, already "
                 f"done {self.images_already_done}"]
        lines += skipped_and_folds_lines(self.problems, self.skipped, self.folds, "folds")
        return "\n".join(lines)


def prepare_lung_masks(layout: str, images: str | os.PathLike, out: str | os.PathLike,
                       masks: str | os.PathLike | None = None, size: int = 512, folds: int = 5, seed: int = 0,
                       workers: int = 1, strict: bool = False, progress: bool = True) -> LungMaskSummary:
    """Prepare a lung-mask dataset (module docstring).

    Args:
        layout: ``montgomery``, ``shenzhen`` (``images`` is the set's root) or ``folders`` (``images`` and ``masks``).

    Raises:
        InputError: bad arguments, no usable pair; DataError (exit 1): a bad pair under ``strict``.
    """
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: expected one of {LAYOUTS}")
    if layout == "folders" and masks is None:
        raise InputError("--layout folders needs --masks DIR")
    if size < 32:
        raise InputError(f"--size {size} is too small (at least 32)")
    if folds < 0:
        raise InputError(f"--folds {folds} must be >= 0 (0 or 1: no folds)")
    pairs, log = read_lung_pairs(layout, images, masks, strict=strict)
    out = Path(out)
    with folder_lock(out):
        return _prepare(pairs, log, layout, Path(images), masks, out, size, folds, seed, workers, progress)


def _prepare(pairs, log: ProblemLog, layout: str, images: Path, masks, out: Path, size: int, folds: int, seed: int,
             workers: int, progress: bool) -> LungMaskSummary:
    settings = {"layout": layout, "images": str(images), "masks": str(masks or ""), "size": size, "folds": folds,
                "seed": seed}
    summary = LungMaskSummary(out=str(out), settings=settings, pairs=len(pairs))
    if not pairs:
        raise InputError(f"no image of {images} has a usable lung mask ({layout} layout; problems: {log.counts()})")
    img_dir = out / "images"

    def on_error(r):
        log.add("bad_image", f"image {r.image_id}", r.error, r.image_id)

    results = {}
    for kind in ("dicom", "png"):
        jobs = [(p.image_id, p.image, img_dir / f"{p.image_id}.png") for p in pairs
                if (p.image.suffix.lower() in DICOM_SUFFIXES) == (kind == "dicom")]
        if jobs:
            results.update(convert_dicoms(jobs, size, workers=workers, journal=out / ".cache" / "convert.jsonl",
                                          on_error=on_error, progress=progress, source=kind))
    rows, boxes, segms = [], [], {}
    for p in pairs:
        r = results[p.image_id]
        if r.error:
            continue
        if (r.orig_width, r.orig_height) != (p.width, p.height):
            log.add("mask_size", f"image {p.image_id}", f"image {p.image_id} decodes to {r.orig_width} x "
                    f"{r.orig_height} but its mask is {p.width} x {p.height}", p.image_id)
            continue
        sides = read_lung_sides(p)
        scale = (r.width / r.orig_width, r.height / r.orig_height)
        ok = True
        for cid, m in enumerate(sides):
            box, polys = lung_box(m), mask_polygons(m, scale)
            if box is None or not polys:
                log.add("empty_mask", str(p.masks[0]), f"the {LUNG_CLASSES[cid]} of {p.image_id} is empty", p.image_id)
                ok = False
                break
            boxes.append((p.image_id, "", LUNG_CLASSES[cid], cid, *box, "", len(boxes)))
            segms[(p.image_id, cid)] = polys
        if not ok:
            boxes = [b for b in boxes if b[0] != p.image_id]
            continue
        rows.append({"image_id": p.image_id, "orig_width": r.orig_width, "orig_height": r.orig_height,
                     "width": r.width, "height": r.height, "image_path": str(p.image),
                     "mask_paths": "|".join(str(m) for m in p.masks)})
    if not rows:
        raise InputError(f"none of the {len(pairs)} lung-mask pairs could be prepared (see problems.csv)")
    meta = pd.DataFrame(rows)
    meta["fold"] = -1
    if folds >= 2:
        meta["fold"] = assign_folds(np.zeros((len(meta), 1), np.int64), folds, seed=seed)
    table = make_table(boxes, dataset=DATASET, classes=LUNG_CLASSES)
    info = {"dataset": DATASET, "size": size, "fusion": None, "layout": layout, "folds": folds, "seed": seed,
            "masks": "polygon"}
    ann = out / "annotations"
    written = []

    def write(name: str, ids) -> None:
        coco = build_coco(meta, table, LUNG_CLASSES, {**info, "split": name[:-5]}, image_ids=list(ids))
        uid_of = {im["id"]: im["image_uid"] for im in coco["images"]}
        for a in coco["annotations"]:
            a["segmentation"] = segms[(uid_of[a["image_id"]], a["category_id"])]
        write_coco(ann / name, coco)
        written.append(f"annotations/{name}")

    write("all.json", meta["image_id"])
    summary.folds.update(write_fold_splits(meta, folds, write))
    summary.images = len(meta)
    done = [results[i] for i in meta["image_id"]]
    summary.images_converted = sum(not r.skipped for r in done)
    summary.images_already_done = sum(r.skipped for r in done)
    atomic_write_text(out / "meta.csv", meta.to_csv(index=False))
    summary.problems = log.counts()
    log.write_csv(out / "problems.csv")
    summary.files = sorted(["meta.csv", "problems.csv", "summary.json", *written])
    write_json(out / "summary.json", summary.to_dict(), indent=2)
    return summary


def add_lung_mask_arguments(parser) -> None:
    """The command-line options of ``datasets/prepare_lung_masks.py``."""
    parser.add_argument("--layout", required=True, choices=LAYOUTS,
                        help="montgomery (CXR_png/, ManualMask/{left,right}Mask/), shenzhen (CXR_png/, mask/), or "
                             "folders (--images and --masks)")
    parser.add_argument("--images", required=True, help="the set's root (montgomery, shenzhen) or the image folder "
                        "(folders: <id>.png, or <id>.dicom / <id>.dcm)")
    parser.add_argument("--masks", default=None, help="folders layout: the mask folder (left/ and right/, 'left "
                        "lung'/ and 'right lung'/, or <id>.png / <id>_mask.png with both lungs)")
    add_common_prepare_arguments(parser, size_default=512, strict_help="stop with exit status 1 at the first bad pair")


def prepare_lung_masks_from_args(args) -> LungMaskSummary:
    return prepare_lung_masks(args.layout, args.images, args.out, masks=args.masks, size=args.size,
                              folds=args.folds, seed=args.seed, workers=args.workers, strict=args.strict,
                              progress=not args.quiet)
