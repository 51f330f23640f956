"""Reader agreement (issue 14): each reader against the fusion of the others, the outlier rule, Cohen's kappa,
tools/readers.py and the human baseline of tools/evaluate.py, on a hand-built CSV with hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_script
from sklearn.metrics import average_precision_score, cohen_kappa_score

from detx.core.predictions import Predictions
from detx.data.readers import read_reader_csv
from detx.evaluation.reader_agreement import (
    cohen_kappa,
    pairwise_kappa,
    reader_agreement,
    reader_scores,
    robust_outliers,
    robust_z,
)
from detx.evaluation.vinbigdata import vinbigdata_map

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    mod = load_script(f"tools/{name}.py")
    return lambda *args: mod.main(mod.get_parser().parse_args([str(a) for a in args]))


# Seven readers, three per image. Boxes: Cardiomegaly A = (100,100,300,300), Nodule/Mass N = (50,50,90,90); every
# good reader draws exactly A or N. R9 draws them shifted off the finding (IoU 0 with A and N): A' = (400,100,600,300),
# N' = (150,50,190,90). R1 and R6 never share an image with R9.
#
# Hand computation (a reader's boxes all have confidence 1: AP = precision x recall; mAP over classes with GT):
#   R1: c1 A vs fused(R2,R3) = A: TP; n1 N: TP; z1 normal, its No-finding call TP -> every AP 1 -> mAP 1
#   R6: c2, n1, z1 the same -> 1
#   R2: c1 A TP; n2 N TP; z2 NF TP; s1: the others are R3 (A) and R9 (A'), IoU 0, so two GT boxes, R2's A takes one:
#       Cardiomegaly 2 TP of 3 GT (P 1, R 2/3) -> 2/3; Nodule 1; No finding 1 -> mAP 8/9. R3 likewise (c1, n2, z2, s1);
#       R4 and R5 the same on Nodule/Mass through s2 -> 8/9
#   R9: s1 A' vs A, s2 N' vs N: FP, FP -> Cardiomegaly 0, Nodule 0; no normal image among its -> mAP 0
#   human baseline: (1 + 1 + 4 * 8/9 + 0) / 7 = 50/63
# Outlier rule: median 8/9; absolute deviations 1/9, 1/9, 0, 0, 0, 0, 8/9 -> MAD 0; mean absolute deviation
# (10/9) / 7 = 10/63; z(R9) = (0 - 8/9) / (1.2533 * 10/63) = -4.468 < -3.5: flagged; z(R1) = z(R6) > 0; others 0.
HAND_CSV = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
c1,Cardiomegaly,3,R1,100,100,300,300
c1,Cardiomegaly,3,R2,100,100,300,300
c1,Cardiomegaly,3,R3,100,100,300,300
c2,Cardiomegaly,3,R4,100,100,300,300
c2,Cardiomegaly,3,R5,100,100,300,300
c2,Cardiomegaly,3,R6,100,100,300,300
n1,Nodule/Mass,8,R1,50,50,90,90
n1,Nodule/Mass,8,R4,50,50,90,90
n1,Nodule/Mass,8,R6,50,50,90,90
n2,Nodule/Mass,8,R2,50,50,90,90
n2,Nodule/Mass,8,R3,50,50,90,90
n2,Nodule/Mass,8,R5,50,50,90,90
z1,No finding,14,R1,,,,
z1,No finding,14,R5,,,,
z1,No finding,14,R6,,,,
z2,No finding,14,R2,,,,
z2,No finding,14,R3,,,,
z2,No finding,14,R4,,,,
s1,Cardiomegaly,3,R2,100,100,300,300
s1,Cardiomegaly,3,R3,100,100,300,300
s1,Cardiomegaly,3,R9,400,100,600,300
s2,Nodule/Mass,8,R4,50,50,90,90
s2,Nodule/Mass,8,R5,50,50,90,90
s2,Nodule/Mass,8,R9,150,50,190,90
"""
EXPECTED = {"R1": 1.0, "R2": 8 / 9, "R3": 8 / 9, "R4": 8 / 9, "R5": 8 / 9, "R6": 1.0, "R9": 0.0}
Z_R9 = -(8 / 9) / (1.2533 * 10 / 63)


@pytest.fixture
def hand_csv(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(HAND_CSV)
    return p


def test_shifted_reader_scores_lowest_and_alone_is_flagged(hand_csv):
    table, problems = read_reader_csv(hand_csv)
    assert problems == []
    a = reader_agreement(table)
    got = dict(zip(a.readers["rad_id"], a.readers["mAP40_vs_others"]))
    assert got == pytest.approx(EXPECTED)
    assert min(got, key=got.get) == "R9"
    assert a.outliers == ["R9"] and a.readers.set_index("rad_id")["outlier"].to_dict() == {
        r: r == "R9" for r in EXPECTED}
    z = a.readers.set_index("rad_id")["robust_z"]
    assert z["R9"] == pytest.approx(Z_R9) and z["R2"] == 0 and z["R1"] > 0
    assert a.human_baseline == pytest.approx(50 / 63)
    assert a.ap_per_class["R2"]["Cardiomegaly"] == pytest.approx(2 / 3)
    assert a.ap_per_class["R2"]["Nodule/Mass"] == 1.0 and a.ap_per_class["R2"]["No finding"] == 1.0
    assert a.ap_per_class["R9"] == {**dict.fromkeys(a.classes), "Cardiomegaly": 0.0, "Nodule/Mass": 0.0,
                                    "No finding": None}
    r = a.readers.set_index("rad_id")
    assert r.loc["R2", "images"] == 4 and r.loc["R2", "boxes"] == 3 and r.loc["R2", "normal_share"] == 0.25
    assert r.loc["R9", "normal_share"] == 0.0 and r.loc["R9", "boxes_per_image"] == 1.0
    assert r.loc["R2", "boxes_Cardiomegaly"] == 2 and r.loc["R2", "boxes_Nodule/Mass"] == 1
    assert a.num_images == 8 and a.num_images_shared == 8


def test_reader_identical_to_the_others_scores_one(hand_csv):
    table, _ = read_reader_csv(hand_csv)
    scores = reader_scores(table)
    for rad in ("R1", "R6"):  # their boxes are exactly the other readers' on every image
        assert scores[rad].mAP == 1.0
        assert {v for v in scores[rad].ap_per_class.values() if v is not None} == {1.0}


def test_tied_boxes_are_one_operating_point_whatever_their_order(tmp_path):
    # R1 draws the finding and a stray box of the same class on image a: 1 TP, 1 FP against R2's single box.
    # Tied scores taken together (sklearn's average precision): precision 1/2 at recall 1 -> AP 1/2, whichever row
    # comes first.
    rows = ["a,Cardiomegaly,3,R1,0,0,10,10", "a,Cardiomegaly,3,R1,50,50,60,60", "a,Cardiomegaly,3,R2,0,0,10,10"]
    head = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
    ref = average_precision_score([1, 0], [1.0, 1.0])
    assert ref == 0.5
    for order in (rows, [rows[1], rows[0], rows[2]]):
        p = tmp_path / "t.csv"
        p.write_text(head + "\n".join(order) + "\n")
        table, _ = read_reader_csv(p)
        scores = reader_scores(table)
        assert scores["R1"].ap_per_class[3] == pytest.approx(ref)
        assert scores["R2"].ap_per_class[3] == 0.5  # R1's two boxes (one reader: unfused) are R2's GT: recall 1/2
    # what the ranking by file order would have given: 1 or 1/2 depending on the rows' order
    gt = {"a": (np.array([[0.0, 0, 10, 10]]), np.array([3]))}
    tp_first = Predictions([[0, 0, 10, 10], [50, 50, 60, 60]], [1.0, 1.0], [3, 3])
    fp_first = Predictions([[50, 50, 60, 60], [0, 0, 10, 10]], [1.0, 1.0], [3, 3])
    assert vinbigdata_map(gt, {"a": tp_first})["AP_per_class"][3] == 1.0
    assert vinbigdata_map(gt, {"a": fp_first})["AP_per_class"][3] == 0.5


def test_robust_z_and_the_outlier_rule():
    # MAD path: median 0.8, deviations 0, .02, .02, .01, .6 -> MAD .02
    values = {"a": 0.8, "b": 0.82, "c": 0.78, "d": 0.81, "e": 0.2}
    z, out = robust_outliers(values)
    assert z["e"] == pytest.approx(0.6745 * -0.6 / 0.02) and z["c"] == pytest.approx(-0.6745)
    assert out == ["e"]
    # MAD 0: the mean absolute deviation, scaled by 1.2533
    z, out = robust_outliers({"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5})
    assert z["d"] == pytest.approx(-0.5 / (1.2533 * 0.125)) and out == []  # z = -3.19: not below -3.5
    z, out = robust_outliers({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.5})
    assert z["e"] == pytest.approx(-0.5 / (1.2533 * 0.1)) and out == ["e"]  # z = -3.99
    # fewer than 4 readers: nobody; all equal: z 0, nobody; the high side is never flagged
    assert robust_outliers({"a": 1.0, "b": 1.0, "c": 0.0})[1] == []
    assert robust_outliers(dict.fromkeys("abcde", 0.7)) == (dict.fromkeys("abcde", 0.0), [])
    assert robust_outliers({"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5, "e": 1.0})[1] == []
    assert robust_z({}) == {}


def test_cohen_kappa_against_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        a = rng.integers(0, 2, n)
        b = np.where(rng.random(n) < 0.7, a, rng.integers(0, 2, n))
        ref = cohen_kappa_score(a, b, labels=[0, 1])
        got = cohen_kappa(a, b)
        assert (got is None and np.isnan(ref)) or got == pytest.approx(ref)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # chance agreement 1: undefined (sklearn: nan)
    assert cohen_kappa([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0


def test_pairwise_kappa_on_a_table(tmp_path):
    # R1, R2, R3 read six images each (all three read every image); abnormal = drew a box
    calls = {"R1": [1, 1, 0, 0, 1, 0], "R2": [1, 0, 0, 0, 1, 1], "R3": [0, 1, 1, 0, 1, 0]}
    lines = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    for rad, v in calls.items():
        for i, abnormal in enumerate(v):
            lines.append(f"i{i},Cardiomegaly,3,{rad},0,0,10,10" if abnormal else f"i{i},No finding,14,{rad},,,,")
    p = tmp_path / "k.csv"
    p.write_text("\n".join(lines) + "\n")
    table, _ = read_reader_csv(p)
    k = pairwise_kappa(table)
    assert list(zip(k["rad_a"], k["rad_b"])) == [("R1", "R2"), ("R1", "R3"), ("R2", "R3")]
    assert (k["images"] == 6).all()
    for a, b, kappa in zip(k["rad_a"], k["rad_b"], k["kappa"]):
        assert kappa == pytest.approx(cohen_kappa_score(calls[a], calls[b]))
    agreement = reader_agreement(table)
    r1 = agreement.readers.set_index("rad_id").loc["R1", "kappa_vs_others"]
    assert r1 == pytest.approx((cohen_kappa_score(calls["R1"], calls["R2"])
                                + cohen_kappa_score(calls["R1"], calls["R3"])) / 2)


def test_tools_readers_writes_the_files(hand_csv, tmp_path, capsys):
    out = tmp_path / "readers"
    assert _script("readers")("--csv", hand_csv, "--out", out) == 0
    printed = capsys.readouterr().out
    # the honest baseline on the six images with a box (64/99, tests/test_reader_styles.py), then the old mean over
    # readers on all images (50/63), which the two normal images lift
    assert "pooled over the 6 images with a box; compare with a model's mAP40 on the same images): 0.6465" in printed
    assert "(the mean reader mAP40 vs the others' fusion over all images, 7 readers: 0.7937;" in printed
    assert "outliers: R9" in printed
    df = pd.read_csv(out / "readers.csv")
    assert list(df["rad_id"]) == list(EXPECTED)  # one row per reader, natural order
    assert dict(zip(df["rad_id"], df["mAP40_vs_others"])) == pytest.approx(EXPECTED)
    assert df["outlier"].dtype == bool and df.loc[df["outlier"], "rad_id"].tolist() == ["R9"]
    assert df.set_index("rad_id").loc["R2", "AP40_Cardiomegaly"] == pytest.approx(2 / 3)
    js = json.loads((out / "readers.json").read_text())
    assert js["human_baseline"]["mAP40_mean"] == pytest.approx(50 / 63) and js["outliers"] == ["R9"]
    assert js["human_baseline"]["per_reader"] == pytest.approx(EXPECTED)
    assert "median" in js["outlier_rule"] and len(js["readers"]) == 7
    assert js["readers"][1]["AP_per_class"]["Cardiomegaly"] == pytest.approx(2 / 3)
    assert js["readers"][1]["class_mix"]["Cardiomegaly"] == 2
    kappa = pd.read_csv(out / "kappa.csv")
    assert {"rad_a", "rad_b", "images", "kappa"} <= set(kappa.columns)
    for name in ("agreement.png", "reader_class_heatmap.png"):
        assert (out / name).stat().st_size > 1000
    assert not list(out.glob(".*"))  # no temporary files left


def test_tools_readers_needs_rad_id(tmp_path, capsys):
    p = tmp_path / "no_rad.csv"
    pd.read_csv(pd.io.common.StringIO(HAND_CSV)).drop(columns="rad_id").to_csv(p, index=False)
    assert _script("readers")("--csv", p, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "no rad_id column" in err and str(p) in err
    assert not (tmp_path / "o" / "readers.csv").exists()


def test_tools_readers_spinexr_and_physionet_layouts(tmp_path, capsys):
    hand = pd.read_csv(pd.io.common.StringIO(HAND_CSV))
    # VinDr-SpineXR: lesion_type, xmin..; Cardiomegaly -> Osteophytes, Nodule/Mass -> Disc space narrowing
    spine = pd.DataFrame({
        "image_id": hand["image_id"], "study_id": "st_" + hand["image_id"], "series_id": "se", "rad_id": hand["rad_id"],
        "lesion_type": hand["class_name"].map({"Cardiomegaly": "Osteophytes", "Nodule/Mass": "Disc space narrowing",
                                               "No finding": "No finding"}),
        "xmin": hand["x_min"], "ymin": hand["y_min"], "xmax": hand["x_max"], "ymax": hand["y_max"]})
    spine.to_csv(tmp_path / "spine.csv", index=False)
    out = tmp_path / "spine"
    assert _script("readers")("--csv", tmp_path / "spine.csv", "--dataset", "spinexr", "--out", out) == 0
    df = pd.read_csv(out / "readers.csv")
    assert dict(zip(df["rad_id"], df["mAP40_vs_others"])) == pytest.approx(EXPECTED)
    assert df.loc[df["outlier"], "rad_id"].tolist() == ["R9"] and "AP40_Osteophytes" in df.columns
    # PhysioNet annotations_train.csv: no class_id column
    hand.drop(columns="class_id").to_csv(tmp_path / "annotations_train.csv", index=False)
    out = tmp_path / "phys"
    assert _script("readers")("--csv", tmp_path / "annotations_train.csv", "--out", out, "--no-plots") == 0
    df = pd.read_csv(out / "readers.csv")
    assert dict(zip(df["rad_id"], df["mAP40_vs_others"])) == pytest.approx(EXPECTED)
    assert not (out / "agreement.png").exists()
    capsys.readouterr()
    # a spine file is not a chest file
    assert _script("readers")("--csv", tmp_path / "spine.csv", "--dataset", "vindr-cxr", "--out", out) == 2
    assert "is not a 'vindr-cxr' file" in capsys.readouterr().err


# A perfect submission against the fusion of all seven readers: s1 and s2 carry R9's shifted box as a second
# ground-truth box, so the model's mAP40 is below 1 (the readers' own score is 50/63 whatever the submission).
SUBMISSION = """image_id,PredictionString
c1,3 0.9 100 100 300 300 14 0.1 0 0 1 1
c2,3 0.9 100 100 300 300 14 0.1 0 0 1 1
n1,8 0.8 50 50 90 90 14 0.2 0 0 1 1
n2,8 0.8 50 50 90 90 14 0.2 0 0 1 1
z1,14 0.9 0 0 1 1
z2,14 0.9 0 0 1 1
s1,3 0.7 100 100 300 300 14 0.3 0 0 1 1
s2,8 0.7 50 50 90 90 14 0.3 0 0 1 1
"""


def test_evaluate_prints_and_writes_the_human_baseline(hand_csv, tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUBMISSION)
    out = tmp_path / "m.json"
    assert _script("evaluate")("--gt", hand_csv, "--pred", sub, "--out", out) == 0
    m = json.loads(out.read_text())
    hb = m["human_baseline"]
    assert hb["mAP40_mean"] == pytest.approx(50 / 63) and hb["n_readers"] == 7
    assert hb["per_reader"] == pytest.approx(EXPECTED)
    # the honest baseline, the one tools/readers.py prints: the six images with a box, 18 (reader, image) cases pooled
    # (64/99, tests/test_reader_styles.py); printed beside the model's number instead of the old mean
    assert hb["mAP40"] == pytest.approx(64 / 99) and hb["images"] == 6 and hb["cases"] == 18
    printed = capsys.readouterr().out
    assert ("human baseline (mAP40 of each reader against the fusion of its co-readers, pooled over the 6 images with "
            "a box): 0.6465") in printed
    assert f"[model mAP40: {m['mAP40']:.4f} on all 8 images;" in printed

    # on part of the images: only c1, n1, s1 -> R1: c1, n1 (1); R2: c1, s1 -> Cardiomegaly 2 of 3 GT: 2/3;
    # R3 the same; R4: n1 (1); R6: n1 (1); R9: s1 -> 0; R5 read none of them: not scored
    part = tmp_path / "part.csv"
    part.write_text("".join(line + "\n" for line in HAND_CSV.splitlines() if line.split(",")[0] in
                            ("image_id", "c1", "n1", "s1")))
    sub.write_text("image_id,PredictionString\nc1,3 0.9 100 100 300 300\nn1,8 0.8 50 50 90 90\ns1,14 1 0 0 1 1\n")
    assert _script("evaluate")("--gt", part, "--pred", sub, "--out", out) == 0
    hb = json.loads(out.read_text())["human_baseline"]
    assert hb["per_reader"] == pytest.approx({"R1": 1.0, "R2": 2 / 3, "R3": 2 / 3, "R4": 1.0, "R6": 1.0, "R9": 0.0})
    assert hb["mAP40_mean"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 1 + 1 + 0) / 6)


def test_evaluate_without_readers_has_no_human_baseline(hand_csv, tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text(SUBMISSION)
    no_rad = tmp_path / "consensus.csv"
    pd.read_csv(hand_csv).drop(columns="rad_id").to_csv(no_rad, index=False)
    out = tmp_path / "m.json"
    assert _script("evaluate")("--gt", no_rad, "--pred", sub, "--out", out) == 0
    assert json.loads(out.read_text())["human_baseline"] is None
    assert "human baseline" not in capsys.readouterr().out
    # a prepared COCO JSON: null as well
    classes = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
               "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
               "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis"]
    ids = ["c1", "c2", "n1", "n2", "z1", "z2", "s1", "s2"]
    coco = {"info": {"dataset": "vindr-cxr", "classes": classes, "fusion": "wbf"},
            "categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
            "images": [{"id": k + 1, "file_name": f"{u}.png", "image_uid": u, "width": 640, "height": 640,
                        "orig_width": 640, "orig_height": 640} for k, u in enumerate(ids)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [100, 100, 200, 200], "area": 4e4,
                             "iscrowd": 0}]}
    (tmp_path / "all.json").write_text(json.dumps(coco))
    assert _script("evaluate")("--gt", tmp_path / "all.json", "--pred", sub, "--out", out) == 0
    assert json.loads(out.read_text())["human_baseline"] is None
