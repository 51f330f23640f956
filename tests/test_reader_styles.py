"""Issue 19: drawing styles and style groups, the paired outlier rule that works with three or four readers, the
honest human baseline, --meta; on synthetic readers, hand-built CSVs and the real Kaggle VinBigData train.csv."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_script, vinbigdata_csv
from scipy.spatial.distance import jensenshannon

from detx.data.readers import read_reader_csv
from detx.evaluation.reader_agreement import (
    paired_agreement,
    paired_outliers,
    pairwise_f1,
    pooled_baseline,
    reader_agreement,
    reader_cases,
)
from detx.evaluation.reader_styles import js_divergence, reader_styles, style_distance

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
# the hand-built CSV of tests/test_reader_agreement.py (seven readers; R9 draws off the finding on s1 and s2)
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
CLASSES = [(0, "Aortic enlargement"), (3, "Cardiomegaly"), (8, "Nodule/Mass"), (10, "Pleural effusion")]


def readers_csv(n_images: int = 60, n_readers: int = 4, jitter: float = 0.05, shift: float | None = 0.6,
                seed: int = 0) -> str:
    """Readers who all jitter the same true boxes (edges moved by ``jitter`` x the box size, normal noise); with
    ``shift`` the last reader's every box is moved right by ``shift`` x its width (IoU 0.25 with the finding at 0.6).
    One image in four is normal for everyone."""
    rng = np.random.default_rng(seed)
    lines = [HEADER]
    for i in range(n_images):
        if i % 4 == 0:
            lines += [f"img{i:03d},No finding,14,R{r},,,," for r in range(1, n_readers + 1)]
            continue
        truth = []
        for _ in range(int(rng.integers(1, 4))):
            cid, name = CLASSES[int(rng.integers(len(CLASSES)))]
            w, h = rng.uniform(60, 300, 2)
            x, y = rng.uniform(0, 600, 2)
            truth.append((cid, name, np.array([x, y, x + w, y + h])))
        for r in range(1, n_readers + 1):
            for cid, name, box in truth:
                w, h = box[2] - box[0], box[3] - box[1]
                b = box + rng.normal(0, jitter, 4) * [w, h, w, h]
                if shift is not None and r == n_readers:
                    b[[0, 2]] += shift * w
                lines.append(f"img{i:03d},{name},{cid},R{r},{b[0]:.1f},{b[1]:.1f},{b[2]:.1f},{b[3]:.1f}")
    return "\n".join(lines) + "\n"


def _script(name):
    mod = load_script(f"tools/{name}.py")
    return lambda *args: mod.main(mod.get_parser().parse_args([str(a) for a in args]))


def test_the_shifted_fourth_reader_alone_is_flagged(tmp_path, capsys):
    csv = tmp_path / "four.csv"
    csv.write_text(readers_csv())
    table, _ = read_reader_csv(csv)
    paired, flagged = paired_outliers(paired_agreement(pairwise_f1(table)))
    assert flagged == ["R4"]
    p = paired.set_index("rad_id")
    # R4 matches nobody (IoU 0.25 < 0.4) while R1..R3 match each other: F1 0 against 1 on all 45 abnormal images
    assert p.loc["R4", "paired_images"] == 45 and p.loc["R4", "images_below"] == 45
    assert p.loc["R4", "agreement_with_coreaders"] == 0 and p.loc["R4", "coreaders_agreement"] == 1
    assert p.loc["R4", "sign_test_p"] == pytest.approx(0.5 ** 45)
    # a good reader agrees with two of its three co-readers (mean 2/3), they with each other on one pair of three
    assert p.loc["R1", "agreement_with_coreaders"] == pytest.approx(2 / 3)
    assert p.loc["R1", "coreaders_agreement"] == pytest.approx(1 / 3) and p.loc["R1", "images_above"] == 45
    # the z-score across four readers cannot flag it (the complaint); the paired rule does, in the tool too
    a = reader_agreement(table)
    assert a.outliers_z == [] and a.outliers_paired == ["R4"] and a.outliers == ["R4"]
    out = tmp_path / "out"
    assert _script("readers")("--csv", csv, "--out", out, "--no-plots") == 0
    assert "outliers: R4 (paired" in capsys.readouterr().out
    df = pd.read_csv(out / "readers.csv")
    assert df.loc[df["outlier"], "rad_id"].tolist() == ["R4"] and df["outlier_paired"].sum() == 1
    js = json.loads((out / "readers.json").read_text())
    assert js["outliers"] == ["R4"] and "sign test" in js["outlier_rule"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_readers_who_agree_flag_nobody(tmp_path, seed):
    for n_readers in (3, 4):  # a lot of jitter (12% of the box), so they disagree now and then, at random
        csv = tmp_path / f"agree{n_readers}.csv"
        csv.write_text(readers_csv(n_images=80, n_readers=n_readers, jitter=0.12, shift=None, seed=seed))
        table, _ = read_reader_csv(csv)
        paired, flagged = paired_outliers(paired_agreement(pairwise_f1(table)))
        assert flagged == [] and (paired["images_below"] + paired["images_above"]).sum() > 0
        assert reader_agreement(table).outliers == []


def test_pairwise_f1_hand_computed(tmp_path):
    # image a: R1 two Cardiomegaly boxes, R2 one (matches R1's first), R3 one Nodule -> F1(R1,R2) = 2*1/3,
    # F1(R1,R3) = 0, F1(R2,R3) = 0. b: only two readers: left out (the paired rule needs three)
    csv = tmp_path / "f1.csv"
    csv.write_text("\n".join([HEADER, "a,Cardiomegaly,3,R1,0,0,10,10", "a,Cardiomegaly,3,R1,50,50,60,60",
                              "a,Cardiomegaly,3,R2,1,0,11,10", "a,Nodule/Mass,8,R3,0,0,10,10",
                              "b,Cardiomegaly,3,R1,0,0,10,10", "b,Cardiomegaly,3,R2,0,0,10,10"]) + "\n")
    table, _ = read_reader_csv(csv)
    f1 = pairwise_f1(table).set_index(["rad_a", "rad_b"])
    assert set(f1["image_id"]) == {"a"}
    assert f1.loc[("R1", "R2"), "f1"] == pytest.approx(2 / 3) and f1.loc[("R1", "R2"), "matched"] == 1
    assert f1.loc[("R1", "R3"), "f1"] == 0 and f1.loc[("R2", "R3"), "f1"] == 0
    per = paired_agreement(pairwise_f1(table)).set_index("rad_id")
    # R3: agreement (0 + 0) / 2 = 0, its co-readers R1, R2: 2/3 -> d = -2/3; R1: (2/3 + 0) / 2 = 1/3 vs 0
    assert per.loc["R3", "d"] == pytest.approx(-2 / 3) and per.loc["R1", "d"] == pytest.approx(1 / 3)


def test_honest_baseline_leaves_normal_images_out(tmp_path):
    # HAND_CSV: six abnormal images (c1 c2 n1 n2 s1 s2), three readers each: 18 cases. Cardiomegaly: c1, c2: 3 TP
    # each against 3 GT each; s1: R2, R3 TP against 2 GT each (R9's shifted box is a second GT box), R9 FP against
    # 1 GT -> 8 TP of 9 predictions, 11 GT: AP = 8/9 x 8/11 = 64/99; Nodule/Mass the same (n1, n2, s2); No finding
    # has no GT on these images -> mAP 64/99 (the mean over readers on all images, normal ones included: 50/63)
    csv = tmp_path / "hand.csv"
    csv.write_text(HAND_CSV)
    table, _ = read_reader_csv(csv)
    a = reader_agreement(table)
    assert a.baseline["mAP40"] == pytest.approx(64 / 99) and a.baseline["images"] == 6 and a.baseline["cases"] == 18
    assert a.human_baseline == pytest.approx(50 / 63)
    cases = reader_cases(table)
    assert pooled_baseline(cases, ["c1", "c2"])["mAP40"] == 1.0
    # s1 alone: Cardiomegaly 2 TP of 3 predictions, 5 GT -> 2/3 x 2/5
    assert pooled_baseline(cases, ["s1"])["mAP40"] == pytest.approx(4 / 15)


def test_js_divergence_and_the_noise_correction():
    rng = np.random.default_rng(0)
    for _ in range(10):
        p, q = rng.integers(0, 50, 14) + 0.5, rng.integers(0, 50, 14) + 0.5
        assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    # two samples of one distribution: the correction takes their sampling noise away; different ones stay apart
    probs = np.full(14, 1 / 14)
    same = [style_distance(rng.multinomial(200, probs), rng.multinomial(150, probs),
                           rng.multinomial(200, np.full(12, 1 / 12)), rng.multinomial(150, np.full(12, 1 / 12)))
            for _ in range(50)]
    assert np.mean(same) < 0.01
    skew = np.r_[0.5, np.full(13, 0.5 / 13)]
    assert style_distance(rng.multinomial(200, probs), rng.multinomial(200, skew), np.full(12, 20), np.full(12, 20)) > 0.05


def test_styles_with_meta_are_relative(tmp_path, capsys):
    # R1 draws 100x100 boxes on 1000x1000 images, R2 200x200 boxes on 2000x2000 ones: in pixels they differ, relative
    # to the image both are 10% of the side
    rows = [HEADER]
    for i in range(60):
        rows.append(f"a{i},Cardiomegaly,3,R1,100,100,200,200")
        rows.append(f"a{i},Cardiomegaly,3,R3,100,100,200,200")
        rows.append(f"b{i},Cardiomegaly,3,R2,200,200,400,400")
        rows.append(f"b{i},Cardiomegaly,3,R3,200,200,400,400")
    csv = tmp_path / "t.csv"
    csv.write_text("\n".join(rows) + "\n")
    meta = tmp_path / "meta.csv"
    meta.write_text("image_id,orig_width,orig_height,width,height\n" + "".join(
        f"a{i},1000,1000,256,256\nb{i},2000,2000,256,256\n" for i in range(60)))
    table, _ = read_reader_csv(csv)
    px = reader_styles(table).styles.set_index("rad_id")
    assert px.loc["R1", "median_box_size_px"] == 100 and px.loc["R2", "median_box_size_px"] == 200
    assert px.loc["R1", "median_box_area_px2"] == 10000 and px.loc["R1", "center_x"] == 150
    sizes = {f"a{i}": (1000, 1000) for i in range(60)} | {f"b{i}": (2000, 2000) for i in range(60)}
    rel = reader_styles(table, sizes)
    st = rel.styles.set_index("rad_id")
    assert st.loc["R1", "median_box_size_rel"] == pytest.approx(0.1) == st.loc["R2", "median_box_size_rel"]
    assert st.loc["R1", "center_x"] == pytest.approx(0.15) and rel.relative
    assert [g["readers"] for g in rel.groups] == [["R1", "R2", "R3"]]  # one style once sizes are relative
    out = tmp_path / "out"
    assert _script("readers")("--csv", csv, "--meta", meta, "--out", out, "--no-plots") == 0
    js = json.loads((out / "readers.json").read_text())
    assert js["style_relative_sizes"] and js["style_groups"][0]["median_box_size_rel"] == pytest.approx(0.1)
    # a meta file that lacks images of the CSV: named, exit 2, nothing written
    short = tmp_path / "short.csv"
    short.write_text("image_id,orig_width,orig_height\na0,1000,1000\n")
    capsys.readouterr()
    assert _script("readers")("--csv", csv, "--meta", short, "--out", tmp_path / "o2") == 2
    err = capsys.readouterr().err
    assert str(short) in err and "lacks 119 of the 120 images" in err
    assert not (tmp_path / "o2").exists()


def test_real_vinbigdata_panels_styles_and_baseline(tmp_path, capsys):
    out = tmp_path / "real"
    assert _script("readers")("--csv", vinbigdata_csv(), "--out", out, "--no-plots") == 0
    printed = capsys.readouterr().out
    js = json.loads((out / "readers.json").read_text())
    top = js["panels"][0]
    assert top["readers"] == ["R8", "R9", "R10"] and top["images"] == 5501
    assert round(top["abnormal_share"], 2) == 0.75 and top["abnormal_images"] == 4146
    assert sum(p["images"] for p in js["panels"]) == 15000
    groups = [g["readers"] for g in js["style_groups"]]
    assert ["R8", "R9", "R10"] in groups  # the trio, and no one else, is a group of its own
    assert js["too_few_boxes"] == [f"R{k}" for k in range(1, 8)]
    assert all(r in sum(groups, []) for r in [f"R{k}" for k in range(11, 18)])
    df = pd.read_csv(out / "readers.csv").set_index("rad_id")
    trio = df.loc[["R8", "R9", "R10"], "style_group"]
    assert trio.nunique() == 1 and (df["style_group"] == trio.iloc[0]).sum() == 3
    assert (df.loc[[f"R{k}" for k in range(1, 8)], "style_group"] == "too few boxes").all()
    # the honest baseline: on the 4,394 images with a box only, below the inflated mean over readers
    hb = js["human_baseline"]
    assert hb["images"] == 4394 and hb["mAP40"] < 0.3 < 0.5 < hb["mAP40_mean"]
    assert hb["per_panel"][0]["panel"] == "R8+R9+R10" and hb["per_panel"][0]["abnormal_images"] == 4146
    assert js["unanimous_share"] == 1.0 and "unanimous" in js["kappa_note"] and "by construction" in printed
    assert "R8+R9+R10          5501 images (37%), abnormal 75%" in printed
    # the verdict the demo report quotes (detx/synthetic/vinbigdata_readers.json) is what the tool finds today
    from detx.evaluation.reader_agreement import readers_verdict
    from detx.synthetic.real_stats import load_real_readers_verdict

    got = readers_verdict(js)
    assert got["largest_panel"] == "R8+R9+R10" and got["largest_panel_image_share"] == pytest.approx(5501 / 15000)
    assert got["others_abnormal_share"] == pytest.approx((4394 - 4146) / (15000 - 5501))  # 248 of 9,499 images
    assert got["style_groups"][0] == "R8+R9+R10" and got["too_few_boxes"] == 7 and got["outliers"] == []
    committed = load_real_readers_verdict()
    assert set(committed) == {"source", *got}
    for k, v in got.items():
        assert committed[k] == (pytest.approx(v, abs=5e-5) if isinstance(v, float) else v), k


def test_case_counts_give_what_the_metric_gives(tmp_path):
    # ReaderCases.score sums per-case counts instead of running the metric again: the same numbers as
    # vinbigdata_map + operating_point_ap on those cases, per reader and pooled
    from detx.evaluation.reader_agreement import operating_point_ap
    from detx.evaluation.vinbigdata import vinbigdata_map

    csv = tmp_path / "four.csv"
    csv.write_text(readers_csv(n_images=40, jitter=0.15, seed=3))
    table, _ = read_reader_csv(csv)
    cases = reader_cases(table)
    subsets = [[k for k in cases.gt if k.endswith(f"\x1fR{r}")] for r in range(1, 5)] + [list(cases.gt)[::3]]
    for keys in subsets:
        ref = operating_point_ap(vinbigdata_map({k: cases.gt[k] for k in keys}, {k: cases.preds[k] for k in keys},
                                                num_classes=14))
        got = cases.score(keys, 0.4)[1]
        assert got.keys() == ref.keys()
        for c in ref:
            assert (got[c] is None and ref[c] is None) or got[c] == pytest.approx(ref[c], abs=1e-12)
