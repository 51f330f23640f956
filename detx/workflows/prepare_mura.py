"""MURA v1.1 (musculoskeletal radiographs, labelled normal/abnormal per study) -> the prepared layout every detx tool
reads, without boxes.

Input, as released (``--root DIR`` holds ``MURA-v1.1/``, or is it)::

    MURA-v1.1/{train,valid}_image_paths.csv      no header; one path per line, relative to DIR
                                                 (MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png)
    MURA-v1.1/{train,valid}_labeled_studies.csv  no header; "<study folder>/,<0|1>"
    MURA-v1.1/{train,valid}/XR_<PART>/patient<id>/study<n>_<positive|negative>/image<k>.png

Output: ``images/<image_id>.png`` (grayscale, aspect kept, longest side ``--size``), ``meta.csv`` (image_id, path,
study_id, patient_id, body_part, label, split, fold, original and PNG sizes), COCO JSON without boxes carrying the
image-level label (``abnormal``) and ``study_id``/``patient_id``/``body_part``: ``annotations/all.json`` and
``train_fold{k}.json``/``val_fold{k}.json`` for the train split, and the official valid split kept apart as
``annotations/valid.json`` (never in a training fold). Folds are grouped by patient and stratified by body part x
label. The image id is the path below ``MURA-v1.1/`` without ``.png``, slashes as underscores
(``train_XR_WRIST_patient00001_study1_positive_image1``): unique and stable.

Bad input, each skipped, named (path or CSV line) and counted in ``problems.csv`` (``--strict``: the first stops the
run): a listed image that does not exist, an unreadable PNG, a study whose CSV label contradicts its folder name, a
duplicate path, an image whose study has no label. Interrupted runs resume (the conversion journal).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detx.core.classes import MURA_BODY_PARTS
from detx.core.errors import InputError, MissingFileError
from detx.core.io import atomic_write_text, folder_lock, write_json
from detx.data.coco_json import build_coco, write_coco
from detx.data.dicom import convert_dicoms
from detx.data.folds import assign_folds
from detx.data.readers import ProblemLog, make_table
from detx.workflows.prepare import add_common_prepare_arguments, skipped_and_folds_lines, write_fold_splits

logger = logging.getLogger(__name__)

__all__ = ["MuraSummary", "add_mura_arguments", "find_mura_root", "mura_image_id", "prepare_mura",
           "prepare_mura_from_args"]

DATASET = "mura"
SPLITS = ("train", "valid")
_STUDY = re.compile(r"^(?P<split>train|valid)/(?P<part>XR_[A-Z]+)/(?P<patient>patient\d+)/"
                    r"(?P<study>study\d+_(?P<verdict>positive|negative))$")


@dataclass
class MuraSummary:
    """What a MURA preparation did (also ``OUT/summary.json``)."""

    out: str
    settings: dict
    images: dict[str, int] = field(default_factory=dict)  # per split
    studies: dict[str, int] = field(default_factory=dict)
    abnormal_studies: dict[str, int] = field(default_factory=dict)
    per_body_part: dict[str, dict[str, int]] = field(default_factory=dict)
    images_converted: int = 0
    images_already_done: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    folds: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "dataset": DATASET, "skipped": sum(self.problems.values())}

    def format(self) -> str:
        lines = [f"Prepared MURA in {self.out}"]
        for s in SPLITS:
            if s in self.images:
                lines.append(f"  {s}: {self.images[s]} images in {self.studies.get(s, 0)} studies "
                             f"({self.abnormal_studies.get(s, 0)} abnormal)")
        lines.append(f"  converted {self.images_converted}, already done {self.images_already_done}")
        lines += skipped_and_folds_lines(self.problems, sum(self.problems.values()), self.folds,
                                         "folds (train split, grouped by patient)")
        return "\n".join(lines)


def find_mura_root(root: str | os.PathLike) -> Path:
    """The ``MURA-v1.1`` folder: ``root`` itself or ``root/MURA-v1.1`` (the one with ``train_image_paths.csv``).

    Raises:
        MissingFileError: neither holds the release's CSVs.
    """
    root = Path(root)
    for cand in (root / "MURA-v1.1", root):
        if (cand / "train_image_paths.csv").is_file() or (cand / "valid_image_paths.csv").is_file():
            return cand
    raise MissingFileError(f"{root} is not a MURA release: expected MURA-v1.1/train_image_paths.csv (or "
                           "valid_image_paths.csv) in it or below it")


def _below_release(line: str) -> str:
    """A CSV path relative to the release folder (``train/XR_WRIST/...``), whatever prefix the CSV carries."""
    parts = line.strip().replace("\\", "/").strip("/").split("/")
    if "MURA-v1.1" in parts:
        parts = parts[parts.index("MURA-v1.1") + 1:]
    return "/".join(parts)


def mura_image_id(rel_path: str) -> str:
    """``train/XR_WRIST/patient00001/study1_positive/image1.png`` -> ``train_XR_WRIST_patient00001_study1_positive_image1``."""
    rel = _below_release(rel_path)
    return (rel[:-4] if rel.lower().endswith(".png") else rel).replace("/", "_")


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row and any(c.strip() for c in row)]


def _read_split(release: Path, split: str, log: ProblemLog) -> list[dict[str, Any]]:
    """The images of one split with their study's label; bad rows become problems."""
    paths_csv = release / f"{split}_image_paths.csv"
    studies_csv = release / f"{split}_labeled_studies.csv"
    if not paths_csv.is_file():
        return []
    if not studies_csv.is_file():
        raise MissingFileError(f"{studies_csv} is missing: the labels of the {split} studies")
    labels: dict[str, int] = {}
    for n, row in _read_lines(studies_csv):
        where = f"{studies_csv.name} line {n}"
        study = _below_release(row[0])
        m = _STUDY.match(study)
        if len(row) < 2 or row[1].strip() not in ("0", "1") or m is None:
            log.add("bad_label", where, f"expected '<study folder>/,<0|1>', got {','.join(row)!r}")
            continue
        label = int(row[1].strip())
        if label != int(m.group("verdict") == "positive"):
            log.add("label_conflict", where, f"study {study} is labelled {label} but its folder says "
                    f"{m.group('verdict')}; its images are skipped")
            labels[study] = -1
            continue
        labels[study] = label
    seen: set[str] = set()
    out = []
    for n, row in _read_lines(paths_csv):
        where = f"{paths_csv.name} line {n}"
        rel = _below_release(row[0])
        study = rel.rsplit("/", 1)[0]
        m = _STUDY.match(study)
        if m is None or not rel.lower().endswith(".png"):
            log.add("bad_path", where, f"{row[0]!r} is not <split>/XR_<PART>/patient<id>/study<n>_<verdict>/<image>.png")
            continue
        if m.group("split") != split:
            log.add("bad_path", where, f"{rel} is listed in the {split} split but lies in {m.group('split')}")
            continue
        if rel in seen:
            log.add("duplicate_path", where, f"{rel} is listed twice; the first is kept", mura_image_id(rel))
            continue
        seen.add(rel)
        image_id = mura_image_id(rel)
        if study not in labels:
            log.add("missing_label", where, f"study {study} of {rel} has no row in {studies_csv.name}", image_id)
            continue
        if labels[study] < 0:
            continue  # contradicting label, reported once per study
        src = release / rel
        if not src.is_file():
            log.add("missing_image", where, f"{rel} is listed but does not exist", image_id)
            continue
        part = m.group("part")
        if part not in MURA_BODY_PARTS:
            logger.warning("%s: body part %s is not one of MURA's seven", where, part)
        out.append({"image_id": image_id, "path": f"MURA-v1.1/{rel}", "src": src, "study_id": study,
                    "patient_id": m.group("patient"), "body_part": part, "label": labels[study], "split": split})
    return out


def prepare_mura(root: str | os.PathLike, out: str | os.PathLike, size: int = 512, folds: int = 5, seed: int = 0,
                 workers: int = 1, strict: bool = False, progress: bool = True) -> MuraSummary:
    """Prepare MURA (see the module docstring) while holding ``out``'s lock.

    Raises:
        InputError / MissingFileError: not a MURA release, impossible options; DataError: a problem under strict.
    """
    if size < 32:
        raise InputError(f"--size {size} is too small: the longest side must be at least 32 px")
    if workers < 1:
        raise InputError(f"--workers {workers} must be at least 1")
    if folds < 0:
        raise InputError(f"--folds {folds} must be >= 0 (0 or 1: no folds)")
    release = find_mura_root(root)
    with folder_lock(out):
        return _prepare(release, Path(out), size, folds, seed, workers, strict, progress)


def _prepare(release: Path, out: Path, size: int, folds: int, seed: int, workers: int, strict: bool,
             progress: bool) -> MuraSummary:
    log = ProblemLog(strict)
    settings = {"root": str(release), "size": size, "folds": folds, "seed": seed}
    rows = [r for s in SPLITS for r in _read_split(release, s, log)]
    if not rows:
        raise InputError(f"{release} lists no usable image in train_image_paths.csv or valid_image_paths.csv")
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    def on_error(r):
        log.add("bad_image", f"image {r.image_id}", r.error, r.image_id)

    results = convert_dicoms([(r["image_id"], r["src"], img_dir / f"{r['image_id']}.png") for r in rows], size,
                             workers=workers, journal=out / ".cache" / "convert.jsonl", on_error=on_error,
                             progress=progress, source="png")
    ok = [r for r in rows if not results[r["image_id"]].error]
    meta = pd.DataFrame([{
        "image_id": r["image_id"], "path": r["path"], "study_id": r["study_id"], "patient_id": r["patient_id"],
        "body_part": r["body_part"], "label": r["label"], "abnormal": r["label"], "split": r["split"],
        "orig_width": results[r["image_id"]].orig_width, "orig_height": results[r["image_id"]].orig_height,
        "width": results[r["image_id"]].width, "height": results[r["image_id"]].height,
        "channels": results[r["image_id"]].attributes.get("channels", 1),
    } for r in ok])
    meta["fold"] = -1
    train = (meta["split"] == "train").to_numpy()
    summary = MuraSummary(out=str(out), settings=settings,
                          images_converted=sum(not results[r["image_id"]].skipped for r in ok),
                          images_already_done=sum(results[r["image_id"]].skipped for r in ok))
    if folds >= 2 and train.any():
        strata = meta.loc[train, "body_part"] + "|" + meta.loc[train, "label"].astype(str)
        onehot = pd.get_dummies(strata).to_numpy(dtype=np.int64)
        meta.loc[train, "fold"] = assign_folds(onehot, folds, seed=seed, groups=meta.loc[train, "patient_id"].to_numpy())
    empty = make_table([], dataset=DATASET, classes=())
    info = {"dataset": DATASET, "size": size, "fusion": None, "label_source": "MURA labelled studies",
            "folds": folds, "seed": seed}
    ann = out / "annotations"
    written = []

    def write(name: str, ids) -> None:
        write_coco(ann / name, build_coco(meta, empty, (), {**info, "split": name[:-5]}, image_ids=list(ids)))
        written.append(f"annotations/{name}")

    if train.any():
        write("all.json", meta.loc[train, "image_id"])
        summary.folds.update(write_fold_splits(meta, folds, write, rows=train))
    if (~train).any():
        write("valid.json", meta.loc[~train, "image_id"])
    for s in SPLITS:
        part = meta[meta["split"] == s]
        if len(part):
            studies = part.groupby("study_id")["label"].max()
            summary.images[s] = len(part)
            summary.studies[s] = len(studies)
            summary.abnormal_studies[s] = int(studies.sum())
    for bp, part in meta.groupby("body_part"):
        summary.per_body_part[str(bp)] = {"images": len(part), "studies": int(part["study_id"].nunique()),
                                          "abnormal_images": int(part["label"].sum())}
    atomic_write_text(out / "meta.csv", meta.to_csv(index=False))
    summary.problems = log.counts()
    log.write_csv(out / "problems.csv")
    summary.files = sorted(["meta.csv", "problems.csv", "summary.json", *written])
    write_json(out / "summary.json", summary.to_dict(), indent=2)
    return summary


def add_mura_arguments(parser) -> None:
    """The command-line options of ``datasets/prepare_mura.py``."""
    parser.add_argument("--root", required=True, help="folder holding MURA-v1.1/ (or MURA-v1.1 itself)")
    add_common_prepare_arguments(parser, size_default=512,
                                 folds_help="folds of the train split, grouped by patient (default 5)")


def prepare_mura_from_args(args) -> MuraSummary:
    return prepare_mura(args.root, args.out, size=args.size, folds=args.folds, seed=args.seed, workers=args.workers,
                        strict=args.strict, progress=not args.quiet)
