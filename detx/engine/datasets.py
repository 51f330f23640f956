"""Register a prepared dataset (``datasets/prepare_*.py --out ROOT``) in detectron2's catalogs.

The prepared layout is read through :mod:`detx.core.prepared`. Every ``ROOT/annotations/<split>.json`` becomes ``<prefix>_<split>`` where the prefix is the JSON's
``info.dataset`` with dashes as underscores: ``vindr_cxr_train_fold0``, ``vindr_cxr_val_fold0``,
``vindr_cxr_all``, ``vindr_cxr_test``, ``spinexr_*``. The dataset dicts are loaded lazily with
detectron2's ``load_coco_json`` and keep the image keys ``image_uid``, ``orig_width``, ``orig_height``
(and ``study_id``), which ``load_coco_json`` itself drops.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from detx.core.prepared import (
    IMAGES_DIR,
    PreparedDatasetError,
    annotation_files,
    dataset_image_size,
    image_extras,
    read_coco_json,
)

logger = logging.getLogger(__name__)

# registered name -> (json path, mtime) of what this process registered, for idempotent re-registration.
_REGISTERED: dict[str, tuple[str, float]] = {}
# json path -> the name it was registered under.
_NAME_OF: dict[str, str] = {}


def dataset_prefix(dataset: str) -> str:
    """Registered-name prefix of a dataset key: "vindr-cxr" -> "vindr_cxr"."""
    return dataset.replace("-", "_")


class _CocoNoiseFilter(logging.Filter):
    # load_coco_json warns about category ids outside [1, #categories]; detx's ids are 0-based by design.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Category ids in annotations are not in" not in record.getMessage()


def load_prepared_dicts(json_file: str | os.PathLike, image_root: str | os.PathLike,
                        dataset_name: str | None = None,
                        extras: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """detectron2 dataset dicts of a prepared COCO json, with the :data:`IMAGE_KEYS` kept.

    Args:
        json_file: ``ROOT/annotations/<split>.json``.
        image_root: ``ROOT/images``.
        dataset_name: the registered name (sets its ``thing_classes`` as ``load_coco_json`` does).
        extras: image id -> image keys to add; read from ``json_file`` when None.
    """
    if extras is None:
        extras = image_extras(read_coco_json(Path(json_file)))
    coco_logger = logging.getLogger("detectron2.data.datasets.coco")
    noise = _CocoNoiseFilter()
    coco_logger.addFilter(noise)
    try:
        dicts = load_coco_json(str(json_file), str(image_root), dataset_name,
                               extra_annotation_keys=["segmentation"])
    finally:
        coco_logger.removeFilter(noise)
    for d in dicts:
        d.update(extras.get(d["image_id"], {}))
        if dataset_name is None and not d.get("annotations"):
            d.pop("annotations", None)  # a box-free dataset: no instances (detectron2 would tabulate 0 classes)
    return dicts


def register_prepared_dataset(root: str | os.PathLike) -> list[str]:
    """Register every split of a prepared dataset; return the registered names.

    Idempotent: a name already registered from the same, unchanged file is left alone; a name
    registered from another root (or an older file) is replaced. Metadata: ``thing_classes``,
    ``dataset``, ``data_root``, ``json_file``, ``image_root``, ``evaluator_type`` ("vinbigdata") and
    ``orig_sizes`` (image_uid -> (orig_width, orig_height)).

    Raises:
        PreparedDatasetError: ``root`` is missing, not prepared, or a json lacks ``info.dataset``.
    """
    root = Path(root).resolve()
    image_root = root / IMAGES_DIR
    names = []
    for path in annotation_files(root):
        split = path.stem
        key = (str(path), path.stat().st_mtime)
        name = _NAME_OF.get(str(path))
        if name is not None and _REGISTERED.get(name) == key and name in DatasetCatalog.list():
            names.append(name)  # already registered from this very file
            continue
        data = read_coco_json(path)
        dataset = (data.get("info") or {}).get("dataset")
        if not dataset:
            raise PreparedDatasetError(f"{path} has no info.dataset (e.g. \"vindr-cxr\"); re-run the preparation")
        name = f"{dataset_prefix(dataset)}_{split}"
        if name in DatasetCatalog.list():
            logger.info("re-registering %s from %s", name, path)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        extras = image_extras(data)
        classes = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        DatasetCatalog.register(
            # detectron2's load_coco_json cannot read an empty category list (box-free datasets such as MURA):
            # its metadata step is skipped then; the metadata is set below either way
            name, lambda p=str(path), r=str(image_root), n=name if classes else None, e=extras:
            load_prepared_dicts(p, r, n, e))
        MetadataCatalog.get(name).set(
            thing_classes=classes,
            dataset=dataset,
            data_root=str(root),
            json_file=str(path),
            image_root=str(image_root),
            evaluator_type="vinbigdata",
            orig_sizes={e["image_uid"]: (e["orig_width"], e["orig_height"]) for e in extras.values()
                        if {"image_uid", "orig_width", "orig_height"} <= e.keys()},
        )
        _REGISTERED[name] = key
        _NAME_OF[str(path)] = name
        names.append(name)
    logger.info("registered %s from %s", ", ".join(names), root)
    return names


def split_names(cfg: CfgNode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (train, test) dataset names of ``cfg``: ``DATASETS.TRAIN/TEST``, or from ``DETX.FOLD`` if empty.

    Registers ``DETX.DATA_ROOT`` when it is set.

    Raises:
        PreparedDatasetError: the data root is missing or not prepared, or the fold does not exist.
    """
    train, test = tuple(cfg.DATASETS.TRAIN), tuple(cfg.DATASETS.TEST)
    if not cfg.DETX.DATA_ROOT:
        if not train:
            raise PreparedDatasetError("no training data: set DETX.DATA_ROOT to a prepared dataset "
                                       "(or DATASETS.TRAIN to registered names)")
        return train, test
    names = register_prepared_dataset(cfg.DETX.DATA_ROOT)
    if train:
        return train, test
    prefixes = sorted({MetadataCatalog.get(n).dataset for n in names})
    prefix = dataset_prefix(prefixes[0])
    fold = int(cfg.DETX.FOLD)
    if fold < 0:
        want_train, want_test = f"{prefix}_all", None
    else:
        want_train, want_test = f"{prefix}_train_fold{fold}", f"{prefix}_val_fold{fold}"
    if want_train not in names or (want_test and want_test not in names):
        folds = sorted(int(n.rsplit("fold", 1)[1]) for n in names if "_train_fold" in n)
        raise PreparedDatasetError(
            f"DETX.FOLD {fold} does not exist in {cfg.DETX.DATA_ROOT}: it has folds {folds} "
            f"(annotations/train_fold<k>.json, val_fold<k>.json); -1 trains on all.json")
    return (want_train,), ((want_test,) if want_test else ())


def setup_datasets(cfg: CfgNode) -> CfgNode:
    """Register ``DETX.DATA_ROOT``, fill empty ``DATASETS.TRAIN/TEST`` from ``DETX.FOLD`` and record the
    prepared image size in ``DETX.IMAGE_SIZE`` (in place), so that ``OUTPUT_DIR/config.yaml`` carries it.

    Raises:
        PreparedDatasetError: as :func:`split_names`, or ``DETX.IMAGE_SIZE`` set to another size than the
            data root was prepared at.
    """
    train, test = split_names(cfg)
    size = dataset_image_size(cfg.DETX.DATA_ROOT) if cfg.DETX.DATA_ROOT else None
    if size and cfg.DETX.IMAGE_SIZE and int(cfg.DETX.IMAGE_SIZE) != size:
        raise PreparedDatasetError(
            f"DETX.IMAGE_SIZE {cfg.DETX.IMAGE_SIZE} but {cfg.DETX.DATA_ROOT} was prepared at --size {size}; "
            "leave DETX.IMAGE_SIZE at 0 (it is read from the dataset) or prepare the dataset at that size")
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.DATASETS.TRAIN = train
    cfg.DATASETS.TEST = test
    if size:
        cfg.DETX.IMAGE_SIZE = size
    if was_frozen:
        cfg.freeze()
    return cfg
