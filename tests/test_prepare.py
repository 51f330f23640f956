"""The preparation pipeline end to end on the synthetic datasets, and every bad-input case of issue 3."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd

from detx.data.coco import load_prepared_coco
from detx.data.readers import read_vinbigdata_csv


def test_prepared_cxr_layout(prepared_cxr_dir, synthetic_cxr_dir):
    out = prepared_cxr_dir
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str})
    dicoms = sorted(p.stem for p in (synthetic_cxr_dir / "train").glob("*.dicom"))
    assert sorted(meta["image_id"]) == dicoms
    for r in meta.itertuples():
        png = cv2.imread(str(out / "images" / f"{r.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (r.height, r.width)
        assert max(r.width, r.height) == 128
        assert abs(r.width / r.height - r.orig_width / r.orig_height) < 0.02  # aspect kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(dicoms) and summary["skipped"] == 0
    names = {p.name for p in (out / "annotations").glob("*.json")}
    assert names == {"all.json", "train_fold0.json", "val_fold0.json", "train_fold1.json", "val_fold1.json"}
    full = load_prepared_coco(out / "annotations" / "all.json")
    assert set(full.images) == set(dicoms)
    for k in (0, 1):
        train = set(load_prepared_coco(out / "annotations" / f"train_fold{k}.json").images)
        val = set(load_prepared_coco(out / "annotations" / f"val_fold{k}.json").images)
        assert not train & val and train | val == set(dicoms)
        assert set(meta.loc[meta["fold"] == k, "image_id"]) == val
    # the ground truth read back is the WBF of the readers in original pixels; normal images have no boxes
    table, _ = read_vinbigdata_csv(synthetic_cxr_dir / "train.csv")
    normal = set(table["image_id"]) - set(table.loc[table["class_id"] < 14, "image_id"])
    assert normal and all(len(full.gt[i][0]) == 0 for i in normal)
    assert (meta.set_index("image_id").loc[sorted(normal), "abnormal"] == 0).all()
    for image_id, (boxes, classes) in full.gt.items():
        raw = table[(table["image_id"] == image_id) & (table["class_id"] < 14)]
        assert set(classes.tolist()) == set(raw["class_id"])
        for b, c in zip(boxes, classes):  # each fused box lies within the hull of its class's reader boxes
            rb = raw.loc[raw["class_id"] == c, ["x_min", "y_min", "x_max", "y_max"]].to_numpy()
            assert rb[:, 0].min() - 1 <= b[0] and b[2] <= rb[:, 2].max() + 1


def test_prepared_spinexr_folds_keep_studies(prepared_spinexr_dir):
    meta = pd.read_csv(prepared_spinexr_dir / "meta.csv", dtype={"image_id": str, "study_id": str})
    assert (meta["study_id"].fillna("") != "").all()
    assert (meta.groupby("study_id")["fold"].nunique() == 1).all()
    coco = json.loads((prepared_spinexr_dir / "annotations" / "all.json").read_text())
    assert coco["info"]["dataset"] == "spinexr" and len(coco["categories"]) == 7
    assert all(im["study_id"] for im in coco["images"])
