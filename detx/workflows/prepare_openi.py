"""The Indiana University chest X-ray collection (Open-i) -> the prepared layout every detx tool reads, without
boxes: each image carries its study's normal/abnormal label and the findings of :data:`detx.data.openi.OPENI_FINDINGS`
as ``image_labels`` (train a multi-label classifier with ``MODEL.CLASSIFIER.IMAGE_LABELS``).

Input::

    --reports DIR|TGZ   ecgen-radiology/*.xml (the release's NLMCXR_reports.tgz, extracted or not)
    --images DIR        the images, anywhere below DIR: CXR<n>_..png (PNG release) or <n>_..dcm (DICOM release)
    --metadata CSV      optional: the DICOM header table (nlmcxr_dicom_metadata.csv[.gz]: imageid, View Position)

Output: ``images/<image_id>.png`` (grayscale, longest side ``--size``), ``meta.csv`` (image_id, path, study_id,
patient_id, label, abnormal, view, view_source, mesh_major, sizes, fold), ``reports.csv`` (one row per study: the
report sections, MeSH terms, label, findings, images listed / found), ``annotations/all.json``,
``train_fold{k}.json`` / ``val_fold{k}.json`` (folds grouped by study, stratified by the label and the findings),
``problems.csv`` and ``summary.json``. Open-i de-identifies each report on its own (the DICOM ``Patient ID`` is the
report number), so a study is also its own patient: ``patient_id`` = ``study_id``.

Views: the DICOM ``View Position`` when ``--metadata`` gives it (PA, AP, LL/RL/LATERAL -> LATERAL), else the
caption when it names one view only, else ``unknown`` (most captions describe the study: "PA and lateral").

Bad input, skipped, named and counted in ``problems.csv`` (``--strict``: the first stops the run, exit 1): an
unreadable XML (``bad_report``), a report that lists no image (``no_images``), an image a report lists that is not
under ``--images`` (``missing_image``), an image listed by two reports (``duplicate_image``), an unreadable image
(``bad_image``). Interrupted runs resume (the conversion journal).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from detx.core.errors import InputError, MissingFileError
from detx.core.io import atomic_write_text, folder_lock, write_json
from detx.data.coco_json import build_coco, write_coco
from detx.data.dicom import DICOM_SUFFIXES, convert_dicoms, dicom_image_id
from detx.data.folds import assign_folds
from detx.data.openi import (
    OPENI_FINDINGS,
    caption_view,
    finding_labels,
    is_normal,
    mesh_heading,
    metadata_view,
    openi_image_stems,
    read_openi_reports,
)
from detx.data.readers import ProblemLog, make_table
from detx.workflows.prepare import add_common_prepare_arguments, skipped_and_folds_lines, write_fold_splits

logger = logging.getLogger(__name__)

__all__ = ["OpenISummary", "add_openi_arguments", "index_images", "prepare_openi", "prepare_openi_from_args"]

DATASET = "openi"
LABEL_RULE = "normal iff the MeSH major terms are exactly 'normal'; abnormal otherwise"


@dataclass
class OpenISummary:
    """What an Open-i preparation did (also ``OUT/summary.json``)."""

    out: str
    settings: dict
    reports: int = 0
    normal_reports: int = 0
    reports_with_images: int = 0
    images_listed: int = 0
    images: int = 0
    normal_images: int = 0
    views: dict[str, int] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)  # studies with each finding
    not_indexed_reports: int = 0  # MeSH "No Indexing": abnormal by the rule
    images_converted: int = 0
    images_already_done: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    folds: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "dataset": DATASET, "label_rule": LABEL_RULE, "skipped": sum(self.problems.values())}

    def format(self) -> str:
        lines = [f"Prepared Open-i in {self.out}",
                 f"  reports: {self.reports} ({self.normal_reports} normal by MeSH, {self.reports_with_images} list "
                 f"images, {self.not_indexed_reports} 'No Indexing')",
                 f"  images: {self.images} of {self.images_listed} listed ({self.normal_images} normal); views: "
                 + ", ".join(f"{k} {n}" for k, n in self.views.items()),
                 f"  converted {self.images_converted}, already done {self.images_already_done}"]
        lines += skipped_and_folds_lines(self.problems, sum(self.problems.values()), self.folds,
                                         "folds (grouped by study)")
        return "\n".join(lines)


def index_images(folder: str | os.PathLike) -> dict[str, tuple[Path, str]]:
    """file stem -> (path, ``"dicom"`` or ``"png"``) for every PNG and DICOM file below ``folder`` (a DICOM wins
    over a PNG of the same stem: it holds the original pixels).

    Raises:
        MissingFileError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"--images {root}: not a folder")
    out: dict[str, tuple[Path, str]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            low = name.lower()
            if low.endswith(".png"):
                out.setdefault(name[:-4], (Path(dirpath) / name, "png"))
            elif low.endswith(tuple(DICOM_SUFFIXES)):
                out[dicom_image_id(name)] = (Path(dirpath) / name, "dicom")
    return out


def _read_views(metadata: str | os.PathLike | None) -> dict[str, str]:
    if metadata is None:
        return {}
    path = Path(metadata)
    if not path.is_file():
        raise MissingFileError(f"--metadata {path}: no such file")
    try:
        table = pd.read_csv(path, usecols=lambda c: c in ("imageid", "View Position"), dtype=str)
    except (ValueError, OSError) as e:
        raise InputError(f"--metadata {path}: not a readable CSV ({e})") from e
    if "imageid" not in table.columns:
        raise InputError(f"--metadata {path}: no 'imageid' column (expected the DICOM header table)")
    if "View Position" not in table.columns:
        raise InputError(f"--metadata {path}: no 'View Position' column")
    return {str(i): metadata_view(v) for i, v in zip(table["imageid"], table["View Position"])}


def prepare_openi(reports: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                  metadata: str | os.PathLike | None = None, size: int = 512, folds: int = 5, seed: int = 0,
                  workers: int = 1, strict: bool = False, progress: bool = True) -> OpenISummary:
    """Prepare Open-i (see the module docstring) while holding ``out``'s lock.

    Raises:
        InputError / MissingFileError: missing inputs, impossible options; DataError: a problem under strict.
    """
    if size < 32:
        raise InputError(f"--size {size} is too small: the longest side must be at least 32 px")
    if workers < 1:
        raise InputError(f"--workers {workers} must be at least 1")
    if folds < 0:
        raise InputError(f"--folds {folds} must be >= 0 (0 or 1: no folds)")
    with folder_lock(out):
        return _prepare(reports, images, Path(out), metadata, size, folds, seed, workers, strict, progress)


def _prepare(reports_in, images_in, out: Path, metadata, size: int, folds: int, seed: int, workers: int,
             strict: bool, progress: bool) -> OpenISummary:
    log = ProblemLog(strict)
    settings = {"reports": str(reports_in), "images": str(images_in), "metadata": str(metadata or ""),
                "size": size, "folds": folds, "seed": seed, "label_rule": LABEL_RULE,
                "findings": {k: list(v) for k, v in OPENI_FINDINGS.items()}}
    reports, bad = read_openi_reports(reports_in)
    for name, why in bad:
        log.add("bad_report", name, why)
    files = index_images(images_in)
    views = _read_views(metadata)
    summary = OpenISummary(out=str(out), settings=settings, reports=len(reports))
    rows, study_rows, seen = [], [], {}
    finding_names = list(OPENI_FINDINGS)
    for rep in reports:
        label = 0 if is_normal(rep) else 1
        labels = finding_labels(rep)
        found = 0
        if not rep.images:
            log.add("no_images", rep.source, f"report {rep.study_id} lists no image (parentImage)")
        for img in rep.images:
            if img.image_id in seen:
                log.add("duplicate_image", rep.source, f"image {img.image_id} is listed by {seen[img.image_id]} "
                        f"too; kept there", img.image_id)
                continue
            seen[img.image_id] = rep.study_id
            hit = next((files[s] for s in openi_image_stems(img.image_id) if s in files), None)
            if hit is None:
                log.add("missing_image", rep.source, f"image {img.image_id} of report {rep.study_id} is not under "
                        f"{images_in} (looked for {' / '.join(openi_image_stems(img.image_id))}.png/.dcm)",
                        img.image_id)
                continue
            found += 1
            view, source = next((views[s] for s in openi_image_stems(img.image_id) if views.get(s)), ""), "metadata"
            if not view:
                view, source = caption_view(img.caption), "caption"
            if not view:
                view, source = "unknown", ""
            rows.append({"image_id": img.image_id, "src": hit[0], "kind": hit[1], "study_id": rep.study_id,
                         "patient_id": rep.study_id, "label": label, "view": view, "view_source": source,
                         "mesh_major": "|".join(rep.mesh_major), "labels": labels})
        study_rows.append({"study_id": rep.study_id, "xml": rep.source, "label": label,
                           **{f"finding_{k}": v for k, v in labels.items()},
                           "mesh_major": "|".join(rep.mesh_major), "mesh_minor": "|".join(rep.mesh_minor),
                           "mesh_automatic": "|".join(rep.mesh_automatic), "images_listed": len(rep.images),
                           "images_found": found, **{k.lower(): v for k, v in rep.sections.items()}})
        summary.normal_reports += int(label == 0)
        summary.reports_with_images += int(bool(rep.images))
        summary.images_listed += len(rep.images)
        summary.not_indexed_reports += int(any(mesh_heading(t) == "no indexing" for t in rep.mesh_major))
        for k, v in labels.items():
            summary.findings[k] = summary.findings.get(k, 0) + v
    if not rows:
        raise InputError(f"no image of the {len(reports)} reports was found under {images_in} (see problems: "
                         f"{log.counts()})")
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    def on_error(r):
        log.add("bad_image", f"image {r.image_id}", r.error, r.image_id)

    results = {}
    for kind in ("dicom", "png"):
        jobs = [(r["image_id"], r["src"], img_dir / f"{r['image_id']}.png") for r in rows if r["kind"] == kind]
        if jobs:
            results.update(convert_dicoms(jobs, size, workers=workers, journal=out / ".cache" / "convert.jsonl",
                                          on_error=on_error, progress=progress, source=kind))
    ok = [r for r in rows if not results[r["image_id"]].error]
    if not ok:
        raise InputError(f"none of the {len(rows)} Open-i images could be read (see problems.csv)")
    res = {r["image_id"]: results[r["image_id"]] for r in ok}
    meta = pd.DataFrame([{
        "image_id": r["image_id"], "path": os.path.relpath(r["src"], images_in), "study_id": r["study_id"],
        "patient_id": r["patient_id"], "label": r["label"], "abnormal": r["label"], "view": r["view"],
        "view_source": r["view_source"], "mesh_major": r["mesh_major"],
        "orig_width": res[r["image_id"]].orig_width, "orig_height": res[r["image_id"]].orig_height,
        "width": res[r["image_id"]].width, "height": res[r["image_id"]].height,
    } for r in ok])
    image_labels = {r["image_id"]: r["labels"] for r in ok}
    meta["fold"] = -1
    if folds >= 2:
        strata = np.array([[r["label"], *(r["labels"][k] for k in finding_names)] for r in ok], dtype=np.int64)
        meta["fold"] = assign_folds(strata, folds, seed=seed, groups=meta["study_id"].to_numpy())
    empty = make_table([], dataset=DATASET, classes=tuple(finding_names))
    info = {"dataset": DATASET, "size": size, "fusion": None, "label_source": "Open-i MeSH major terms",
            "label_rule": LABEL_RULE, "image_labels": finding_names, "folds": folds, "seed": seed}
    ann = out / "annotations"
    written = []

    def write(name: str, ids) -> None:
        write_coco(ann / name, build_coco(meta, empty, finding_names, {**info, "split": name[:-5]},
                                          image_ids=list(ids), image_labels=image_labels))
        written.append(f"annotations/{name}")

    write("all.json", meta["image_id"])
    summary.folds.update(write_fold_splits(meta, folds, write))
    summary.images = len(meta)
    summary.normal_images = int((meta["label"] == 0).sum())
    summary.views = {str(k): int(v) for k, v in meta["view"].value_counts().sort_index().items()}
    summary.images_converted = sum(not r.skipped for r in res.values())
    summary.images_already_done = sum(r.skipped for r in res.values())
    atomic_write_text(out / "meta.csv", meta.to_csv(index=False))
    atomic_write_text(out / "reports.csv", pd.DataFrame(study_rows).to_csv(index=False))
    summary.problems = log.counts()
    log.write_csv(out / "problems.csv")
    summary.files = sorted(["meta.csv", "reports.csv", "problems.csv", "summary.json", *written])
    write_json(out / "summary.json", summary.to_dict(), indent=2)
    return summary


def add_openi_arguments(parser) -> None:
    """The command-line options of ``datasets/prepare_openi.py``."""
    parser.add_argument("--reports", required=True, help="folder of ecgen-radiology/*.xml (or NLMCXR_reports.tgz)")
    parser.add_argument("--images", required=True, help="folder of the images (PNG or DICOM release), searched "
                        "recursively")
    parser.add_argument("--metadata", default=None, help="the DICOM header table (nlmcxr_dicom_metadata.csv.gz) "
                        "for the views; without it the views come from the captions")
    add_common_prepare_arguments(parser, size_default=512, folds_help="folds, grouped by study (default 5)",
                                 strict_help="stop with exit status 1 at the first bad report or missing image")


def prepare_openi_from_args(args) -> OpenISummary:
    return prepare_openi(args.reports, args.images, args.out, metadata=args.metadata, size=args.size,
                         folds=args.folds, seed=args.seed, workers=args.workers, strict=args.strict,
                         progress=not args.quiet)
