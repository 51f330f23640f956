"""The real VinBigData aggregates (detx.synthetic.real_stats, tools/real_stats.py) and --compare-real."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from detx.core.errors import InputError
from detx.synthetic.real_stats import (
    REAL_STATS_PATH,
    annotation_stats,
    compare_stats,
    js_divergence,
    load_real_stats,
    read_kaggle_csv,
)

COLS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
NAN = float("nan")


def _toy(tmp_path):
    """Four images: a1 (R8, R9, R10; two nodules agreeing with IoU 0.6 and a lonely effusion), a2 (R8, R9, R10,
    cardiomegaly by all three, identical boxes), n1 (R8, R9, R10, normal), n2 (R1, R2, R3, normal), s1 (R11 draws a
    nodule, R12 and R13 call it normal)."""
    rows = [
        ("a1", "Nodule/Mass", 8, "R8", 0, 0, 10, 10),
        ("a1", "Nodule/Mass", 8, "R9", 0, 0, 10, 6),  # IoU 60/100 = 0.6 with R8's
        ("a1", "Pleural effusion", 10, "R10", 50, 50, 70, 70),  # no other reader drew an effusion: lonely
        ("a2", "Cardiomegaly", 3, "R8", 10, 20, 30, 40),
        ("a2", "Cardiomegaly", 3, "R9", 10, 20, 30, 40),
        ("a2", "Cardiomegaly", 3, "R10", 10, 20, 30, 40),
        ("n1", "No finding", 14, "R8", NAN, NAN, NAN, NAN),
        ("n1", "No finding", 14, "R9", NAN, NAN, NAN, NAN),
        ("n1", "No finding", 14, "R10", NAN, NAN, NAN, NAN),
        ("n2", "No finding", 14, "R1", NAN, NAN, NAN, NAN),
        ("n2", "No finding", 14, "R2", NAN, NAN, NAN, NAN),
        ("n2", "No finding", 14, "R3", NAN, NAN, NAN, NAN),
        ("s1", "Nodule/Mass", 8, "R11", 5, 5, 9, 9),  # R11 calls s1 abnormal, R12 and R13 normal: a split call
        ("s1", "No finding", 14, "R12", NAN, NAN, NAN, NAN),
        ("s1", "No finding", 14, "R13", NAN, NAN, NAN, NAN),
    ]
    path = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=COLS).to_csv(path, index=False)
    return path


def test_annotation_stats_hand_computed(tmp_path):
    df = read_kaggle_csv(_toy(tmp_path))
    s = annotation_stats(df, image_sizes={"a1": (100.0, 100.0), "a2": (100.0, 200.0), "s1": (100.0, 100.0)})
    assert s["images"] == 5 and s["finding_boxes"] == 7 and s["normal_fraction"] == 0.4
    assert s["readers_per_image"] == {"3": 5} and s["split_normal_abnormal_images"] == 1
    assert s["class_mix"]["Cardiomegaly"] == pytest.approx(3 / 7, abs=1e-4)
    assert s["class_mix"]["Nodule/Mass"] == pytest.approx(3 / 7, abs=1e-4)
    # the trio R8+R9+R10 reads 3 of 5 images, 2 of them abnormal; the others read n2 (normal) and s1 (abnormal)
    assert s["panels"]["trio"] == {"readers": ["R8", "R9", "R10"], "image_share": 0.6, "abnormal_share": 0.6667}
    assert s["panels"]["others"]["abnormal_share"] == 0.5
    assert s["panels"]["others"]["reader_share_abnormal"] == {"R11": 0.3333, "R12": 0.3333, "R13": 0.3333}
    # reads with a box: a1 R8, R9, R10, a2 R8, R9, R10, s1 R11 (1 box each): 7 boxes / 7 reads
    assert s["boxes_per_abnormal_image_per_reader"]["mean"] == 1.0
    assert s["styles"]["trio"]["boxes"] == 6 and s["styles"]["others"]["boxes"] == 1
    d = s["disagreement"]
    assert d["lonely_fraction"] == pytest.approx(2 / 7, abs=1e-4)  # the effusion and s1's nodule
    assert d["lonely_fraction_by_class"] == {"Cardiomegaly": 0.0, "Nodule/Mass": 0.3333, "Pleural effusion": 1.0}
    # best IoUs: 0.6, 0.6 (the nodules), 1, 1, 1 (cardiomegaly): median 1, all above 0.4
    assert d["best_iou"]["median"] == 1.0 and d["best_iou_above_0.4"] == 1.0
    # relative size and centre per class: cardiomegaly 20 x 20 px in a 100 x 200 image
    assert s["box_size_rel"]["Cardiomegaly"]["w"]["median"] == 0.2
    assert s["box_size_rel"]["Cardiomegaly"]["h"]["median"] == 0.1
    assert s["box_centre_rel"]["Cardiomegaly"]["y"]["median"] == 0.15
    assert s["classes_per_abnormal_image"] == {"1": 0.6667, "2": 0.3333}


def test_js_divergence():
    assert js_divergence({"a": 1.0}, {"a": 2.0}) == 0.0
    assert js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    # 0.5 KL(p || m) + 0.5 KL(q || m) with p = (1, 0), q = (0.5, 0.5), m = (0.75, 0.25)
    ref = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert js_divergence([1, 0], [1, 1]) == pytest.approx(ref)


def test_committed_aggregates_match_the_real_csv():
    """The committed JSON is what tools/real_stats.py writes from the real CSV (regenerated, compared)."""
    from conftest import vinbigdata_csv

    path = vinbigdata_csv()
    committed = load_real_stats()
    fresh = json.loads(json.dumps(annotation_stats(read_kaggle_csv(path), source=committed["source"])))
    assert fresh == committed
    # the facts the issue quotes
    assert committed["normal_fraction"] == pytest.approx(0.707, abs=1e-3)
    assert committed["split_normal_abnormal_images"] == 0 and committed["readers_per_image"] == {"3": 15000}
    assert committed["panels"]["trio"]["readers"] == ["R8", "R9", "R10"]
    assert committed["panels"]["trio"]["image_share"] == pytest.approx(0.37, abs=0.01)
    assert committed["disagreement"]["best_iou"]["median"] == pytest.approx(0.68, abs=0.01)


def test_compare_real_identity_is_zero():
    real = load_real_stats()
    rows = compare_stats(real, real)
    assert len(rows) > 60
    for r in rows:
        if r["measure"] == "JS":
            assert r["distance"] == 0.0, r
        elif r["measure"] == "ratio" and r["real"]:
            assert r["distance"] == 1.0, r
        elif r["measure"] == "diff" and r["real"] is not None:
            assert r["distance"] == 0.0, r


@pytest.mark.parametrize("content,match", [
    ("a,b\n1,2\n", "missing column"),
    ("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\nx,Broken heart,3,R1,0,0,1,1\n", "row 2"),
    ("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\nx,Cardiomegaly,3,R1,,,,\n", "row 2"),
])
def test_read_kaggle_csv_refuses(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=match):
        read_kaggle_csv(p)


def test_compare_real_cli(tmp_path):
    good = _toy(tmp_path)
    r = subprocess.run([sys.executable, "-m", "detx.synthetic", "--compare-real", str(good)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| normal fraction | 0.7071 | 0.4 | -0.3071 (diff) |" in r.stdout
    assert "no DICOMs beside train.csv" in r.stdout
    bad = tmp_path / "spine.csv"
    bad.write_text("image_id,lesion_type,xmin,ymin,xmax,ymax\nx,Osteophytes,0,0,1,1\n")
    r = subprocess.run([sys.executable, "-m", "detx.synthetic", "--compare-real", str(bad)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "spine.csv: not a Kaggle VinBigData reader CSV" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "detx.synthetic", "--compare-real", str(tmp_path / "nope.csv")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no such reader CSV" in r.stderr


def test_aggregates_are_package_data():
    assert REAL_STATS_PATH.is_file()
    setup_py = (REAL_STATS_PATH.parents[2] / "setup.py").read_text()
    assert '"detx.synthetic": ["*.json"]' in setup_py
