"""Registration of a prepared dataset root in detectron2's catalogs, and fold resolution."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from detx.core.classes import SPINEXR_CLASSES
from detx.core.prepared import PreparedDatasetError
from detx.engine.config import get_detx_cfg
from detx.engine.datasets import register_prepared_dataset, setup_datasets

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/quick_schedules/vindr_cxr_tiny.yaml")


def write_root(root: Path, dataset: str = "spinexr", classes=SPINEXR_CLASSES, train_ids=(0, 1), val_ids=(2,)):
    """A hand-made prepared root: 3 PNGs (64x48), image 2 normal; fold 0 only."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"uid{i}.png"), np.full((48, 64), 40 * i, np.uint8))
        images.append({"id": i, "file_name": f"uid{i}.png", "width": 64, "height": 48, "image_uid": f"uid{i}",
                       "orig_width": 640, "orig_height": 480, "study_id": f"s{i}"})
    anns.append({"id": 1, "image_id": 0, "category_id": 0, "bbox": [4, 6, 10, 12], "area": 120, "iscrowd": 0})
    anns.append({"id": 2, "image_id": 1, "category_id": 6, "bbox": [30, 20, 8, 8], "area": 64, "iscrowd": 0})
    cats = [{"id": k, "name": c} for k, c in enumerate(classes)]

    def dump(name, ids):
        data = {"info": {"dataset": dataset, "classes": list(classes)}, "categories": cats,
                "images": [im for im in images if im["id"] in ids],
                "annotations": [a for a in anns if a["image_id"] in ids]}
        (root / "annotations" / f"{name}.json").write_text(json.dumps(data))

    dump("all", {0, 1, 2})
    dump("train_fold0", set(train_ids))
    dump("val_fold0", set(val_ids))
    return root


def test_register_names_metadata_and_dicts(tmp_path):
    root = write_root(tmp_path / "prep")
    names = register_prepared_dataset(root)
    assert sorted(names) == ["spinexr_all", "spinexr_train_fold0", "spinexr_val_fold0"]
    meta = MetadataCatalog.get("spinexr_all")
    assert meta.thing_classes == list(SPINEXR_CLASSES)
    assert meta.orig_sizes == {"uid0": (640, 480), "uid1": (640, 480), "uid2": (640, 480)}
    assert meta.dataset == "spinexr" and Path(meta.data_root) == root.resolve()
    dicts = {d["image_uid"]: d for d in DatasetCatalog.get("spinexr_all")}
    assert set(dicts) == {"uid0", "uid1", "uid2"}
    d0 = dicts["uid0"]
    assert (d0["orig_width"], d0["orig_height"], d0["study_id"]) == (640, 480, "s0")
    assert Path(d0["file_name"]) == root.resolve() / "images" / "uid0.png"
    (a,) = d0["annotations"]
    assert a["bbox"] == [4, 6, 10, 12] and a["bbox_mode"] == BoxMode.XYWH_ABS and a["category_id"] == 0
    assert dicts["uid1"]["annotations"][0]["category_id"] == 6  # 0-based ids are kept as they are
    assert dicts["uid2"]["annotations"] == []  # the normal image is present, without boxes
    assert [d["image_uid"] for d in DatasetCatalog.get("spinexr_val_fold0")] == ["uid2"]


def test_registration_is_idempotent_and_follows_a_new_root(tmp_path):
    a = write_root(tmp_path / "a")
    names = register_prepared_dataset(a)
    fn = DatasetCatalog["spinexr_all"]
    assert register_prepared_dataset(a) == names  # no "already registered" error
    assert DatasetCatalog["spinexr_all"] is fn  # left alone
    b = write_root(tmp_path / "b", train_ids=(0,), val_ids=(1, 2))
    assert register_prepared_dataset(b) == names
    assert Path(MetadataCatalog.get("spinexr_all").data_root) == b.resolve()
    assert [d["image_uid"] for d in DatasetCatalog.get("spinexr_val_fold0")] == ["uid1", "uid2"]


def test_fold_resolution(tmp_path):
    root = write_root(tmp_path / "prep")
    cfg = setup_datasets(get_detx_cfg(TINY, ["DETX.DATA_ROOT", str(root), "MODEL.ROI_HEADS.NUM_CLASSES", "7"]))
    assert cfg.is_frozen()
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("spinexr_train_fold0",), ("spinexr_val_fold0",))
    cfg = setup_datasets(get_detx_cfg(TINY, ["DETX.DATA_ROOT", str(root), "DETX.FOLD", "-1"]))
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("spinexr_all",), ())
    with pytest.raises(PreparedDatasetError, match=r"DETX.FOLD 2 does not exist .* folds \[0\]"):
        setup_datasets(get_detx_cfg(TINY, ["DETX.DATA_ROOT", str(root), "DETX.FOLD", "2"]))
    # explicit DATASETS.* win over the fold
    cfg = setup_datasets(get_detx_cfg(TINY, ["DETX.DATA_ROOT", str(root), "DATASETS.TRAIN", "('spinexr_all',)"]))
    assert cfg.DATASETS.TRAIN == ("spinexr_all",)


def test_bad_roots(tmp_path):
    with pytest.raises(PreparedDatasetError, match="does not exist"):
        register_prepared_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreparedDatasetError, match="not a prepared dataset"):
        register_prepared_dataset(tmp_path / "empty")
    root = write_root(tmp_path / "broken")
    (root / "annotations" / "all.json").write_text("{not json")
    with pytest.raises(PreparedDatasetError, match=r"cannot read COCO json .*all\.json"):
        register_prepared_dataset(root)
    with pytest.raises(PreparedDatasetError, match="set DETX.DATA_ROOT"):
        setup_datasets(get_detx_cfg(TINY))
