"""The synthetic VinBigData world (generator profile "vinbigdata") measured against the committed real aggregates
(detx/synthetic/vinbigdata_stats.json), on 4,000 annotation-only images (docs/synthetic.md states the tolerances)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from detx.core.classes import VINDR_CXR_CLASSES
from detx.data.readers import read_reader_csv
from detx.evaluation.reader_styles import reader_styles
from detx.synthetic.generator import generate_dataset
from detx.synthetic.real_stats import (
    annotation_stats,
    compare_stats,
    js_divergence,
    load_real_stats,
    read_kaggle_csv,
)

N_WORLD = 4000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = generate_dataset(out, n_train=N_WORLD, n_test=1, seed=0, min_size=64, max_size=96, progress=False,
                               annotations_only=True, profile="vinbigdata")
    return out, summary


@pytest.fixture(scope="module")
def world_stats(world):
    out, summary = world
    return annotation_stats(read_kaggle_csv(out / "train.csv"), summary["image_sizes"])


def test_world_statistics_match_the_real_ones(world_stats):
    real, syn = load_real_stats(), world_stats
    assert syn["normal_fraction"] == pytest.approx(real["normal_fraction"], abs=0.005)  # rounded per split
    # exactly three readers per image, and the normal/abnormal call is unanimous on every image
    assert syn["readers_per_image"] == {"3": N_WORLD} and syn["split_normal_abnormal_images"] == 0
    assert js_divergence(real["class_mix"], syn["class_mix"]) < 0.02
    assert set(syn["class_mix"]) == set(real["class_mix"]) and min(syn["class_mix"].values()) > 0  # all 14 drawn
    assert js_divergence(real["classes_per_abnormal_image"], syn["classes_per_abnormal_image"]) < 0.02
    # classes co-occur as on real images (drawn independently, the pairs' JS was 0.029 and these lifts 1.05 and 1.03)
    co_row = next(r for r in compare_stats(real, syn) if r["statistic"].startswith("class co-occurrence"))
    assert co_row["distance"] < 0.02
    lift = lambda st, a, b: st[a][b] / (st[a][a] * st[b][b])  # noqa: E731
    rc, sc = real["class_cooccurrence"], syn["class_cooccurrence"]
    aortic, cardio, effusion = (VINDR_CXR_CLASSES.index(c) for c in ("Aortic enlargement", "Cardiomegaly",
                                                                       "Pleural effusion"))
    assert lift(sc, aortic, cardio) == pytest.approx(lift(rc, aortic, cardio), abs=0.1)  # 1.23: together more often
    assert lift(sc, cardio, effusion) < 0.95 and lift(rc, cardio, effusion) < 0.7  # 0.64: together less often
    ratio = syn["boxes_per_abnormal_image_per_reader"]["mean"] / real["boxes_per_abnormal_image_per_reader"]["mean"]
    assert 0.8 < ratio < 1.2
    rp, sp = real["panels"], syn["panels"]
    assert sp["trio"]["readers"] == ["R8", "R9", "R10"]
    assert sp["trio"]["image_share"] == pytest.approx(rp["trio"]["image_share"], abs=0.03)
    assert sp["trio"]["abnormal_share"] == pytest.approx(rp["trio"]["abnormal_share"], abs=0.04)
    assert sp["others"]["abnormal_share"] == pytest.approx(rp["others"]["abnormal_share"], abs=0.015)
    # the panels draw differently: the others' boxes are bigger, their class mix another
    assert sp["trio"] and syn["styles"]["others"]["median_box_size_rel"] > 1.3 * syn["styles"]["trio"]["median_box_size_rel"]
    assert js_divergence(syn["styles"]["trio"]["class_mix"], syn["styles"]["others"]["class_mix"]) > 0.03
    rd, sd = real["disagreement"], syn["disagreement"]
    assert sd["lonely_fraction"] == pytest.approx(rd["lonely_fraction"], abs=0.03)
    assert sd["best_iou"]["median"] == pytest.approx(rd["best_iou"]["median"], abs=0.04)
    assert sd["best_iou_above_0.4"] == pytest.approx(rd["best_iou_above_0.4"], abs=0.15)


def test_readers_tool_finds_the_synthetic_trio_as_a_style_group(world):
    """As on the real CSV (tests/test_reader_styles.py): R8, R9 and R10 form a style group of their own."""
    out, summary = world
    table, _ = read_reader_csv(out / "train.csv")
    styles = reader_styles(table, summary["image_sizes"])
    groups = {tuple(g["readers"]) for g in styles.groups}
    assert ("R8", "R9", "R10") in groups, groups
    assert {f"R{k}" for k in range(1, 8)} <= set(styles.too_few_boxes)  # the normal-only readers draw (almost) nothing


def _files(root: Path, names) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in names}


def test_annotations_only_writes_the_same_csvs_as_the_full_run(tmp_path):
    kw = {"n_train": 8, "n_test": 2, "seed": 3, "min_size": 64, "max_size": 96, "progress": False,
          "normal_fraction": 0.25, "profile": "vinbigdata"}
    full = generate_dataset(tmp_path / "full", **kw)
    fast = generate_dataset(tmp_path / "fast", annotations_only=True, **kw)
    names = ("train.csv", "test_ground_truth.csv", "sample_submission.csv")
    assert _files(tmp_path / "full", names) == _files(tmp_path / "fast", names)
    assert full["image_sizes"] == fast["image_sizes"] and full["boxes_per_class"] == fast["boxes_per_class"]
    assert len(list((tmp_path / "full" / "train").glob("*.dicom"))) == 8
    assert not (tmp_path / "fast" / "train").exists() or not list((tmp_path / "fast" / "train").glob("*.dicom"))
    sizes = pd.read_csv(tmp_path / "fast" / "image_sizes.csv", dtype={"image_id": str})
    assert {i: (w, h) for i, w, h in sizes.itertuples(index=False)} == full["image_sizes"]


def test_world_same_seed_same_bytes(tmp_path):
    kw = {"n_train": 4, "n_test": 1, "seed": 9, "min_size": 64, "max_size": 80, "progress": False,
          "normal_fraction": 0.0, "profile": "vinbigdata"}
    generate_dataset(tmp_path / "a", **kw)
    generate_dataset(tmp_path / "b", **kw)
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in sorted((tmp_path / "b").rglob("*")) if p.is_file()}
    assert len(a) == 8 and a == b


def test_world_classes_and_normal_fraction(tmp_path):
    s = generate_dataset(tmp_path, n_train=12, n_test=1, min_size=64, max_size=96, classes=["Nodule/Mass"],
                         normal_fraction=0.0, annotations_only=True, progress=False, profile="vinbigdata")
    train = pd.read_csv(tmp_path / "train.csv")
    assert set(train["class_name"]) == {"Nodule/Mass"}  # every reader of an abnormal image draws a box
    assert train.groupby("image_id")["rad_id"].nunique().eq(3).all() and s["abnormal"]["train"] == 12
    s = generate_dataset(tmp_path / "n", n_train=10, n_test=1, min_size=64, max_size=96, normal_fraction=1.0,
                         annotations_only=True, progress=False, profile="vinbigdata")
    assert set(pd.read_csv(tmp_path / "n" / "train.csv")["class_name"]) == {"No finding"}
    with pytest.raises(ValueError, match="annotations_only needs the vinbigdata profile"):
        generate_dataset(tmp_path / "c", n_train=1, n_test=1, annotations_only=True)  # classic, the default
    with pytest.raises(ValueError, match="unknown profile"):
        generate_dataset(tmp_path / "d", n_train=1, n_test=1, profile="nope")


def test_cli_profile_and_compare(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "detx.synthetic", "--out", str(out), "--n-train", "6", "--n-test", "1",
                        "--min-size", "64", "--max-size", "80", "--no-progress", "--normal-fraction", "0.5",
                        "--profile", "vinbigdata"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "detx.synthetic", "--compare-real", str(out / "train.csv")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| normal fraction | 0.7071 | 0.5 | -0.2071 (diff) |" in r.stdout
    assert "box sizes divided by each image's size (DICOM headers or image_sizes.csv)" in r.stdout


#: sha1 of the pixel arrays of the 4 + 1 DICOMs below; measured under OpenCV 4.12.0 and 5.1.0 (the same), numpy
#: 2.x, x86-64 (docs/synthetic.md "Same pixels everywhere"), keyed by whether numpy dispatches its AVX-512F kernels:
#: with them (an AMD EPYC here) a few float results differ in the last bits and some pixels by a grey level; the same
#: machine with ``NPY_DISABLE_CPU_FEATURES="AVX512F AVX512CD AVX512_SKX ..."`` gives the other hash (docs/reproducibility.md).
#: A change of the hash for the running machine's key means the pixels of a seed changed.
PIXELS_SHA1 = {False: "c7e50558f33ce6528565f0b557ab8f4e5c47495d", True: "20b932d3215a129aef747cb4b5a4660344dab6c3"}


def numpy_uses_avx512f() -> bool:
    """Whether numpy runs its AVX-512F kernels on this machine (the CPU has them and they are not disabled)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("AVX512F"))


def test_pixels_of_a_seed_are_pinned(tmp_path):
    import hashlib

    import pydicom

    generate_dataset(tmp_path, n_train=3, n_test=1, seed=0, min_size=64, max_size=96, normal_fraction=0.0,
                     profile="vinbigdata", progress=False)
    h = hashlib.sha1()
    for p in sorted(tmp_path.rglob("*.dicom")):
        h.update(pydicom.dcmread(p).pixel_array.tobytes())
    assert h.hexdigest() == PIXELS_SHA1[numpy_uses_avx512f()]


def test_chest_drawing_avoids_the_opencv_calls_whose_output_changed_between_versions():
    """cv2.GaussianBlur (float32), cv2.putText and cv2.warpAffine gave other pixels under OpenCV 4.12 and 5.1; the
    chest and spine drawing use none of them (the MURA generator still uses warpAffine and GaussianBlur: docs/synthetic.md)."""
    src = (Path(__file__).resolve().parent.parent / "detx" / "synthetic" / "draw.py").read_text()
    for call in ("cv2.GaussianBlur", "cv2.putText", "cv2.warpAffine"):
        assert f"{call}(" not in src, call
