"""Reader fusion against hand-computed boxes, and the per-image label rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detx.core.boxes import box_iou
from detx.core.classes import VINDR_CXR_CLASSES
from detx.data.fusion import fuse_readers, image_labels
from detx.data.readers import make_table

A, B = 0, 3  # Aortic enlargement, Cardiomegaly


def _table(rows):
    full = [(img, rad, VINDR_CXR_CLASSES[c] if c < 14 else "No finding", c, *box, "", i + 2)
            for i, (img, rad, c, box) in enumerate(rows)]
    return make_table(full, dataset="vindr-cxr", classes=VINDR_CXR_CLASSES)


NAN4 = (np.nan,) * 4
ROWS = [
    ("img", "R1", A, (10, 10, 50, 50)),
    ("img", "R2", A, (12, 8, 52, 48)),
    ("img", "R3", A, (8, 12, 48, 52)),
    ("img", "R1", A, (70, 70, 90, 90)),   # far from the others: its own cluster
    ("img", "R2", B, (10, 10, 50, 50)),   # same place, other class: never fused with A
    ("nrm", "R1", 14, NAN4),
    ("nrm", "R2", 14, NAN4),
    ("one", "R7", A, (0, 0, 10, 10)),     # a single reader: kept as is
    ("one", "R7", A, (1, 1, 11, 11)),
]


def _boxes(df):
    return df[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=float)


def test_wbf_three_jittered_readers_become_their_mean():
    fused = fuse_readers(_table(ROWS), "wbf", iou_thr=0.4, image_sizes={"img": (100, 100)})
    img = fused[fused["image_id"] == "img"]
    a = img[img["class_id"] == A]
    np.testing.assert_allclose(_boxes(a), [[10, 10, 50, 50], [70, 70, 90, 90]], atol=1e-3)
    assert list(a["n_readers"]) == [3, 1]
    b = img[img["class_id"] == B]
    np.testing.assert_allclose(_boxes(b), [[10, 10, 50, 50]], atol=1e-3)
    assert set(img["rad_id"]) == {"fused"} and set(img["row"]) == {-1}
    nrm = fused[fused["image_id"] == "nrm"]
    assert list(nrm["class_name"]) == ["No finding"] and list(nrm["class_id"]) == [14]
    assert nrm["n_readers"].tolist() == [2] and nrm[["x_min"]].isna().all().all()
    one = fused[fused["image_id"] == "one"]
    np.testing.assert_allclose(_boxes(one), [[0, 0, 10, 10], [1, 1, 11, 11]])
    assert list(one["rad_id"]) == ["R7", "R7"]


def test_wbf_without_image_sizes_is_scale_invariant():
    with_sizes = fuse_readers(_table(ROWS), "wbf", image_sizes={"img": (100, 100), "one": (20, 20)})
    without = fuse_readers(_table(ROWS), "wbf")
    np.testing.assert_allclose(_boxes(with_sizes.dropna()), _boxes(without.dropna()), atol=1e-3)


def test_wbf_weighted_mean_hand_computed():
    rows = [("i", "R1", A, (0, 0, 40, 40)), ("i", "R2", A, (4, 0, 44, 40)), ("i", "R3", A, (2, 6, 42, 46))]
    fused = fuse_readers(_table(rows), "wbf", iou_thr=0.4, image_sizes={"i": (200, 100)})
    np.testing.assert_allclose(_boxes(fused), [[2, 2, 42, 42]], atol=1e-3)


def test_nms_keeps_one_original_box_per_cluster():
    fused = fuse_readers(_table(ROWS), "nms", iou_thr=0.4, image_sizes={"img": (100, 100)})
    a = fused[(fused["image_id"] == "img") & (fused["class_id"] == A)]
    assert len(a) == 2
    originals = {tuple(r[3]) for r in ROWS if r[0] == "img" and r[2] == A}
    assert {tuple(np.round(b, 3)) for b in _boxes(a)} <= {tuple(map(float, o)) for o in originals}
    assert (fused[(fused["image_id"] == "img")]["class_id"] == B).sum() == 1


def test_none_keeps_every_readers_box():
    table = _table(ROWS)
    fused = fuse_readers(table, "none")
    finding = table[table["class_id"] != 14]
    assert len(fused) == len(finding) + 1  # + the single "No finding" row of image nrm
    np.testing.assert_allclose(_boxes(fused[fused["class_id"] != 14]), _boxes(finding))
    assert list(fused[fused["class_id"] != 14]["rad_id"]) == list(finding["rad_id"])


def test_iou_threshold_separates_clusters():
    rows = [("i", "R1", A, (0, 0, 10, 10)), ("i", "R2", A, (5, 0, 15, 10))]  # IoU = 50/150 = 1/3
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(1 / 3)
    assert len(fuse_readers(_table(rows), "wbf", iou_thr=0.4)) == 2
    assert len(fuse_readers(_table(rows), "wbf", iou_thr=0.3)) == 1


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_readers(_table(ROWS), "mean")


def test_image_labels_any_and_majority():
    rows = [
        ("x", "R1", A, (0, 0, 5, 5)), ("x", "R2", 14, NAN4), ("x", "R3", 14, NAN4),   # 1 of 3 readers
        ("y", "R1", A, (0, 0, 5, 5)), ("y", "R2", A, (0, 0, 5, 5)), ("y", "R3", B, (1, 1, 4, 4)),
        ("z", "R1", 14, NAN4), ("z", "R2", 14, NAN4),
    ]
    table = _table(rows)
    any_ = image_labels(table).set_index("image_id")
    assert any_["abnormal"].to_dict() == {"x": 1, "y": 1, "z": 0}
    assert any_.loc["y", VINDR_CXR_CLASSES[A]] == 1 and any_.loc["y", VINDR_CXR_CLASSES[B]] == 1
    assert any_["n_readers"].to_dict() == {"x": 3, "y": 3, "z": 2}
    assert any_.loc["z", list(VINDR_CXR_CLASSES)].sum() == 0
    # the rule gives the same answer after fusion
    fused = image_labels(fuse_readers(table, "wbf")).set_index("image_id")
    pd.testing.assert_frame_equal(fused.drop(columns="n_readers"), any_.drop(columns="n_readers"))
    maj = image_labels(table, rule="majority").set_index("image_id")
    assert maj["abnormal"].to_dict() == {"x": 0, "y": 1, "z": 0}
    assert maj.loc["y", VINDR_CXR_CLASSES[A]] == 1 and maj.loc["y", VINDR_CXR_CLASSES[B]] == 0
    with pytest.raises(ValueError, match="before fusion"):
        image_labels(fuse_readers(table, "wbf"), rule="majority")


# ------------------------------------------------------------------------------ who drew what, weights (issue 14)


def test_readers_of_each_fused_box():
    fused = fuse_readers(_table(ROWS), "wbf", iou_thr=0.4, image_sizes={"img": (100, 100)})
    img = fused[fused["image_id"] == "img"]
    a = img[img["class_id"] == A]
    assert list(a["readers"]) == ["R1|R2|R3", "R1"] and list(a["n_readers"]) == [3, 1]
    assert list(img.loc[img["class_id"] == B, "readers"]) == ["R2"]
    assert fused.loc[fused["image_id"] == "nrm", "readers"].tolist() == ["R1|R2"]  # the image's readers
    assert fused.loc[fused["image_id"] == "one", "readers"].tolist() == ["R7", "R7"]
    # NMS: the kept box and the boxes it suppressed
    nms_ = fuse_readers(_table(ROWS), "nms", iou_thr=0.4, image_sizes={"img": (100, 100)})
    a = nms_[(nms_["image_id"] == "img") & (nms_["class_id"] == A)]
    assert sorted(a["readers"]) == ["R1", "R1|R2|R3"]
    # none: each box is its own reader's
    none = fuse_readers(_table(ROWS), "none")
    finding = none[none["class_id"] != 14]
    assert list(finding["readers"]) == list(finding["rad_id"]) and set(finding["n_readers"]) == {1}


def test_readers_of_a_box_two_clusters_touch():
    # R1 and R2 overlap (IoU 0.6), R3 is alone (IoU 0 with both): two fused boxes, R3's drawn by R3 only
    rows = [("i", "R1", A, (0, 0, 10, 10)), ("i", "R2", A, (0, 0, 10, 6)), ("i", "R3", A, (20, 20, 30, 30))]
    fused = fuse_readers(_table(rows), "wbf", iou_thr=0.4, image_sizes={"i": (40, 40)})
    assert list(fused["readers"]) == ["R1|R2", "R3"] and list(fused["n_readers"]) == [2, 1]


def test_reader_weights_hand_computed_and_as_ensemble_boxes_per_model_weights():
    from ensemble_boxes import weighted_boxes_fusion

    rows = [("i", "R1", A, (0, 0, 40, 40)), ("i", "R2", A, (4, 0, 44, 40)), ("i", "R3", A, (2, 6, 42, 46))]
    weights = {"R1": 2.0, "R2": 1.0, "R3": 1.0}
    fused = fuse_readers(_table(rows), "wbf", iou_thr=0.4, image_sizes={"i": (100, 100)}, reader_weights=weights)
    # (2 * (0, 0, 40, 40) + (4, 0, 44, 40) + (2, 6, 42, 46)) / 4
    np.testing.assert_allclose(_boxes(fused), [[1.5, 1.5, 41.5, 41.5]], atol=1e-3)
    assert fused["readers"].tolist() == ["R1|R2|R3"]
    # the reference: ensemble-boxes with one model per reader and its per-model weights
    ref, _, _ = weighted_boxes_fusion([[[b / 100 for b in r[3]]] for r in rows], [[1.0]] * 3, [[0]] * 3,
                                      weights=[2, 1, 1], iou_thr=0.4, skip_box_thr=0.0)
    np.testing.assert_allclose(_boxes(fused), np.asarray(ref) * 100, atol=1e-3)
    # NMS with weights keeps the highest-weighted reader's box
    nms_ = fuse_readers(_table(rows), "nms", iou_thr=0.4, reader_weights={"R1": 1.0, "R2": 1.0, "R3": 5.0})
    np.testing.assert_allclose(_boxes(nms_), [[2, 6, 42, 46]], atol=1e-3)
    with pytest.raises(ValueError, match="R3"):
        fuse_readers(_table(rows), "wbf", reader_weights={"R1": 1.0, "R2": 1.0})
    with pytest.raises(ValueError, match="positive"):
        fuse_readers(_table(rows), "wbf", reader_weights={"R1": 0.0, "R2": 1.0, "R3": 1.0})


def test_keep_min_readers_drops_single_reader_boxes():
    from detx.data.fusion import keep_min_readers

    fused = fuse_readers(_table(ROWS), "wbf", iou_thr=0.4, image_sizes={"img": (100, 100)})
    kept, dropped = keep_min_readers(fused, 2)
    # img: the R1-only A box and the R2-only B box go; "one" (a single reader): both boxes go, image now normal
    assert dropped == 4
    img = kept[kept["image_id"] == "img"]
    assert img["readers"].tolist() == ["R1|R2|R3"]
    np.testing.assert_allclose(_boxes(img), [[10, 10, 50, 50]], atol=1e-3)
    one = kept[kept["image_id"] == "one"]
    assert one["class_name"].tolist() == ["No finding"] and one["readers"].tolist() == ["R7"]
    assert one["n_readers"].tolist() == [1] and one["rad_id"].tolist() == ["R7"]
    assert kept.loc[kept["image_id"] == "nrm", "class_name"].tolist() == ["No finding"]
    labels = image_labels(kept).set_index("image_id")
    assert labels["abnormal"].to_dict() == {"img": 1, "nrm": 0, "one": 0}
    assert keep_min_readers(fused, 1) == (fused, 0)
    with pytest.raises(ValueError, match="at least 1"):
        keep_min_readers(fused, 0)


def test_exclude_readers():
    from detx.data.readers import exclude_readers

    rows = [*ROWS, ("only9", "R9", A, (0, 0, 5, 5)), ("only9", "R9", B, (0, 0, 5, 5)), ("mix", "R9", A, (1, 1, 4, 4)),
            ("mix", "R1", 14, NAN4)]
    out, info = exclude_readers(_table(rows), ["R9", "R42"])
    assert info.excluded == ("R9",) and info.unknown == ("R42",) and info.images_dropped == ("only9",)
    assert "R9" not in set(out["rad_id"]) and len(out) == len(ROWS) + 1
    assert out.loc[out["image_id"] == "mix", "class_name"].tolist() == ["No finding"]  # R1 called it normal
    assert out.attrs["classes"] == VINDR_CXR_CLASSES


def test_read_reader_weights(tmp_path):
    from detx.data.readers import read_reader_weights

    p = tmp_path / "w.csv"
    p.write_text("rad_id,weight\nR1,2\nR2,0.5\nR10,1\n")
    assert read_reader_weights(p, ["R2", "R1"]) == {"R1": 2.0, "R2": 0.5}  # R10 ignored (warned)
    with pytest.raises(ValueError, match="R3, R4"):
        read_reader_weights(p, ["R1", "R3", "R4"])
    p.write_text("rad_id,weight\nR1,-1\n")
    with pytest.raises(ValueError, match="positive"):
        read_reader_weights(p, ["R1"])
    p.write_text("rad_id,w\nR1,1\n")
    with pytest.raises(ValueError, match="weight"):
        read_reader_weights(p, ["R1"])


def test_one_and_two_box_fast_paths_match_ensemble_boxes():
    # _fuse_class answers one box, and two boxes of equal weight, without ensemble-boxes: the same boxes as it gives
    from ensemble_boxes import weighted_boxes_fusion

    from detx.data.fusion import _fuse_class

    rng = np.random.default_rng(0)
    scale = np.array([1000.0, 800.0, 1000.0, 800.0])
    for _ in range(300):
        n = int(rng.integers(1, 3))
        xy = rng.uniform(0, 600, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(5, 300, (n, 2))])
        if n == 2 and rng.random() < 0.5:  # often a near copy, so both outcomes (one cluster, two) occur
            boxes[1] = boxes[0] + rng.normal(0, 20, 4)
            boxes[1, 2:] = np.maximum(boxes[1, 2:], boxes[1, :2] + 1)
        for thr in (0.4, 0.55):
            got = _fuse_class(boxes, "wbf", thr, scale)
            norm = np.clip(boxes / scale, 0, 1)
            ref, _, _ = weighted_boxes_fusion([norm.tolist()], [[1.0] * n], [[0] * n], iou_thr=thr, skip_box_thr=0.0)
            ref = np.asarray(ref).reshape(-1, 4) * scale
            ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
            np.testing.assert_array_equal(got, ref)  # to the bit
            assert _fuse_class(boxes, "nms", thr, scale).shape[0] in (1, 2)


def test_fuse_box_groups_is_fuse_readers_boxes():
    # many images x classes at once, boxes only: the same boxes as fuse_readers gives image by image
    from detx.data.fusion import fuse_box_groups

    rng = np.random.default_rng(1)
    rows = []
    for i in range(40):
        for c in (3, 8):
            truth = rng.uniform(0, 500, 2)
            for r in range(int(rng.integers(1, 5))):
                b = np.r_[truth, truth + 100] + rng.normal(0, 15 if r < 3 else 60, 4)
                b[2:] = np.maximum(b[2:], b[:2] + 1)
                rows.append((f"i{i}", f"R{r}", {3: "Cardiomegaly", 8: "Nodule/Mass"}[c], c, *b.tolist(), "", 2))
    table = make_table(rows, dataset="vindr-cxr", classes=VINDR_CXR_CLASSES)
    for method in ("wbf", "nms"):
        ref = fuse_readers(table, method, 0.4)
        ref = ref[ref["class_name"] != "No finding"]
        codes, images = pd.factorize(table["image_id"])
        group = codes * 100 + table["class_id"].to_numpy()
        box = table[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        w = pd.Series(np.maximum(box[:, 0], box[:, 2])).groupby(codes).transform("max").to_numpy()
        h = pd.Series(np.maximum(box[:, 1], box[:, 3])).groupby(codes).transform("max").to_numpy()
        g, fused = fuse_box_groups(group, box, np.stack([w, h, w, h], axis=1), method, 0.4)
        got = pd.DataFrame(fused, columns=["x_min", "y_min", "x_max", "y_max"])
        got["image_id"] = np.asarray(images)[g // 100]
        got["class_id"] = g % 100
        key = ["image_id", "class_id", "x_min", "y_min"]
        a = got.sort_values(key).reset_index(drop=True)
        b = ref[["x_min", "y_min", "x_max", "y_max", "image_id", "class_id"]].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a[b.columns], b, check_dtype=False, check_exact=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_reader_fusion_of_the_real_csv_is_ensemble_boxes_to_the_bit(weighted):
    # fuse_readers fuses every (image, class) set of the real Kaggle train.csv in one call of detx's batched numba
    # WBF (detx.core.wbf); ensemble-boxes itself, called set by set as fuse_readers did before, gives the same boxes
    # to the bit (the first 800 images: hundreds of sets of 1 to 9 boxes, every score tied)
    import warnings

    from conftest import vinbigdata_csv
    from ensemble_boxes import weighted_boxes_fusion

    from detx.data.readers import read_reader_csv

    table, _ = read_reader_csv(vinbigdata_csv())
    table = table[table["image_id"].isin(set(pd.unique(table["image_id"])[:800]))].reset_index(drop=True)
    readers = sorted(set(table["rad_id"]) - {""})
    weights = {r: 1.0 + (k % 3) * 0.5 for k, r in enumerate(readers)} if weighted else None
    fused = fuse_readers(table, "wbf", 0.4, reader_weights=weights)
    got = fused[(fused["rad_id"] == "fused") & (fused["class_name"] != "No finding")]
    got_sets = got.groupby(["image_id", "class_id"]).indices
    got_boxes = _boxes(got)
    finding = table[table["class_name"] != "No finding"]
    n_readers = table.groupby("image_id")["rad_id"].nunique()
    n_sets = n_boxes = 0
    for image_id, img in finding.groupby("image_id", sort=True):
        if n_readers[image_id] < 2:
            continue
        b = _boxes(img)
        w, h = max(b[:, [0, 2]].max(), 1e-6), max(b[:, [1, 3]].max(), 1e-6)
        scale = np.array([w, h, w, h])
        for cid, rows in img.groupby("class_id", sort=True):
            norm = np.clip(_boxes(rows) / scale, 0, 1)
            scores = [1.0] * len(rows) if weights is None else [weights[r] for r in rows["rad_id"]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref, _, _ = weighted_boxes_fusion([norm.tolist()], [scores], [[0] * len(rows)], iou_thr=0.4,
                                                  skip_box_thr=0.0)
            ref = np.asarray(ref, float).reshape(-1, 4) * scale
            ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
            np.testing.assert_array_equal(got_boxes[got_sets[(image_id, cid)]], ref, err_msg=f"{image_id} {cid}")
            n_sets += 1
            n_boxes += len(ref)
    assert n_sets > 400 and n_boxes == len(got)
