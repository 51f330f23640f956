"""The data preparation pipeline: DICOM + reader CSV -> PNGs, meta.csv, fused COCO JSON with folds.

:func:`prepare_dataset` runs, in order:

1. read the reader CSV into the normalized table (:mod:`detx.data.readers`; bad rows become problems);
2. match CSV images and DICOM files (a CSV image without DICOM, a DICOM without CSV rows, an image all
   of whose rows were bad: skipped);
3. convert the DICOMs to PNG (:mod:`detx.data.dicom`; an undecodable file: skipped);
4. clip boxes slightly outside their image, drop absurd ones (:func:`~detx.data.readers.check_box_bounds`);
5. fuse the readers (:mod:`detx.data.fusion`; excluded readers' rows were removed at step 1, per-reader weights
   apply, boxes drawn by fewer than ``min_readers`` readers are dropped), derive per-image labels, assign folds
   (:mod:`detx.data.folds`);
6. write ``meta.csv``, ``annotations/{all,train_fold{k},val_fold{k}}.json`` (or ``test.json`` without a
   CSV), ``summary.json``, ``problems.csv`` and the ``report/`` plots.

Every skipped item is a :class:`~detx.data.readers.Problem` naming the row or image, counted in the
summary; with ``strict=True`` the first one raises :class:`~detx.data.readers.DataError` instead.
Every file is written atomically, and a second run skips images already converted with the same
settings, so an interrupted run is simply started again.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import DATASET_CLASSES, NO_FINDING
from detx.core.errors import InputError, MissingFileError
from detx.core.io import atomic_write_text, folder_lock, write_json
from detx.core.prepared import CROP_COLUMNS
from detx.data.coco_json import build_coco, write_coco
from detx.data.dicom import convert_dicoms, find_dicoms
from detx.data.folds import assign_folds
from detx.data.fusion import FUSION_METHODS, fuse_readers, image_labels, keep_min_readers
from detx.data.readers import (
    ProblemLog,
    boxes_without_reader,
    check_box_bounds,
    describe_boxes_without_reader,
    join_readers,
    make_table,
    parse_panel,
    read_physionet_image_labels,
    read_reader_csv,
    read_reader_weights,
    reader_ids,
    reader_sort_key,
    require_reader_ids,
    select_panels,
    sniff_format,
)
from detx.data.readers import exclude_readers as remove_readers
from detx.workflows.lung_crop import (
    CROP_MODES,
    CROP_REPAIRS,
    check_crop_options,
    clip_to_crops,
    lung_crops,
    write_crop,
)

logger = logging.getLogger(__name__)

#: which annotation formats each prepare script accepts
DATASET_FORMATS: dict[str, tuple[str, ...]] = {"vindr-cxr": ("kaggle", "physionet"), "spinexr": ("spinexr",)}


@dataclass
class PrepareSummary:
    """What a preparation run did (also written to ``OUT/summary.json``)."""

    out: str
    dataset: str
    classes: list[str]
    settings: dict
    dicoms_found: int = 0
    images: int = 0
    images_normal: int = 0
    images_abnormal: int = 0
    images_converted: int = 0
    images_already_done: int = 0
    boxes_before_fusion: int = 0
    boxes_after_fusion: int = 0
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    boxes_per_reader: dict[str, int] = field(default_factory=dict)
    #: who the labels came from: readers kept, excluded (and asked for but absent), images dropped because only
    #: excluded readers read them, the fusion weights, --min-readers and the boxes it dropped, images per reader
    readers: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    folds: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Skipped rows and images (clipped boxes and ``--crop`` repairs are repaired, not skipped)."""
        return sum(n for k, n in self.problems.items() if k not in ("clipped", *CROP_REPAIRS))

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": self.skipped}

    def format(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"Prepared {self.dataset} in {self.out}",
            f"  images: {self.images} " + (f"({self.images_abnormal} abnormal, {self.images_normal} normal)"
                                           if self.settings.get("csv") else "(no annotations: test set)") + "; "
            f"DICOMs found {self.dicoms_found}, converted {self.images_converted}, "
            f"already done {self.images_already_done}",
        ]
        if self.settings.get("csv"):
            lines.append(f"  boxes: {self.boxes_before_fusion} from readers -> {self.boxes_after_fusion} after "
                         f"fusion ({self.settings.get('fusion')}, IoU {self.settings.get('iou_thr')})")
            note = describe_boxes_without_reader(self.readers.get("boxes_without_reader") or {},
                                                 str(self.settings.get("fusion")))
            if note:
                lines.append(f"  WARNING: {note}")
            width = max((len(c) for c in self.per_class), default=10)
            lines.append(f"  {'class':<{width}}  readers  fused  images")
            for name, c in self.per_class.items():
                lines.append(f"  {name:<{width}}  {c['before']:>7}  {c['after']:>5}  {c['images']:>6}")
            if self.readers:
                lines.append("  " + format_readers(self.readers))
        lines += skipped_and_folds_lines(self.problems, self.skipped, self.folds, "folds")
        return "\n".join(lines)


def skipped_and_folds_lines(problems: dict[str, int], skipped: int, folds: dict[str, dict[str, int]],
                            folds_label: str) -> list[str]:
    """The closing lines every preparation's summary shares: what was skipped (by kind, pointing at problems.csv)
    and the fold sizes, under ``folds_label`` (e.g. ``folds (grouped by study)``)."""
    if problems:
        detail = ", ".join(f"{k} {n}" for k, n in problems.items())
        lines = [f"  skipped: {skipped} ({detail}); see problems.csv"]
    else:
        lines = ["  skipped: 0"]
    if folds:
        lines.append(f"  {folds_label}: " + ", ".join(f"{k}: {v['train']} train / {v['val']} val"
                                                      for k, v in folds.items()))
    return lines


def write_fold_splits(meta: pd.DataFrame, folds: int, write: Callable[[str, pd.Series], None],
                      rows: np.ndarray | None = None) -> dict[str, dict[str, int]]:
    """``write("train_fold<k>.json", ids)`` and ``write("val_fold<k>.json", ids)`` for each fold k of
    ``meta["fold"]`` (none when ``folds < 2``), over the rows ``rows`` (a boolean mask; all by default); returns the
    fold sizes, ``{"<k>": {"train": n, "val": n}}``, for the summary."""
    keep = np.ones(len(meta), bool) if rows is None else np.asarray(rows, bool)
    sizes = {}
    for k in range(folds if folds >= 2 else 0):
        in_k = (meta["fold"] == k).to_numpy()
        val, trn = meta.loc[keep & in_k, "image_id"], meta.loc[keep & ~in_k, "image_id"]
        write(f"train_fold{k}.json", trn)
        write(f"val_fold{k}.json", val)
        sizes[str(k)] = {"train": len(trn), "val": len(val)}
    return sizes


def format_readers(readers: dict[str, Any]) -> str:
    """One line on who the labels came from (the ``readers`` entry of the summary)."""
    kept = readers.get("readers") or []
    parts = [f"readers: {len(kept)}" + (f" ({', '.join(kept)})" if len(kept) <= 20 else "")]
    if readers.get("excluded") or readers.get("excluded_not_in_csv"):
        text = f"excluded {', '.join(readers['excluded']) or 'none'}"
        if readers.get("excluded_not_in_csv"):
            text += f" (not in the CSV: {', '.join(readers['excluded_not_in_csv'])})"
        parts.append(text + f", {readers.get('images_dropped_excluded_readers', 0)} image(s) read only by them "
                     "dropped")
    if readers.get("drop_panels") or readers.get("keep_panels"):
        what = (f"dropped panel(s) {', '.join(readers['drop_panels'])}" if readers.get("drop_panels")
                else f"kept only panel(s) {', '.join(readers['keep_panels'])}")
        parts.append(what + (" (normal images kept)" if readers.get("keep_normal") else "")
                     + f": {readers.get('images_dropped_panels', 0)} of {readers.get('images_before_panels', 0)} "
                     "image(s) dropped")
    if readers.get("weights"):
        parts.append("fusion weights " + ", ".join(f"{r} {w:.3g}" for r, w in readers["weights"].items()))
    if readers.get("min_readers", 1) > 1:
        parts.append(f"min readers {readers['min_readers']}: {readers.get('boxes_dropped_min_readers', 0)} fused "
                     "box(es) drawn by fewer dropped")
    return "; ".join(parts)


def _subset(table: pd.DataFrame, mask) -> pd.DataFrame:
    out = table[mask].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def _find_image_labels(csv: Path) -> Path | None:
    """PhysioNet's image_labels_{split}.csv next to annotations_{split}.csv, if there."""
    m = re.fullmatch(r"annotations_(\w+)\.csv", csv.name)
    if m:
        cand = csv.with_name(f"image_labels_{m.group(1)}.csv")
        if cand.exists():
            return cand
    return None


def _remove_stale(ann_dir: Path, written: set[str]) -> None:
    for p in ann_dir.glob("*.json"):
        if p.name not in written and re.fullmatch(r"(all|test|(train|val)_fold\d+)\.json", p.name):
            logger.info("removing %s from an earlier run with other settings", p)
            p.unlink()


#: the smallest --size that still makes an image a model can learn from
MIN_SIZE = 32


def prepare_dataset(**options: Any) -> PrepareSummary:
    """Prepare a dataset while holding its output folder's lock (:func:`detx.core.io.folder_lock`): a second run
    into the same ``out`` stops at once instead of mixing its files with this one's. The options are those of
    :func:`prepare_unlocked`.

    Raises:
        FolderInUseError: another run holds ``out``.
    """
    for key, what in (("csv", "annotation CSV (--csv)"), ("dicom_dir", "DICOM folder (--dicom-dir)")):
        path = options.get(key)
        if path is not None and not Path(path).exists():  # before the output folder is made: nothing left behind
            raise MissingFileError(f"{what} {path} does not exist")
    with folder_lock(options["out"]):
        return prepare_unlocked(**options)


def prepare_unlocked(
    *,
    dataset: str,
    dicom_dir: str | os.PathLike,
    out: str | os.PathLike,
    csv: str | os.PathLike | None = None,
    size: int = 1024,
    fusion: str = "wbf",
    iou_thr: float = 0.4,
    folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    strict: bool = False,
    fmt: str = "auto",
    image_labels_csv: str | os.PathLike | None = None,
    kaggle_classes: bool = True,
    box_masks: bool = False,
    bit_depth: int = 8,
    clip_tolerance: float = 0.05,
    label_rule: str = "any",
    study_groups: bool = True,
    exclude_readers: Sequence[str] | None = None,
    reader_weights: str | os.PathLike | None = None,
    min_readers: int = 1,
    drop_panels: Sequence[str] | None = None,
    keep_panels: Sequence[str] | None = None,
    keep_normal: bool = False,
    report: bool = True,
    progress: bool = True,
    crop: str | None = None,
    lung_masks: str | os.PathLike | None = None,
    lung_config: str | os.PathLike | None = None,
    lung_weights: str | os.PathLike | None = None,
    crop_margin: float = 0.05,
) -> PrepareSummary:
    """Prepare a dataset (see the module docstring; options mirror ``datasets/prepare_*.py``).

    Args:
        dataset: "vindr-cxr" (Kaggle or PhysioNet annotations) or "spinexr".
        dicom_dir: folder searched recursively for ``*.dicom`` / ``*.dcm``; the file stem is the image_id.
        out: output folder.
        csv: reader CSV; None prepares a test set (images only, ``annotations/test.json``).
        size: longest side of the PNGs.
        fusion: "wbf", "nms" or "none".
        iou_thr: IoU above which readers' boxes fuse.
        folds: number of folds (< 2: only ``all.json``).
        seed: fold assignment seed.
        workers: DICOM decoding processes.
        strict: raise :class:`~detx.data.readers.DataError` at the first problem instead of skipping.
        fmt: "auto" (sniff the CSV header), "kaggle", "physionet" or "spinexr".
        image_labels_csv: PhysioNet ``image_labels_*.csv`` (found next to ``annotations_*.csv`` by default).
        kaggle_classes: PhysioNet only: map the 22 local labels onto the Kaggle 14.
        box_masks: add rectangle polygon segmentations (Mask R-CNN on box data).
        bit_depth: 8 or 16 bit PNGs.
        clip_tolerance: boxes out of the image by at most this fraction of its side are clipped, else dropped.
        label_rule: per-image label rule, "any" or "majority" (:func:`detx.data.fusion.image_labels`).
        study_groups: SpineXR: folds keep a study's images together, so the CSV must have ``study_id``;
            False splits image by image (an explicit opt-out).
        exclude_readers: rad_ids whose boxes and "No finding" calls leave the labels; an image read only by them
            is dropped (counted in the summary); ids the CSV lacks are named in a warning.
        reader_weights: CSV ``rad_id,weight``: each reader's weight in WBF (NMS: the highest-weighted reader's box
            survives); every reader whose boxes are fused needs one.
        min_readers: keep only fused boxes drawn by at least this many readers (``n_readers``).
        drop_panels: panels (``"R8+R9+R10"``: the exact set of an image's readers) whose images leave the dataset
            (:func:`detx.data.readers.select_panels`; applied before ``exclude_readers``).
        keep_panels: keep only the images of these panels (not with ``drop_panels``).
        keep_normal: with either: an image every reader called normal stays whatever its panel (the 2nd place's
            fine-tuning set is ``drop_panels=["R8+R9+R10"], keep_normal=True``).
        report: write ``report/eda.png``.
        progress: tqdm bars.
        crop: "lungs": cut each image to its lung fields widened by ``crop_margin`` (:mod:`detx.workflows.lung_crop`;
            the crop is recorded in meta.csv ``crop_x0 .. crop_y1`` and the COCO entries' ``crop``), the lung box from
            ``lung_masks`` (a folder of the ``folders`` layout: ``left/<id>.png``, ``right/<id>.png``, ...) or a
            trained segmenter (``lung_config`` + ``lung_weights``).
    """
    if dataset not in DATASET_FORMATS:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_FORMATS)}")
    if fusion not in FUSION_METHODS:
        raise InputError(f"unknown fusion method {fusion!r}; expected one of {FUSION_METHODS}")
    if bit_depth not in (8, 16):
        raise InputError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if size is not None and size < MIN_SIZE:
        raise InputError(f"--size {size} is too small: the longest side must be at least {MIN_SIZE} px")
    if not 0.0 < iou_thr <= 1.0:
        raise InputError(f"--iou-thr {iou_thr} must be in (0, 1]")
    if workers < 1:
        raise InputError(f"--workers {workers} must be at least 1")
    if folds < 0:
        raise InputError(f"--folds {folds} must be >= 0 (0 or 1: no folds)")
    if not 0.0 <= clip_tolerance < 1.0:
        raise InputError(f"--clip-tolerance {clip_tolerance} must be in [0, 1)")
    if min_readers < 1:
        raise InputError(f"--min-readers {min_readers} must be at least 1")
    if min_readers > 1 and fusion == "none":
        raise InputError(f"--min-readers {min_readers} needs --fusion wbf or nms: with --fusion none every box is "
                         "one reader's, so all would be dropped")
    exclude_readers = [str(r) for r in exclude_readers or []]
    drop_panels = [parse_panel(p) for p in drop_panels or []]
    keep_panels = [parse_panel(p) for p in keep_panels or []]
    if drop_panels and keep_panels:
        raise InputError("--drop-panels and --keep-panels exclude each other: give one of them")
    if keep_normal and not (drop_panels or keep_panels):
        raise InputError("--keep-normal needs --drop-panels or --keep-panels: it keeps the normal images of the "
                         "panels those would remove")
    reader_options = [o for o, given in (("--exclude-readers", bool(exclude_readers)),
                                         ("--reader-weights", reader_weights is not None),
                                         ("--min-readers", min_readers > 1),
                                         ("--drop-panels", bool(drop_panels)),
                                         ("--keep-panels", bool(keep_panels))) if given]
    if reader_options and csv is None:
        raise InputError(f"{' and '.join(reader_options)} need(s) --csv: a test set has no readers' boxes")
    check_crop_options(crop, lung_masks, lung_config, lung_weights, crop_margin)
    out = Path(out)
    dicom_dir = Path(dicom_dir)
    log = ProblemLog(strict)
    settings = {
        "csv": str(csv) if csv else None, "dicom_dir": str(dicom_dir), "size": size, "fusion": fusion,
        "iou_thr": iou_thr, "folds": folds, "seed": seed, "box_masks": box_masks, "bit_depth": bit_depth,
        "clip_tolerance": clip_tolerance, "label_rule": label_rule, "study_groups": study_groups,
        "exclude_readers": exclude_readers, "reader_weights": str(reader_weights) if reader_weights else None,
        "min_readers": min_readers, "drop_panels": drop_panels, "keep_panels": keep_panels,
        "keep_normal": keep_normal,
    }
    if crop is not None:
        settings.update(crop=crop, crop_margin=crop_margin, lung_masks=str(lung_masks) if lung_masks else None,
                        lung_config=str(lung_config) if lung_config else None,
                        lung_weights=str(lung_weights) if lung_weights else None)

    # 1. annotations
    global_labels: pd.DataFrame | None = None
    readers_info: dict[str, Any] = {}
    excluded_only: set[str] = set()  # images of dropped panels or read only by excluded readers: not a problem
    weights: dict[str, float] | None = None
    if csv is not None:
        csv = Path(csv)
        fmt = sniff_format(csv) if fmt == "auto" else fmt
        if fmt not in DATASET_FORMATS[dataset]:
            raise InputError(f"{csv}: a {fmt!r} annotation file cannot be prepared as {dataset!r} "
                             f"(expected {' or '.join(DATASET_FORMATS[dataset])})")
        if fmt == "physionet" and image_labels_csv is None:
            image_labels_csv = _find_image_labels(csv)
            if image_labels_csv is not None:
                logger.info("using PhysioNet image labels %s", image_labels_csv)
        table, problems = read_reader_csv(csv, fmt, kaggle_classes=kaggle_classes, strict=strict,
                                          require_study_id=study_groups and folds >= 2)
        log.items.extend(problems)
        if fmt == "physionet" and image_labels_csv is not None:
            global_labels, label_problems = read_physionet_image_labels(image_labels_csv, strict=strict,
                                                                        exclude_readers=exclude_readers)
            log.items.extend(label_problems)
            settings["image_labels_csv"] = str(image_labels_csv)
        key = table.attrs["dataset"]
        settings["format"] = fmt
        if reader_options:
            require_reader_ids(table, csv, " and ".join(reader_options))
        if drop_panels or keep_panels:  # panels are who read each image in the CSV: before excluding readers
            table, panels = select_panels(table, drop_panels, keep_panels, keep_normal, source=csv)
            excluded_only |= set(panels.images_dropped)
            if not len(table):
                raise InputError(f"{'--drop-panels' if drop_panels else '--keep-panels'} "
                                 f"{' '.join(drop_panels or keep_panels)} leaves no image of {csv}")
            readers_info.update(panels.to_dict())
        if exclude_readers:
            table, excluded = remove_readers(table, exclude_readers)
            excluded_only |= set(excluded.images_dropped)
            if excluded.excluded and not len(table):
                raise InputError(f"--exclude-readers {' '.join(excluded.excluded)} leaves no annotation in {csv}: "
                                 "every image was read only by excluded readers")
            readers_info.update(excluded=list(excluded.excluded), excluded_not_in_csv=list(excluded.unknown),
                                images_dropped_excluded_readers=len(excluded.images_dropped))
        weights = read_reader_weights(reader_weights, reader_ids(table)) if reader_weights is not None else None
        if weights is not None and fusion == "none":
            logger.warning("--reader-weights has no effect with --fusion none: every reader's box is kept as it is")
    else:
        key = "vindr-cxr-physionet" if dataset == "vindr-cxr" and not kaggle_classes else dataset
        table = make_table([], dataset=key, classes=DATASET_CLASSES[key])
    classes = DATASET_CLASSES[key]
    bad_row_images = {p.image_id for p in log.items if p.image_id}

    # 2. match images and DICOM files
    dicoms, duplicates = find_dicoms(dicom_dir)
    for image_id, kept, dup in duplicates:
        log.add("duplicate_dicom", f"image {image_id}", f"two DICOM files {kept} and {dup}; using the first", image_id)
    if csv is not None:
        csv_images = set(table["image_id"])
        for image_id in sorted(csv_images - set(dicoms)):
            log.add("missing_dicom", f"image {image_id}",
                    f"listed in {csv.name} but no DICOM file {image_id}.dicom under {dicom_dir}", image_id)
        for image_id in sorted(set(dicoms) - csv_images):
            if image_id in excluded_only:
                continue
            if image_id in bad_row_images:
                log.add("no_valid_rows", f"image {image_id}", f"every row of image {image_id} in {csv.name} "
                        "was invalid; image skipped", image_id)
            else:
                log.add("no_csv_rows", f"image {image_id}", f"DICOM {dicoms[image_id]} has no rows in {csv.name}; "
                        "image skipped", image_id)
        wanted = sorted(csv_images & set(dicoms))
    else:
        wanted = sorted(dicoms)

    # 3. DICOM -> PNG
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    def on_error(r):
        log.add("bad_dicom", f"image {r.image_id}", r.error, r.image_id)

    # with --crop the whole images go to a cache (the lung segmenter reads them) and images/ gets the crops
    full_dir = out / ".cache" / "full_images" if crop else img_dir
    results = convert_dicoms([(i, dicoms[i], full_dir / f"{i}.png") for i in wanted], size, bit_depth=bit_depth,
                             workers=workers, journal=out / ".cache" / "convert.jsonl", on_error=on_error,
                             progress=progress)
    ok = {i: r for i, r in results.items() if not r.error}
    sizes = {i: (r.orig_width, r.orig_height) for i, r in ok.items()}
    crops = {}
    if crop:
        crops = lung_crops(sizes, {i: full_dir / f"{i}.png" for i in ok}, log, lung_masks=lung_masks,
                           lung_config=lung_config, lung_weights=lung_weights, margin=crop_margin)
        for i in sorted(ok):
            if i not in crops:
                ok.pop(i)
                continue
            try:
                crops[i] = write_crop(dicoms[i], img_dir / f"{i}.png", crops[i], size, bit_depth)
            except InputError as e:  # DicomError: the full-resolution decode failed
                log.add("bad_dicom", f"image {i}", str(e), i)
                ok.pop(i)
                continue
            ok[i] = replace(ok[i], width=crops[i].size[0], height=crops[i].size[1])
        sizes = {i: sizes[i] for i in ok}

    # 4. boxes against the image sizes
    table = _subset(table, table["image_id"].isin(ok))
    table = check_box_bounds(table, sizes, log, clip_tolerance, source=csv.name if csv is not None else "")
    if csv is not None:
        emptied = sorted(set(ok) - set(table["image_id"]))
        for image_id in emptied:
            log.add("no_valid_rows", f"image {image_id}", f"every box of image {image_id} was outside the image; "
                    "image skipped", image_id)
            (img_dir / f"{image_id}.png").unlink(missing_ok=True)
            ok.pop(image_id)
    final_ids = sorted(ok)

    # 5. fusion, labels, folds
    meta = pd.DataFrame({
        "image_id": final_ids,
        "orig_width": [ok[i].orig_width for i in final_ids], "orig_height": [ok[i].orig_height for i in final_ids],
        "width": [ok[i].width for i in final_ids], "height": [ok[i].height for i in final_ids],
        "dicom_path": [str(dicoms[i]) for i in final_ids],
    })
    if crop:
        for k, col in enumerate(CROP_COLUMNS):
            meta[col] = [(crops[i].x0, crops[i].y0, crops[i].x1, crops[i].y1)[k] for i in final_ids]
    attrs = pd.DataFrame([ok[i].attributes for i in final_ids], index=meta.index)
    meta = pd.concat([meta, attrs], axis=1)
    summary = PrepareSummary(out=str(out), dataset=key, classes=list(classes), settings=settings,
                             dicoms_found=len(dicoms) + len(duplicates),
                             images_converted=sum(not r.skipped for r in ok.values()),
                             images_already_done=sum(r.skipped for r in ok.values()))
    ann_dir = out / "annotations"
    written: set[str] = set()
    info = {"dataset": key, "size": size, "fusion": fusion if csv is not None else None, "iou_thr": iou_thr,
            "bit_depth": bit_depth, "box_masks": box_masks, "crop": crop, "crop_margin": crop_margin if crop else None}
    if csv is not None:
        fused = fuse_readers(table, fusion, iou_thr, sizes, reader_weights=weights)
        if crop:
            fused = clip_to_crops(fused, crops, log)
        labels = image_labels(table, classes, rule=label_rule).set_index("image_id").reindex(final_ids)
        boxes_dropped = 0
        if min_readers > 1:
            fused, boxes_dropped = keep_min_readers(fused, min_readers)
            # an image keeps a class only where a box of it survived: no label without a box
            kept = image_labels(fused, classes, rule="any").set_index("image_id").reindex(final_ids)
            for c in classes:
                labels[c] = labels[c] & kept[c]
            labels["abnormal"] = labels[list(classes)].any(axis=1).astype(np.int64)
        study = table.groupby("image_id")["study_id"].agg(lambda s: next((v for v in s if v), "")).reindex(final_ids)
        finding_fused = fused[fused["class_name"] != NO_FINDING]
        meta["study_id"] = study.to_numpy()
        meta["n_readers"] = labels["n_readers"].to_numpy()
        meta["readers"] = table.groupby("image_id")["rad_id"].agg(join_readers).reindex(final_ids).fillna("").to_numpy()
        meta["n_boxes"] = finding_fused.groupby("image_id").size().reindex(final_ids, fill_value=0).to_numpy()
        meta["abnormal"] = labels["abnormal"].to_numpy()
        class_matrix = labels[list(classes)].to_numpy()
        meta["classes"] = ["|".join(c for c, v in zip(classes, row) if v) for row in class_matrix]
        extra_labels = None
        if global_labels is not None:
            g = global_labels.set_index("image_id").reindex(final_ids)
            label_cols = [c for c in g.columns if c != "n_label_readers"]
            for c in label_cols:
                meta[f"label_{c}"] = g[c].fillna(-1).astype(np.int64).to_numpy()
            extra_labels = {i: {c: int(v) for c, v in zip(label_cols, row) if v >= 0}
                            for i, row in zip(final_ids, g[label_cols].fillna(-1).to_numpy())}
        if folds >= 2:
            groups = meta["study_id"].to_numpy() if study_groups and (meta["study_id"] != "").any() else None
            meta["fold"] = assign_folds(class_matrix, folds, seed=seed, groups=groups)
        else:
            meta["fold"] = -1
        coco_info = {**info, "label_rule": label_rule, "folds": folds, "seed": seed,
                     "exclude_readers": readers_info.get("excluded", []), "reader_weights": weights,
                     "min_readers": min_readers}
        write_coco(ann_dir / "all.json", build_coco(meta, fused, classes, {**coco_info, "split": "all"},
                                                    box_masks=box_masks, image_labels=extra_labels))
        written.add("all.json")

        def write_split(name: str, ids: pd.Series) -> None:
            write_coco(ann_dir / name, build_coco(meta, fused, classes, {**coco_info, "split": name[:-5]},
                                                  image_ids=ids, box_masks=box_masks, image_labels=extra_labels))
            written.add(name)

        summary.folds.update(write_fold_splits(meta, folds, write_split))
        atomic_write_text(ann_dir / "boxes_readers.csv", table.to_csv(index=False))
        atomic_write_text(ann_dir / "boxes_fused.csv", fused.to_csv(index=False))
        summary.boxes_before_fusion = int((table["class_name"] != NO_FINDING).sum())
        summary.boxes_after_fusion = len(finding_fused)
        before = table[table["class_name"] != NO_FINDING]["class_name"].value_counts()
        after = finding_fused["class_name"].value_counts()
        summary.per_class = {c: {"before": int(before.get(c, 0)), "after": int(after.get(c, 0)),
                                 "images": int(labels[c].sum())} for c in classes}
        per_reader = table[table["class_name"] != NO_FINDING]["rad_id"].replace("", "(unknown)").value_counts()
        natural = sorted(per_reader.index, key=lambda r: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", r)])
        summary.boxes_per_reader = {str(k): int(per_reader[k]) for k in natural}
        per_image = table[table["rad_id"] != ""].groupby("rad_id")["image_id"].nunique()
        kept_readers = sorted(per_image.index, key=reader_sort_key)
        summary.readers = {
            "readers": kept_readers, "excluded": [], "excluded_not_in_csv": [], "images_dropped_excluded_readers": 0,
            "drop_panels": [], "keep_panels": [], "keep_normal": False, "images_dropped_panels": 0,
            **readers_info, "weights": weights, "min_readers": min_readers, "boxes_dropped_min_readers": boxes_dropped,
            "images_per_reader": {r: int(per_image[r]) for r in kept_readers},
            "boxes_without_reader": boxes_without_reader(table),
        }
        summary.images_abnormal = int(meta["abnormal"].sum())
        summary.images_normal = len(meta) - summary.images_abnormal
    else:
        meta["study_id"] = ""
        empty = make_table([], dataset=key, classes=classes)
        unreadable = {i: r.error for i, r in sorted(results.items()) if r.error}
        if unreadable:
            logger.warning("%d test image(s) could not be converted; test.json records them so that a submission "
                           "still gets their rows: %s", len(unreadable), list(unreadable)[:5])
        write_coco(ann_dir / "test.json", build_coco(meta, empty, classes,
                                                     {**info, "split": "test", "unreadable": unreadable}))
        written.add("test.json")
    summary.images = len(meta)
    _remove_stale(ann_dir, written)

    # 6. meta, summary, problems, report
    atomic_write_text(out / "meta.csv", meta.to_csv(index=False))
    summary.problems = log.counts()
    log.write_csv(out / "problems.csv")
    summary.files = sorted(["meta.csv", "problems.csv", "summary.json"] + [f"annotations/{n}" for n in written])
    if report and csv is not None:
        from detx.viz.eda import plot_eda

        plot_eda(summary.to_dict(), out / "report" / "eda.png")
        summary.files.append("report/eda.png")
    write_json(out / "summary.json", summary.to_dict(), indent=2)
    return summary


def default_workers() -> int:
    """DICOM decoding processes by default: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def add_common_prepare_arguments(
    parser: argparse.ArgumentParser,
    *,
    size_default: int,
    folds_help: str | None = None,
    workers_help: str | None = None,
    strict_help: str | None = None,
    quiet: bool = True,
) -> None:
    """Add the options every ``datasets/prepare_*.py`` shares: ``--out --size --folds --seed --workers --strict``
    and, with ``quiet``, ``--quiet`` (no progress bar).

    ``size_default`` is the default longest PNG side; the ``*_help`` texts replace the generic ones where a dataset
    says more (what the folds are grouped by, what a bad input is).
    """
    parser.add_argument("--out", required=True, help="output folder of the prepared dataset")
    parser.add_argument("--size", type=int, default=size_default,
                        help=f"longest side of the PNGs (default {size_default})")
    parser.add_argument("--folds", type=int, default=5,
                        help=folds_help or "number of folds; < 2 writes only all.json")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=workers_help or "conversion processes (default: CPU count, at most 8)")
    parser.add_argument("--strict", action="store_true",
                        help=strict_help or "stop with exit status 1 at the first bad row or image")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_prepare_arguments(parser, dataset: str) -> None:
    """The command-line options of ``datasets/prepare_*.py`` (DESIGN section 2), shared by both scripts."""
    parser.add_argument("--csv", help="reader annotation CSV; leave out for a test set (images only)")
    parser.add_argument("--dicom-dir", required=True, help="folder with the DICOM files (searched recursively)")
    # no --quiet: prepare_from_args always shows the progress bars
    add_common_prepare_arguments(parser, size_default=1024,
                                 workers_help="DICOM decoding processes (default: CPU count, at most 8)",
                                 strict_help="stop with an error at the first bad row or image", quiet=False)
    if dataset == "vindr-cxr":
        parser.add_argument("--format", default="auto", choices=["auto", "kaggle", "physionet"],
                            help="annotation format (default: from the CSV header)")
        parser.add_argument("--image-labels", help="PhysioNet image_labels_*.csv (default: the one next to --csv)")
        parser.add_argument("--kaggle-classes", action=argparse.BooleanOptionalAction, default=True,
                            help="PhysioNet: map the 22 local labels onto the Kaggle 14 (default) or keep all 22")
    parser.add_argument("--fusion", default="wbf", choices=FUSION_METHODS, help="reader fusion (default wbf)")
    parser.add_argument("--iou-thr", type=float, default=0.4, help="IoU above which boxes fuse (default 0.4)")
    parser.add_argument("--box-masks", action="store_true",
                        help="add each box as a rectangle polygon segmentation (Mask R-CNN on box data)")
    parser.add_argument("--bit-depth", type=int, default=8, choices=[8, 16], help="PNG bit depth (default 8)")
    parser.add_argument("--clip-tolerance", type=float, default=0.05,
                        help="clip boxes out of the image by at most this fraction of its side, drop others")
    parser.add_argument("--label-rule", default="any", choices=["any", "majority"],
                        help="image-level label when readers disagree (default any: abnormal if any reader "
                             "drew a box)")
    if dataset == "spinexr":
        parser.add_argument("--no-study-groups", action="store_true",
                            help="prepare a CSV without study_id: folds split image by image (a study's images may "
                                 "then sit in both train and val)")
    parser.add_argument("--exclude-readers", nargs="+", default=[], metavar="R",
                        help="readers (rad_id) whose boxes and No-finding calls leave the labels, e.g. R8 R9 R10; an "
                             "image read only by them is dropped (counted in the summary)")
    parser.add_argument("--reader-weights", default=None, metavar="CSV",
                        help="CSV rad_id,weight: each reader's weight in WBF (every fused reader needs one)")
    parser.add_argument("--min-readers", type=int, default=1, metavar="K",
                        help="keep only fused boxes drawn by at least K readers (default 1: all)")
    parser.add_argument("--drop-panels", nargs="+", default=[], metavar="PANEL",
                        help="drop the images read by these panels (the exact set of an image's readers, e.g. "
                             "R8+R9+R10); tools/readers.py lists the panels of a CSV")
    parser.add_argument("--keep-panels", nargs="+", default=[], metavar="PANEL",
                        help="keep only the images read by these panels (not with --drop-panels)")
    parser.add_argument("--keep-normal", action="store_true",
                        help="with --drop-panels/--keep-panels: keep every image all its readers called normal, "
                             "whatever its panel (the 2nd place's set: --drop-panels R8+R9+R10 --keep-normal)")
    parser.add_argument("--crop", default=None, choices=CROP_MODES,
                        help="lungs: cut each image to its lung fields (with --crop-margin), the box from --lung-masks "
                             "or --lung-config/--lung-weights; the crop is recorded (meta.csv crop_x0..crop_y1) and "
                             "predictions map back to original pixels")
    parser.add_argument("--lung-masks", default=None, metavar="DIR",
                        help="--crop lungs: lung masks of the original images' size (left/<id>.png and "
                             "right/<id>.png, or <id>.png / <id>_mask.png); an image without one is skipped")
    parser.add_argument("--lung-config", default=None, metavar="CFG", help="--crop lungs: a lung segmenter's config "
                        "(configs/lungs/*.yaml)")
    parser.add_argument("--lung-weights", default=None, metavar="W", help="--crop lungs: its trained weights")
    parser.add_argument("--crop-margin", type=float, default=0.05,
                        help="--crop lungs: widen the lung box by this fraction of its width / height on each side "
                             "(default 0.05)")
    parser.add_argument("--no-report", action="store_true", help="skip the report/ plots")


def prepare_from_args(args, dataset: str) -> PrepareSummary:
    """Run :func:`prepare_dataset` with parsed :func:`add_prepare_arguments` options."""
    extra = {}
    if dataset == "vindr-cxr":
        extra = {"fmt": args.format, "image_labels_csv": args.image_labels, "kaggle_classes": args.kaggle_classes}
    else:
        extra = {"study_groups": not args.no_study_groups}
    return prepare_dataset(
        dataset=dataset, csv=args.csv, dicom_dir=args.dicom_dir, out=args.out, size=args.size,
        fusion=args.fusion, iou_thr=args.iou_thr, folds=args.folds, seed=args.seed, workers=args.workers,
        strict=args.strict, box_masks=args.box_masks, bit_depth=args.bit_depth,
        clip_tolerance=args.clip_tolerance, label_rule=args.label_rule, exclude_readers=args.exclude_readers,
        reader_weights=args.reader_weights, min_readers=args.min_readers, drop_panels=args.drop_panels,
        keep_panels=args.keep_panels, keep_normal=args.keep_normal, report=not args.no_report, crop=args.crop,
        lung_masks=args.lung_masks, lung_config=args.lung_config, lung_weights=args.lung_weights,
        crop_margin=args.crop_margin, **extra,
    )
