"""The synthetic dataset generator: DICOM writing, the two layouts, boxes, determinism, refusals, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from detx.core.classes import SPINEXR_CLASSES, VINDR_CXR_CLASSES
from detx.synthetic.draw import CHEST_LESIONS, draw_chest, draw_spine
from detx.synthetic.generator import generate_dataset, write_dicom

CXR_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
SPINE_COLUMNS = ["image_id", "study_id", "series_id", "rad_id", "lesion_type", "xmin", "ymin", "xmax", "ymax"]


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Independent reference rendering: modality LUT, VOI window, MONOCHROME1 inverted, scaled to [0, 1]."""
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds).astype(np.float64)
    arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-9)
    return 1.0 - arr if ds.PhotometricInterpretation == "MONOCHROME1" else arr


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --------------------------------------------------------------------------------------------- write_dicom


@pytest.mark.parametrize(
    "photometric,bits,window,rescale,compress",
    [
        ("MONOCHROME2", 12, None, None, None),
        ("MONOCHROME1", 12, (1800.0, 1200.0), None, None),
        ("MONOCHROME2", 14, (9000.0, 6000.0), (1.0, -1024.0), None),
        ("MONOCHROME2", 16, None, (0.5, 0.0), "rle"),
        ("MONOCHROME1", 12, (2000.0, 1000.0), None, "rle"),
    ],
)
def test_write_dicom_round_trip(tmp_path, photometric, bits, window, rescale, compress):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 1 << bits, size=(37, 53)).astype(np.uint16)
    pixels[0, 0], pixels[-1, -1] = 0, (1 << bits) - 1  # both ends of the range
    path = write_dicom(tmp_path / "x.dicom", pixels, photometric=photometric, bits_stored=bits, window=window,
                       rescale=rescale, compress=compress, image_id="abc", PatientID="P7")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == (RLELossless if compress == "rle" else ExplicitVRLittleEndian)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert (ds.Rows, ds.Columns) == (37, 53)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, bits, bits - 1, 0)
    assert ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation == photometric
    assert ds.PatientID == "P7"
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    if window is None:
        assert "WindowCenter" not in ds
    else:
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == window
    if rescale is None:
        assert "RescaleSlope" not in ds
    else:
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == rescale
        np.testing.assert_allclose(apply_modality_lut(ds.pixel_array, ds), pixels * rescale[0] + rescale[1])


@pytest.mark.parametrize("compress", [None, "rle"])
def test_write_dicom_is_reproducible(tmp_path, compress):
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4096
    a = write_dicom(tmp_path / "a.dicom", pixels, image_id="same", compress=compress)
    b = write_dicom(tmp_path / "b.dicom", pixels, image_id="same", compress=compress)
    c = write_dicom(tmp_path / "c.dicom", pixels, image_id="other", compress=compress)
    assert a.read_bytes() == b.read_bytes()
    da = pydicom.dcmread(a)
    assert da.SOPInstanceUID == da.file_meta.MediaStorageSOPInstanceUID
    assert da.SOPInstanceUID != pydicom.dcmread(c).SOPInstanceUID


@pytest.mark.parametrize(
    "pixels,kwargs,match",
    [
        (np.full((4, 4), 4096, np.uint16), {}, "do not fit in 12"),
        (np.full((4, 4), -1, np.int32), {"bits_stored": 16}, "do not fit"),
        (np.zeros((4, 4), np.float32), {}, "integers"),
        (np.zeros((2, 4, 4), np.uint16), {}, "2-D"),
        (np.zeros((4, 4), np.uint16), {"photometric": "RGB"}, "MONOCHROME"),
        (np.zeros((4, 4), np.uint16), {"bits_stored": 17}, "bits_stored"),
        (np.zeros((4, 4), np.uint16), {"compress": "jpeg"}, "compress"),
        (np.zeros((4, 4), np.uint16), {"window": (10, 0)}, "window width"),
        (np.zeros((4, 4), np.uint16), {"NotAKeyword": 1}, "unknown DICOM keyword"),
    ],
)
def test_write_dicom_refuses(tmp_path, pixels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_dicom(tmp_path / "bad.dicom", pixels, **kwargs)
    assert not (tmp_path / "bad.dicom").exists()


# ------------------------------------------------------------------------------------------ vindr-cxr


def test_cxr_layout_and_boxes(synthetic_cxr_dir):
    root = Path(synthetic_cxr_dir)
    train = pd.read_csv(root / "train.csv")
    assert list(train.columns) == CXR_COLUMNS
    train_files = sorted(p.stem for p in (root / "train").glob("*.dicom"))
    test_files = sorted(p.stem for p in (root / "test").glob("*.dicom"))
    assert len(train_files) == 24 and len(test_files) == 4
    assert sorted(train["image_id"].unique()) == train_files
    assert not set(test_files) & set(train_files)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in train_files + test_files)

    # three distinct readers per image, from the pool R1..R17
    readers = train.groupby("image_id")["rad_id"].agg(lambda s: frozenset(s))
    assert (readers.map(len) == 3).all()
    assert set().union(*readers) <= {f"R{k}" for k in range(1, 18)}

    # class ids are the Kaggle ids; "No finding" rows: id 14, empty boxes
    nf = train["class_name"] == "No finding"
    assert (train.loc[nf, "class_id"] == 14).all()
    assert train.loc[nf, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    boxes = train[~nf]
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
    assert all(VINDR_CXR_CLASSES[i] == n for i, n in zip(boxes["class_id"], boxes["class_name"]))
    assert len(set(boxes["class_name"])) >= 4

    # half of the images have findings (the fixture's normal_fraction); the call is unanimous, as on VinBigData:
    # every reader of an abnormal image draws a box, none on a normal one
    abnormal = train.groupby("image_id")["class_name"].agg(lambda s: (s != "No finding").any())
    assert abnormal.sum() == 12
    callers = boxes.groupby("image_id")["rad_id"].nunique()
    assert (callers == 3).all() and len(callers) == 12
    # a reader with no box on an image says "No finding" on it, never both
    per_reader = train.groupby(["image_id", "rad_id"])["class_name"].agg(list)
    assert all(v == ["No finding"] or "No finding" not in v for v in per_reader)

    # every box lies inside its image (DICOM Rows/Columns), with positive size
    for image_id, g in boxes.groupby("image_id"):
        ds = pydicom.dcmread(root / "train" / f"{image_id}.dicom", stop_before_pixels=True)
        assert 96 <= max(ds.Rows, ds.Columns) <= 192 and min(ds.Rows, ds.Columns) >= 96
        assert (g["x_min"] >= 0).all() and (g["y_min"] >= 0).all()
        assert (g["x_max"] <= ds.Columns).all() and (g["y_max"] <= ds.Rows).all()
        assert (g["x_max"] > g["x_min"]).all() and (g["y_max"] > g["y_min"]).all()

    sub = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == ["image_id", "PredictionString"]
    assert sorted(sub["image_id"]) == test_files
    assert (sub["PredictionString"] == "14 1 0 0 1 1").all()
    gt = pd.read_csv(root / "test_ground_truth.csv")
    assert list(gt.columns) == CXR_COLUMNS and sorted(gt["image_id"].unique()) == test_files


def test_cxr_readers_agree_like_real_readers(synthetic_cxr_dir):
    """Readers' boxes of the same finding overlap, but as loosely as the real readers' (a box's best IoU with
    another reader's box of its class: real median 0.68; tests/test_synthetic_real.py measures it on 4,000
    images), and are not identical."""
    train = pd.read_csv(Path(synthetic_cxr_dir) / "train.csv")
    boxes = train[train["class_name"] != "No finding"]
    best, identical, pairs = [], 0, 0
    for _, g in boxes.groupby(["image_id", "class_name"]):
        b = g[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        rad = g["rad_id"].to_numpy()
        for i in range(len(b)):
            others = [_iou(b[i], b[j]) for j in range(len(b)) if rad[j] != rad[i]]
            if others:
                best.append(max(others))
            for j in range(i + 1, len(b)):
                pairs += 1
                identical += bool((b[i] == b[j]).all())
    assert len(best) >= 10
    assert 0.45 < np.median(best) < 0.9
    assert identical < pairs / 2


def test_cxr_dicom_variety_and_window_matters(synthetic_cxr_dir):
    root = Path(synthetic_cxr_dir)
    files = sorted((root / "train").glob("*.dicom")) + sorted((root / "test").glob("*.dicom"))
    seen_bits, photometric, windowed, rescaled, sizes = set(), set(), 0, 0, set()
    for f in files:
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        assert arr.max() < (1 << ds.BitsStored)
        seen_bits.add(int(ds.BitsStored))
        photometric.add(ds.PhotometricInterpretation)
        sizes.add((ds.Rows, ds.Columns))
        rescaled += "RescaleSlope" in ds
        if "WindowCenter" in ds:
            windowed += 1
            values = apply_modality_lut(arr, ds)
            c, w = float(ds.WindowCenter), float(ds.WindowWidth)
            outside = (values < c - w / 2) | (values > c + w / 2)
            assert outside.mean() > 0.01, f"{f.name}: the window clips nothing"
            # ... but shows the chest: mediastinum and lung fields lie inside it (window in modality units)
            h, w_ = values.shape
            for x in (0.31, 0.5, 0.69):
                med = float(np.median(values[int(0.38 * h): int(0.48 * h), int((x - 0.03) * w_): int((x + 0.03) * w_)]))
                assert c - w / 2 < med < c + w / 2, f"{f.name}: the window hides the chest at x={x}"
    assert len(seen_bits) >= 2 and seen_bits <= {12, 14, 16}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert windowed >= 3 and rescaled >= 2
    assert any(r > c for r, c in sizes) and any(c > r for r, c in sizes)  # portrait and landscape


def test_cxr_images_look_like_chests(synthetic_cxr_dir):
    """Rendered through pydicom's own LUTs (MONOCHROME1 inverted), the lungs are darker than the mediastinum."""
    root = Path(synthetic_cxr_dir)
    train = pd.read_csv(root / "train.csv")
    normal = train.groupby("image_id")["class_name"].agg(lambda s: (s == "No finding").all())
    for image_id in normal[normal].index:
        img = _display(pydicom.dcmread(root / "train" / f"{image_id}.dicom"))
        h, w = img.shape
        y0, y1 = int(0.38 * h), int(0.48 * h)

        def patch(x, img=img, y0=y0, y1=y1, w=w):
            return float(np.median(img[y0:y1, int((x - 0.03) * w): int((x + 0.03) * w)]))

        mediastinum, lungs = patch(0.5), max(patch(0.31), patch(0.69))
        assert mediastinum > lungs + 0.1, image_id


def test_cxr_box_contents_differ_from_surroundings(synthetic_cxr_dir):
    """Each drawn finding is visible: inside a box the image differs from a normal image's same region."""
    root = Path(synthetic_cxr_dir)
    train = pd.read_csv(root / "train.csv")
    boxes = train[train["class_name"] != "No finding"]
    contrasts = []
    for (image_id, _name), g in boxes.groupby(["image_id", "class_name"]):
        img = _display(pydicom.dcmread(root / "train" / f"{image_id}.dicom"))
        x0, y0, x1, y1 = g[["x_min", "y_min", "x_max", "y_max"]].median().round().astype(int)
        inside = img[y0:y1, x0:x1]
        contrasts.append(float(inside.std()))
    assert np.median(contrasts) > 0.05


@pytest.mark.parametrize("name", list(CHEST_LESIONS))
def test_every_chest_class_is_drawn_inside_the_image(name):
    found = 0
    for seed in range(3):
        img, findings = draw_chest(np.random.default_rng(seed), 160, 128, [name])
        assert img.shape == (160, 128) and np.isfinite(img).all()
        for f in findings:
            assert f.class_name == name
            x0, y0, x1, y1 = f.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 160
            found += 1
    assert found >= 2


@pytest.mark.parametrize("name", SPINEXR_CLASSES)
def test_every_spine_class_is_drawn_inside_the_image(name):
    found = 0
    for seed in range(3):
        img, findings = draw_spine(np.random.default_rng(seed), 150, 120, [name])
        assert img.shape == (150, 120) and np.isfinite(img).all()
        for f in findings:
            assert f.class_name == name
            x0, y0, x1, y1 = f.box
            assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 150
            found += 1
    assert found >= 2


def test_classes_argument(tmp_path):
    s = generate_dataset(tmp_path / "one", n_train=4, n_test=1, min_size=64, max_size=80,
                         classes=["Nodule/Mass"], normal_fraction=0.0, progress=False)
    train = pd.read_csv(tmp_path / "one" / "train.csv")
    boxes = train[train["class_name"] != "No finding"]
    assert set(boxes["class_name"]) == {"Nodule/Mass"} and set(boxes["class_id"]) == {8}
    assert boxes["image_id"].nunique() == 4  # a reader may miss a small nodule, not all three
    assert s["classes"] == ["Nodule/Mass"] and s["abnormal"] == {"train": 4, "test": 1}
    s = generate_dataset(tmp_path / "all", n_train=1, n_test=1, min_size=64, max_size=64, classes="all",
                         progress=False)
    assert s["classes"] == list(VINDR_CXR_CLASSES)


# ------------------------------------------------------------------------------------------ spinexr


def test_spinexr_layout(synthetic_spinexr_dir):
    root = Path(synthetic_spinexr_dir)
    for split, n in (("train", 16), ("test", 4)):
        df = pd.read_csv(root / "annotations" / f"{split}.csv", dtype={"rad_id": str})
        assert list(df.columns) == SPINE_COLUMNS
        files = sorted(p.stem for p in (root / f"{split}_images").glob("*.dicom"))
        assert len(files) == n and sorted(df["image_id"].unique()) == files
        nf = df["lesion_type"] == "No finding"
        assert df.loc[nf, ["xmin", "ymin", "xmax", "ymax"]].isna().all().all()
        assert set(df.loc[~nf, "lesion_type"]) <= set(SPINEXR_CLASSES)
        # a study's images are listed with one study_id; 1-3 images per study
        per_study = df.groupby("study_id")["image_id"].nunique()
        assert per_study.between(1, 3).all()
        assert df.groupby("image_id")["study_id"].nunique().eq(1).all()
        assert df.groupby("image_id")["series_id"].nunique().eq(1).all()
        for image_id, g in df[~nf].groupby("image_id"):
            ds = pydicom.dcmread(root / f"{split}_images" / f"{image_id}.dicom", stop_before_pixels=True)
            assert (g["xmin"] >= 0).all() and (g["ymin"] >= 0).all()
            assert (g["xmax"] <= ds.Columns).all() and (g["ymax"] <= ds.Rows).all()
            assert (g["xmax"] > g["xmin"]).all() and (g["ymax"] > g["ymin"]).all()
    train = pd.read_csv(root / "annotations" / "train.csv")
    assert train.groupby("study_id")["image_id"].nunique().max() >= 2
    # the DICOM StudyInstanceUID follows the CSV's study_id
    uids = {i: pydicom.dcmread(root / "train_images" / f"{i}.dicom", stop_before_pixels=True).StudyInstanceUID
            for i in train["image_id"].unique()}
    per_study = train.drop_duplicates("image_id").groupby("study_id")["image_id"].agg(lambda s: {uids[i] for i in s})
    assert (per_study.map(len) == 1).all() and len(set().union(*per_study)) == len(per_study)
    abnormal = train.groupby("image_id")["lesion_type"].agg(lambda s: (s != "No finding").any())
    assert abnormal.sum() == 8


# -------------------------------------------------------------------------------- determinism, refusals


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dataset", ["vindr-cxr", "spinexr"])
def test_same_seed_same_files_other_seed_differs(tmp_path, dataset):
    kw = {"dataset": dataset, "n_train": 3, "n_test": 2, "min_size": 64, "max_size": 96, "progress": False}
    generate_dataset(tmp_path / "a", seed=5, **kw)
    generate_dataset(tmp_path / "b", seed=5, **kw)
    generate_dataset(tmp_path / "c", seed=6, **kw)
    a, b, c = (_snapshot(tmp_path / k) for k in "abc")
    assert len(a) >= 6 and a == b
    csv = "train.csv" if dataset == "vindr-cxr" else "annotations/train.csv"
    assert a[csv] != c[csv]
    pa = [pydicom.dcmread(p).pixel_array for p in sorted((tmp_path / "a").rglob("*.dicom"))]
    pc = [pydicom.dcmread(p).pixel_array for p in sorted((tmp_path / "c").rglob("*.dicom"))]
    assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(pa, pc))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": 0}, "n_test"),
        ({"n_train": 2.5}, "n_train"),
        ({"dataset": "mnist"}, "unknown dataset"),
        ({"min_size": 200, "max_size": 100}, "must not exceed"),
        ({"min_size": 16, "max_size": 100}, ">= 32"),
        ({"classes": ["Nodule/Mass", "Broken heart"]}, "Broken heart"),
        ({"dataset": "spinexr", "classes": ["Nodule/Mass"]}, "unknown spinexr class"),
        ({"classes": []}, "must not be empty"),
        ({"normal_fraction": 1.5}, "normal_fraction"),
    ],
)
def test_generate_refuses_impossible_arguments(tmp_path, kwargs, match):
    args = {"dataset": "vindr-cxr", "n_train": 1, "n_test": 1, "min_size": 64, "max_size": 64, "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "detx.synthetic", "--out", str(out), "--dataset", "spinexr", "--n-train", "2",
           "--n-test", "1", "--seed", "3", "--min-size", "64", "--max-size", "80", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 train and 1 test images" in r.stdout
    assert len(list((out / "train_images").glob("*.dicom"))) == 2
    assert (out / "annotations" / "test.csv").is_file()

    bad = [sys.executable, "-m", "detx.synthetic", "--out", str(tmp_path / "bad"), "--n-train", "0",
           "--n-test", "1"]
    r = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "n_train must be an integer >= 1" in r.stderr
    r = subprocess.run(bad[:6] + ["3", "--n-test", "1", "--classes", "Nope"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "unknown vindr-cxr class" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_warns_about_files_of_an_earlier_run(tmp_path, caplog):
    generate_dataset(tmp_path, n_train=1, n_test=1, min_size=64, max_size=64, seed=1, progress=False)
    with caplog.at_level("WARNING", logger="detx.synthetic.generator"):
        generate_dataset(tmp_path, n_train=1, n_test=1, min_size=64, max_size=64, seed=2, progress=False)
    assert "1 .dicom files that this run did not write" in caplog.text
    assert len(list((tmp_path / "train").glob("*.dicom"))) == 2
    assert pd.read_csv(tmp_path / "train.csv")["image_id"].nunique() == 1
