"""Register a prepared dataset (``datasets/prepare_*.py --out ROOT``) in detectron2's catalogs.

Every ``ROOT/annotations/<split>.json`` becomes ``<prefix>_<split>`` where the prefix is the JSON's
``info.dataset`` with dashes as underscores: ``vindr_cxr_train_fold0``, ``vindr_cxr_val_fold0``,
``vindr_cxr_all``, ``vindr_cxr_test``, ``spinexr_*``. The dataset dicts are loaded lazily with
detectron2's ``load_coco_json`` and keep the image keys ``image_uid``, ``orig_width``, ``orig_height``
(and ``study_id``), which ``load_coco_json`` itself drops.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

logger = logging.getLogger(__name__)

# Image keys of the prepared COCO json copied into every dataset dict.
IMAGE_KEYS = ("image_uid", "orig_width", "orig_height", "study_id")

# registered name -> (json path, mtime) of what this process registered, for idempotent re-registration.
_REGISTERED: dict[str, tuple[str, float]] = {}
# json path -> the name it was registered under.
_NAME_OF: dict[str, str] = {}


class PreparedDatasetError(ValueError):
    """A data root that is not a usable prepared dataset (the message names the path and the problem)."""


def dataset_prefix(dataset: str) -> str:
    """Registered-name prefix of a dataset key: "vindr-cxr" -> "vindr_cxr"."""
    return dataset.replace("-", "_")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PreparedDatasetError(f"cannot read COCO json {path}: {e}") from e
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise PreparedDatasetError(f"{path} is not a COCO json of a prepared dataset (no images/categories)")
    return data


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
        extras = _image_extras(_read_json(Path(json_file)))
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
    return dicts


def _image_extras(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {img["id"]: {k: img[k] for k in IMAGE_KEYS if k in img} for img in data["images"]}


def annotation_files(root: str | os.PathLike) -> list[Path]:
    """The ``annotations/*.json`` of a prepared dataset root.

    Raises:
        PreparedDatasetError: ``root`` does not exist or holds no annotations/images.
    """
    root = Path(root)
    if not str(root) or not root.is_dir():
        raise PreparedDatasetError(
            f"DETX.DATA_ROOT {str(root)!r} does not exist; prepare a dataset first "
            "(datasets/prepare_vindr_cxr.py --out DIR) and pass DETX.DATA_ROOT DIR")
    files = sorted((root / "annotations").glob("*.json"))
    if not files or not (root / "images").is_dir():
        raise PreparedDatasetError(
            f"{root} is not a prepared dataset: expected images/ and annotations/*.json "
            "(written by datasets/prepare_vindr_cxr.py or datasets/prepare_spinexr.py --out)")
    return files


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
    image_root = root / "images"
    names = []
    for path in annotation_files(root):
        split = path.stem
        key = (str(path), path.stat().st_mtime)
        name = _NAME_OF.get(str(path))
        if name is not None and _REGISTERED.get(name) == key and name in DatasetCatalog.list():
            names.append(name)  # already registered from this very file
            continue
        data = _read_json(path)
        dataset = (data.get("info") or {}).get("dataset")
        if not dataset:
            raise PreparedDatasetError(f"{path} has no info.dataset (e.g. \"vindr-cxr\"); re-run the preparation")
        name = f"{dataset_prefix(dataset)}_{split}"
        if name in DatasetCatalog.list():
            logger.info("re-registering %s from %s", name, path)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        extras = _image_extras(data)
        classes = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        DatasetCatalog.register(
            name, lambda p=str(path), r=str(image_root), n=name, e=extras: load_prepared_dicts(p, r, n, e))
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
    """Register ``DETX.DATA_ROOT`` and fill empty ``DATASETS.TRAIN/TEST`` from ``DETX.FOLD`` (in place)."""
    train, test = split_names(cfg)
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.DATASETS.TRAIN = train
    cfg.DATASETS.TEST = test
    if was_frozen:
        cfg.freeze()
    return cfg
