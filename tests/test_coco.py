"""COCO JSON of a prepared dataset: layout, detectron2 round trip, reading back in original pixels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from detx.core.classes import VINDR_CXR_CLASSES
from detx.core.prepared import load_prepared_coco
from detx.data.coco_json import build_coco, write_coco
from detx.data.readers import make_table

META = pd.DataFrame({
    "image_id": ["abc", "nrm", "wide"],
    "orig_width": [2000, 1500, 3000],
    "orig_height": [2500, 1500, 1000],
    "width": [205, 256, 256],
    "height": [256, 256, 85],
    "study_id": ["", "", ""],
    "abnormal": [1, 0, 1],
})
NAN4 = (np.nan,) * 4
BOXES = make_table([
    ("abc", "fused", "Aortic enlargement", 0, 100.0, 200.0, 901.0, 1333.0, "", -1),
    ("abc", "fused", "Nodule/Mass", 8, 1500.5, 10.25, 1999.0, 2499.0, "", -1),
    ("nrm", "fused", "No finding", 14, *NAN4, "", -1),
    ("wide", "R3", "Pleural effusion", 10, 0.0, 0.0, 3000.0, 1000.0, "", -1),
], dataset="vindr-cxr", classes=VINDR_CXR_CLASSES)


def _coco(**kw):
    return build_coco(META, BOXES, VINDR_CXR_CLASSES, info={"dataset": "vindr-cxr", "size": 256}, **kw)


def test_layout():
    coco = _coco()
    assert coco["info"]["dataset"] == "vindr-cxr" and coco["info"]["classes"] == list(VINDR_CXR_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(14))
    assert [im["image_uid"] for im in coco["images"]] == ["abc", "nrm", "wide"]
    assert coco["images"][0] == {"id": 1, "file_name": "abc.png", "width": 205, "height": 256, "image_uid": "abc",
                                 "orig_width": 2000, "orig_height": 2500, "study_id": "", "abnormal": 1}
    assert len(coco["annotations"]) == 3  # the normal image is present with no annotations
    a = coco["annotations"][0]
    sx, sy = 205 / 2000, 256 / 2500
    assert a["category_id"] == 0 and a["image_id"] == 1 and a["iscrowd"] == 0
    np.testing.assert_allclose(a["bbox"], [100 * sx, 200 * sy, 801 * sx, 1133 * sy], atol=1e-3)
    assert a["area"] == pytest.approx(801 * sx * 1133 * sy, abs=1e-2)
    assert "segmentation" not in a
    json.dumps(coco, allow_nan=False)


def test_split_keeps_image_ids_and_box_masks():
    coco = _coco(image_ids=["wide"], box_masks=True)
    assert [im["id"] for im in coco["images"]] == [3]
    (a,) = coco["annotations"]
    assert a["image_id"] == 3 and a["bbox"] == [0, 0, 256, 85]
    assert a["segmentation"] == [[0, 0, 256, 0, 256, 85, 0, 85]]
    with pytest.raises(ValueError, match="not in meta"):
        _coco(image_ids=["nope"])


def test_load_prepared_coco_gives_original_pixels(tmp_path):
    path = tmp_path / "annotations" / "all.json"
    write_coco(path, _coco())
    prep = load_prepared_coco(path)
    assert prep.classes == VINDR_CXR_CLASSES and prep.image_dir == tmp_path / "images"
    assert prep.image_path("abc") == tmp_path / "images" / "abc.png"
    boxes, classes = prep.gt["abc"]
    np.testing.assert_allclose(boxes, [[100, 200, 901, 1333], [1500.5, 10.25, 1999, 2499]], atol=0.1)
    assert classes.tolist() == [0, 8]
    assert prep.gt["nrm"][0].shape == (0, 4) and prep.gt["nrm"][1].dtype == np.int64
    assert prep.images["wide"]["orig_width"] == 3000


def test_detectron2_load_coco_json_round_trip(tmp_path):
    d2 = pytest.importorskip("detectron2.data.datasets")
    from detectron2.structures import BoxMode

    path = tmp_path / "annotations" / "all.json"
    write_coco(path, _coco(box_masks=True))
    dicts = d2.load_coco_json(str(path), str(tmp_path / "images"), dataset_name="detx_test_coco_roundtrip",
                              extra_annotation_keys=[])
    by_name = {d["file_name"].rsplit("/", 1)[-1]: d for d in dicts}
    assert set(by_name) == {"abc.png", "nrm.png", "wide.png"}
    assert by_name["nrm.png"]["annotations"] == []
    meta = META.set_index("image_id")
    want = BOXES[BOXES["class_id"] < 14]
    for uid, grp in want.groupby("image_id"):
        rec = by_name[f"{uid}.png"]
        assert (rec["width"], rec["height"]) == (meta.loc[uid, "width"], meta.loc[uid, "height"])
        sx, sy = meta.loc[uid, "orig_width"] / rec["width"], meta.loc[uid, "orig_height"] / rec["height"]
        got = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in rec["annotations"]])
        got = got * [sx, sy, sx, sy]
        np.testing.assert_allclose(got, grp[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), atol=1.0)
        # detectron2 maps the 0-based category ids to contiguous ids in the same order
        assert [a["category_id"] for a in rec["annotations"]] == grp["class_id"].tolist()
        assert all(len(a["segmentation"][0]) == 8 for a in rec["annotations"])
