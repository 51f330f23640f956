"""The preparation pipeline end to end on the synthetic datasets, and every bad-input case of issue 3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import load_script

from detx.core.prepared import load_prepared_coco
from detx.data.readers import DataError, read_vinbigdata_csv
from detx.synthetic.generator import write_dicom
from detx.workflows.prepare import prepare_dataset


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
    first = pydicom.dcmread(synthetic_cxr_dir / "train" / f"{meta['image_id'][0]}.dicom", stop_before_pixels=True)
    row = meta.iloc[0]
    assert row["photometric"] == first.PhotometricInterpretation and row["bits_stored"] == first.BitsStored
    assert set(meta["photometric"]) <= {"MONOCHROME1", "MONOCHROME2"}
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


# ------------------------------------------------------------------------------------- bad input
# A hand-made Kaggle-format dataset with one of each bad input of issue 3.

ROOT = Path(__file__).resolve().parent.parent
HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
GOOD = (
    "ok1,Cardiomegaly,3,R1,20,30,60,70\n"
    "ok1,Cardiomegaly,3,R2,22,30,62,70\n"
    "ok1,No finding,14,R3,,,,\n"
    "nrm,No finding,14,R1,,,,\n"
    "nrm,No finding,14,R2,,,,\n"
)
BAD_ROWS = (
    "ok1,ILD,5,R1,50,50,40,60\n"            # line 7: inverted
    "ok1,ILD,5,R1,50,50,50,60\n"            # line 8: empty
    "ok1,Nodule/Mass,8,R2,10,,20,30\n"      # line 9: finding box with a missing coordinate
    "ok1,Broken heart,3,R2,10,10,20,30\n"   # line 10: unknown class
    "ok2,ILD,5,R1,-3,10,40,50\n"            # line 11: 3 px out of a 100 px image: clipped
    "ok2,ILD,5,R2,10,10,400,50\n"           # line 12: absurd: dropped
    "ghost,ILD,5,R1,1,1,9,9\n"              # line 13: CSV image without a DICOM
    "corrupt,ILD,5,R1,1,1,9,9\n"            # line 14: its DICOM cannot be decoded
    "allbad,ILD,5,R1,9,9,1,1\n"             # line 15: the only row of an image is bad
)


def _bad_dataset(tmp_path):
    d = tmp_path / "dicom"
    rng = np.random.default_rng(0)
    for name in ("ok1", "ok2", "nrm", "orphan", "allbad"):
        write_dicom(d / f"{name}.dicom", rng.integers(0, 4096, (80, 100)).astype(np.uint16), bits_stored=12)
    (d / "corrupt.dicom").write_bytes(b"\0" * 300)
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + GOOD + BAD_ROWS)
    return csv, d


def _cli(name):
    return load_script(f"datasets/{name}.py").main


def test_every_bad_input_is_skipped_named_and_counted(tmp_path, capsys):
    csv, d = _bad_dataset(tmp_path)
    out = tmp_path / "out"
    rc = _cli("prepare_vindr_cxr")(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "64",
                                    "--folds", "2", "--workers", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == {
        "bad_dicom": 1, "clipped": 1, "empty_box": 1, "inverted_box": 2, "missing_coords": 1, "missing_dicom": 1,
        "no_csv_rows": 1, "no_valid_rows": 1, "out_of_image": 1, "unknown_class": 1,
    }
    assert summary["skipped"] == 10 and "skipped: 10" in printed  # allbad's row and allbad itself
    problems = pd.read_csv(out / "problems.csv").fillna("")
    where = problems.groupby("kind")["where"].first().to_dict()  # the first of each kind
    assert where["inverted_box"] == "train.csv line 7" and where["empty_box"] == "train.csv line 8"
    assert where["missing_coords"] == "train.csv line 9" and where["unknown_class"] == "train.csv line 10"
    assert where["clipped"] == "train.csv line 11" and where["out_of_image"] == "train.csv line 12"
    assert where["missing_dicom"] == "image ghost" and where["bad_dicom"] == "image corrupt"
    assert where["no_csv_rows"] == "image orphan" and where["no_valid_rows"] == "image allbad"
    msg = problems.groupby("kind")["message"].first().to_dict()
    assert "corrupt.dicom" in msg["bad_dicom"] and "Broken heart" in msg["unknown_class"]

    # nothing bad reaches the dataset
    meta = pd.read_csv(out / "meta.csv")
    assert sorted(meta["image_id"]) == ["nrm", "ok1", "ok2"]
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == ["nrm", "ok1", "ok2"]
    coco = load_prepared_coco(out / "annotations" / "all.json")
    boxes, classes = coco.gt["ok1"]
    assert classes.tolist() == [3]  # the two Cardiomegaly readers fused; the bad ILD/Nodule rows gone
    np.testing.assert_allclose(boxes, [[21, 30, 61, 70]], atol=1)
    boxes, classes = coco.gt["ok2"]
    np.testing.assert_allclose(boxes, [[0, 10, 40, 50]], atol=1)  # clipped, single reader left
    assert len(coco.gt["nrm"][0]) == 0
    assert not list(out.rglob(".*.png")) and not list(out.rglob(".*.json"))  # no temp files left


def test_strict_stops_at_the_first_problem(tmp_path, capsys):
    csv, d = _bad_dataset(tmp_path)
    out = tmp_path / "out"
    rc = _cli("prepare_vindr_cxr")(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--strict",
                                    "--workers", "1"])
    assert rc == 1
    assert "train.csv line 7" in capsys.readouterr().err
    assert not (out / "annotations").exists()

    clean = tmp_path / "clean.csv"  # only DICOM-level problems left: the first is the missing DICOM
    clean.write_text(HEADER + GOOD + "ghost,ILD,5,R1,1,1,9,9\n")
    with pytest.raises(DataError, match="image ghost"):
        prepare_dataset(dataset="vindr-cxr", csv=clean, dicom_dir=d, out=out, size=64, folds=0, strict=True,
                        progress=False)
    bad = tmp_path / "bad_dicom_only"
    bad.mkdir()
    (bad / "ok1.dicom").write_bytes((d / "ok1.dicom").read_bytes())
    (bad / "nrm.dicom").write_bytes(b"junk")
    with pytest.raises(DataError, match="image nrm"):
        prepare_dataset(dataset="vindr-cxr", csv=_write(tmp_path, GOOD),
                        dicom_dir=bad, out=out, size=64, folds=0, strict=True, progress=False)


def _write(tmp_path, rows):
    p = tmp_path / "rows.csv"
    p.write_text(HEADER + rows)
    return p


def test_interrupted_run_leaves_no_partial_files_and_resumes(tmp_path, monkeypatch):
    csv, d = _bad_dataset(tmp_path)
    out = tmp_path / "out"
    import detx.data.dicom as dicom_mod
    import detx.workflows.prepare as prepare_mod

    real_load, calls = dicom_mod._load, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 4:  # corrupt (fails), nrm, ok1, then ok2 is interrupted
            raise KeyboardInterrupt
        return real_load(*a, **kw)

    monkeypatch.setattr(dicom_mod, "_load", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(dataset="vindr-cxr", csv=csv, dicom_dir=d, out=out, size=64, folds=0, progress=False)
    assert len(list((out / "images").glob("*.png"))) == 2 and not list(out.rglob(".*.png"))
    monkeypatch.setattr(dicom_mod, "_load", real_load)

    real_write, writes = prepare_mod.write_coco, []

    def interrupted_write(path, coco):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt
        real_write(path, coco)

    monkeypatch.setattr(prepare_mod, "write_coco", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(dataset="vindr-cxr", csv=csv, dicom_dir=d, out=out, size=64, folds=2, progress=False)
    jsons = list((out / "annotations").glob("*.json")) + list(out.rglob(".*.json"))
    assert [p.name for p in jsons] == ["all.json"]  # written whole; the next one never started a file
    json.loads((out / "annotations" / "all.json").read_text())
    monkeypatch.setattr(prepare_mod, "write_coco", real_write)

    summary = prepare_dataset(dataset="vindr-cxr", csv=csv, dicom_dir=d, out=out, size=64, folds=2, progress=False)
    assert summary.images_already_done == 3 and summary.images_converted == 0
    again = prepare_dataset(dataset="vindr-cxr", csv=csv, dicom_dir=d, out=out, size=48, folds=2, progress=False)
    assert again.images_converted == 3  # other settings: converted again
    assert max(cv2.imread(str(out / "images" / "ok1.png")).shape[:2]) == 48


def test_test_set_without_csv(tmp_path, synthetic_cxr_dir):
    out = tmp_path / "test"
    summary = prepare_dataset(dataset="vindr-cxr", dicom_dir=synthetic_cxr_dir / "test", out=out, size=64,
                              bit_depth=16, progress=False)
    coco = json.loads((out / "annotations" / "test.json").read_text())
    assert [p.name for p in (out / "annotations").glob("*.json")] == ["test.json"]
    assert coco["annotations"] == [] and len(coco["images"]) == summary.images == 4
    png = cv2.imread(str(out / "images" / f"{coco['images'][0]['image_uid']}.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16


def test_fusion_none_and_box_masks(tmp_path, synthetic_cxr_dir):
    out = tmp_path / "none"
    summary = prepare_dataset(dataset="vindr-cxr", csv=synthetic_cxr_dir / "train.csv",
                              dicom_dir=synthetic_cxr_dir / "train", out=out, size=64, fusion="none", folds=0,
                              box_masks=True, report=True, progress=False)
    table, _ = read_vinbigdata_csv(synthetic_cxr_dir / "train.csv")
    n_raw = int((table["class_id"] < 14).sum())
    assert summary.boxes_before_fusion == summary.boxes_after_fusion == n_raw
    coco = json.loads((out / "annotations" / "all.json").read_text())
    assert len(coco["annotations"]) == n_raw and all(len(a["segmentation"][0]) == 8 for a in coco["annotations"])
    assert (out / "report" / "eda.png").stat().st_size > 0
    assert sum(summary.boxes_per_reader.values()) == n_raw


def test_physionet_format_with_image_labels(tmp_path, synthetic_cxr_dir):
    table, _ = read_vinbigdata_csv(synthetic_cxr_dir / "train.csv")
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    phys = table[["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]].copy()
    phys.loc[phys["class_name"] == "Nodule/Mass", "class_name"] = "Lung cyst"  # a PhysioNet-only local label
    phys.to_csv(ann_dir / "annotations_train.csv", index=False)
    labels = pd.DataFrame({"image_id": table["image_id"], "rad_id": table["rad_id"],
                           "COPD": (table["class_name"] == "Cardiomegaly").astype(int), "Other disease": 0,
                           "No finding": (table["class_id"] == 14).astype(int)})
    labels.to_csv(ann_dir / "image_labels_train.csv", index=False)
    out = tmp_path / "out"
    rc = _cli("prepare_vindr_cxr")(["--csv", str(ann_dir / "annotations_train.csv"), "--dicom-dir",
                                    str(synthetic_cxr_dir / "train"), "--out", str(out), "--size", "64",
                                    "--folds", "0", "--workers", "1", "--no-report"])
    assert rc == 0
    meta = pd.read_csv(out / "meta.csv").set_index("image_id")
    copd = set(table.loc[table["class_name"] == "Cardiomegaly", "image_id"])
    assert set(meta.index[meta["label_COPD"] == 1]) == copd and "label_Other diseases" in meta.columns
    coco = json.loads((out / "annotations" / "all.json").read_text())
    assert coco["info"]["dataset"] == "vindr-cxr"
    lung_cyst = {a["category_id"] for a in coco["annotations"]} & {8, 9}
    assert lung_cyst == {9}  # Lung cyst -> Other lesion under the Kaggle classes
    assert all("image_labels" in im for im in coco["images"])

    out22 = tmp_path / "out22"
    assert _cli("prepare_vindr_cxr")(["--csv", str(ann_dir / "annotations_train.csv"), "--dicom-dir",
                                      str(synthetic_cxr_dir / "train"), "--out", str(out22), "--size", "64",
                                      "--folds", "0", "--no-kaggle-classes", "--workers", "1", "--no-report"]) == 0
    coco22 = json.loads((out22 / "annotations" / "all.json").read_text())
    assert coco22["info"]["dataset"] == "vindr-cxr-physionet" and len(coco22["categories"]) == 22


def test_wrong_format_for_the_script(tmp_path, synthetic_spinexr_dir, capsys):
    rc = _cli("prepare_vindr_cxr")(["--csv", str(synthetic_spinexr_dir / "annotations" / "train.csv"),
                                    "--dicom-dir", str(synthetic_spinexr_dir / "train_images"),
                                    "--out", str(tmp_path / "o"), "--workers", "1"])
    assert rc == 2 and "spinexr" in capsys.readouterr().err  # bad input: exit status 2 in every tool


@pytest.mark.parametrize("script", ["prepare_vindr_cxr", "prepare_spinexr"])
def test_scripts_print_help(script, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(script)(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--csv", "--dicom-dir", "--out", "--size", "--fusion", "--iou-thr", "--folds", "--seed",
                   "--workers", "--strict", "--box-masks", "--exclude-readers", "--reader-weights", "--min-readers"):
        assert option in text


def test_uid_named_extensionless_dicoms_in_nested_folders(tmp_path):
    """A PACS-style export (files named by UID, no extension, nested) prepares with the full UIDs as ids."""
    uids = ["1.2.840.113619.2.55.3.604688.12", "1.2.840.113619.2.55.3.604688.13", "1.3.6.1.4.1.9590.100.1.2.7"]
    d = tmp_path / "export"
    rng = np.random.default_rng(0)
    for k, uid in enumerate(uids):
        write_dicom(d / f"PAT{k}" / "STUDY" / uid, rng.integers(0, 4096, (80, 100)).astype(np.uint16), bits_stored=12)
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + f"{uids[0]},Cardiomegaly,3,R1,20,30,60,70\n{uids[1]},No finding,14,R1,,,,\n"
                   f"{uids[2]},Nodule/Mass,8,R2,10,10,30,30\n")
    out = tmp_path / "out"
    rc = _cli("prepare_vindr_cxr")(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "64",
                                    "--folds", "0", "--workers", "1", "--no-report", "--strict"])
    assert rc == 0
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str})
    assert sorted(meta["image_id"]) == sorted(uids)
    assert all((out / "images" / f"{u}.png").is_file() for u in uids)
    coco = load_prepared_coco(out / "annotations" / "all.json")
    assert sorted(coco.images) == sorted(uids) and coco.size == 64
    assert coco.gt[uids[0]][1].tolist() == [3] and len(coco.gt[uids[1]][0]) == 0
    # the test-set form (no CSV) finds the same images
    rc = _cli("prepare_vindr_cxr")(["--dicom-dir", str(d), "--out", str(tmp_path / "test"), "--size", "64",
                                    "--workers", "1"])
    assert rc == 0
    test = load_prepared_coco(tmp_path / "test" / "annotations" / "test.json")
    assert sorted(test.images) == sorted(uids)


# ------------------------------------------------------------------------------------------- readers (issue 14)
# Five 100x80 images. R9 draws off the others: on r1 a box of IoU 0 with theirs, r2 is read by R9 alone, and on
# r3 R9 draws a nodule where R1 and R2 saw nothing. r4: a box of R1 alone. r5: three readers agree closely.
READERS_CSV = HEADER + (
    "r1,Cardiomegaly,3,R1,10,10,50,50\n"
    "r1,Cardiomegaly,3,R2,14,10,54,50\n"
    "r1,Cardiomegaly,3,R9,60,40,95,75\n"
    "r2,Nodule/Mass,8,R9,20,20,40,40\n"
    "r3,No finding,14,R1,,,,\n"
    "r3,No finding,14,R2,,,,\n"
    "r3,Nodule/Mass,8,R9,30,30,50,50\n"
    "r4,Nodule/Mass,8,R1,20,20,40,40\n"
    "r4,No finding,14,R2,,,,\n"
    "r5,Aortic enlargement,0,R1,5,5,25,25\n"
    "r5,Aortic enlargement,0,R2,5,5,25,25\n"
    "r5,Aortic enlargement,0,R3,6,5,26,25\n"
)


@pytest.fixture
def readers_dataset(tmp_path):
    d = tmp_path / "dicom"
    rng = np.random.default_rng(0)
    for name in ("r1", "r2", "r3", "r4", "r5"):
        write_dicom(d / f"{name}.dicom", rng.integers(0, 4096, (80, 100)).astype(np.uint16), bits_stored=12)
    csv = tmp_path / "train.csv"
    csv.write_text(READERS_CSV)
    return csv, d


def _prepare_readers(csv, d, out, *extra):
    # --size 100: the PNGs keep the original 100x80 pixels, so COCO boxes are the original coordinates
    return _cli("prepare_vindr_cxr")(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "100",
                                      "--folds", "0", "--workers", "1", "--no-report", *map(str, extra)])


def _anns(out):
    coco = json.loads((out / "annotations" / "all.json").read_text())
    uid = {im["id"]: im["image_uid"] for im in coco["images"]}
    by_image: dict[str, list] = {im["image_uid"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[uid[a["image_id"]]].append(a)
    return coco, by_image


def test_excluding_a_reader_gives_the_hand_computed_fused_boxes(readers_dataset, tmp_path, caplog):
    csv, d = readers_dataset
    # with every reader: R9's r1 box is a second Cardiomegaly box, r2 and r3 are abnormal
    assert _prepare_readers(csv, d, tmp_path / "all") == 0
    _, every = _anns(tmp_path / "all")
    assert len(every["r1"]) == 2 and len(every["r2"]) == 1 and len(every["r3"]) == 1

    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert _prepare_readers(csv, d, out, "--exclude-readers", "R9", "R42") == 0
    assert any("R42" in r.getMessage() and "--exclude-readers" in r.getMessage() for r in caplog.records)
    coco, anns = _anns(out)
    assert sorted(anns) == ["r1", "r3", "r4", "r5"]  # r2, read by R9 alone, dropped
    # r1: WBF of R1 (10,10,50,50) and R2 (14,10,54,50) = (12,10,52,50) -> COCO [12,10,40,40]
    assert [a["bbox"] for a in anns["r1"]] == [[12, 10, 40, 40]]
    assert anns["r1"][0]["n_readers"] == 2 and anns["r1"][0]["readers"] == ["R1", "R2"]
    # r5: the mean of three boxes, (5+5+6)/3 = 5.333
    np.testing.assert_allclose(anns["r5"][0]["bbox"], [16 / 3, 5, 20, 20], atol=1e-3)
    assert anns["r5"][0]["readers"] == ["R1", "R2", "R3"] and anns["r5"][0]["n_readers"] == 3
    assert anns["r3"] == []  # R1 and R2 called it normal
    assert [(a["readers"], a["n_readers"]) for a in anns["r4"]] == [(["R1"], 1)]
    meta = pd.read_csv(out / "meta.csv").set_index("image_id")
    assert meta["readers"].to_dict() == {"r1": "R1|R2", "r3": "R1|R2", "r4": "R1|R2", "r5": "R1|R2|R3"}
    assert meta["abnormal"].to_dict() == {"r1": 1, "r3": 0, "r4": 1, "r5": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == {}  # r2's DICOM without rows is not a problem: its reader was excluded
    assert summary["images"] == 4 and summary["settings"]["exclude_readers"] == ["R9", "R42"]
    r = summary["readers"]
    assert r["excluded"] == ["R9"] and r["excluded_not_in_csv"] == ["R42"]
    assert r["images_dropped_excluded_readers"] == 1 and r["readers"] == ["R1", "R2", "R3"]
    assert r["images_per_reader"] == {"R1": 4, "R2": 4, "R3": 1}
    assert coco["info"]["exclude_readers"] == ["R9"] and coco["info"]["min_readers"] == 1
    assert not (out / "images" / "r2.png").exists()


def test_min_readers_drops_single_reader_boxes(readers_dataset, tmp_path, capsys):
    csv, d = readers_dataset
    out = tmp_path / "out"
    assert _prepare_readers(csv, d, out, "--exclude-readers", "R9", "--min-readers", "2") == 0
    assert "min readers 2: 1 fused box(es) drawn by fewer dropped" in capsys.readouterr().out
    coco, anns = _anns(out)
    assert anns["r4"] == []  # R1's nodule alone
    assert [a["bbox"] for a in anns["r1"]] == [[12, 10, 40, 40]] and len(anns["r5"]) == 1
    assert all(a["n_readers"] >= 2 for a in coco["annotations"])
    meta = pd.read_csv(out / "meta.csv").set_index("image_id")
    assert meta.loc["r4", "abnormal"] == 0 and meta.loc["r4", "n_boxes"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["readers"]["boxes_dropped_min_readers"] == 1 and summary["settings"]["min_readers"] == 2
    assert coco["info"]["min_readers"] == 2
    # excluding every reader leaves nothing to prepare: refused, naming them
    assert _prepare_readers(csv, d, tmp_path / "nobody", "--exclude-readers", "R1", "R2", "R3", "R9") == 2
    assert "leaves no annotation" in capsys.readouterr().err
    # every box is one reader's under --fusion none: refused
    assert _prepare_readers(csv, d, tmp_path / "none", "--min-readers", "2", "--fusion", "none") == 2
    assert "--fusion wbf or nms" in capsys.readouterr().err


def test_reader_weights(readers_dataset, tmp_path, capsys):
    csv, d = readers_dataset
    weights = tmp_path / "w.csv"
    weights.write_text("rad_id,weight\nR1,3\nR2,1\nR3,1\n")
    out = tmp_path / "out"
    assert _prepare_readers(csv, d, out, "--exclude-readers", "R9", "--reader-weights", weights) == 0
    _, anns = _anns(out)
    # r1: (3 * (10,10,50,50) + (14,10,54,50)) / 4 = (11,10,51,50); r5: (3*5 + 5 + 6) / 5 = 5.2
    np.testing.assert_allclose(anns["r1"][0]["bbox"], [11, 10, 40, 40], atol=1e-3)
    np.testing.assert_allclose(anns["r5"][0]["bbox"], [5.2, 5, 20, 20], atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["readers"]["weights"] == {"R1": 3.0, "R2": 1.0, "R3": 1.0}
    coco = json.loads((out / "annotations" / "all.json").read_text())
    assert coco["info"]["reader_weights"] == {"R1": 3.0, "R2": 1.0, "R3": 1.0}

    weights.write_text("rad_id,weight\nR1,3\n")  # R2 and R3 missing; R9 is excluded, so not needed
    capsys.readouterr()
    assert _prepare_readers(csv, d, tmp_path / "bad", "--exclude-readers", "R9", "--reader-weights", weights) == 2
    err = capsys.readouterr().err
    assert "no weight for reader(s) R2, R3" in err and "R9" not in err.split("lists")[0]


def test_reader_options_need_reader_ids(readers_dataset, tmp_path, capsys):
    _, d = readers_dataset
    csv = tmp_path / "no_rad.csv"
    pd.read_csv(io.StringIO(READERS_CSV)).drop(columns="rad_id").to_csv(csv, index=False)
    assert _prepare_readers(csv, d, tmp_path / "out", "--exclude-readers", "R9") == 2
    err = capsys.readouterr().err
    assert "no reader ids" in err and "--exclude-readers" in err
    # without the reader options the same file prepares (its boxes' readers unknown)
    assert _prepare_readers(csv, d, tmp_path / "plain") == 0
    assert pd.read_csv(tmp_path / "plain" / "meta.csv")["readers"].isna().all()


def test_spinexr_prepare_excludes_readers(readers_dataset, tmp_path):
    _, d = readers_dataset
    chest = pd.read_csv(io.StringIO(READERS_CSV))
    spine = pd.DataFrame({
        "image_id": chest["image_id"], "study_id": "st_" + chest["image_id"], "rad_id": chest["rad_id"],
        "lesion_type": chest["class_name"].map({"Cardiomegaly": "Osteophytes", "Nodule/Mass": "Disc space narrowing",
                                                "Aortic enlargement": "Surgical implant", "No finding": "No finding"}),
        "xmin": chest["x_min"], "ymin": chest["y_min"], "xmax": chest["x_max"], "ymax": chest["y_max"]})
    csv = tmp_path / "train.csv"
    spine.to_csv(csv, index=False)
    out = tmp_path / "spine"
    rc = _cli("prepare_spinexr")(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "100",
                                  "--folds", "0", "--workers", "1", "--no-report", "--exclude-readers", "R9"])
    assert rc == 0
    _, anns = _anns(out)
    assert sorted(anns) == ["r1", "r3", "r4", "r5"]
    assert [(a["bbox"], a["readers"]) for a in anns["r1"]] == [([12, 10, 40, 40], ["R1", "R2"])]
    assert json.loads((out / "summary.json").read_text())["readers"]["images_dropped_excluded_readers"] == 1
