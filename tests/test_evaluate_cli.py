"""tools/evaluate.py end to end on a hand-made Kaggle train.csv, a prepared COCO JSON and a submission."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
evaluate_cli = load_script("tools/evaluate.py")

# normal n1 (3 readers: No finding); a1: R1 and R2 draw Cardiomegaly (WBF: the mean box 102 100 302 300),
# R3 No finding; a2: R1 draws a Nodule/Mass, R2 and R3 No finding.
TRAIN_CSV = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
n1,No finding,14,R1,,,,
n1,No finding,14,R2,,,,
n1,No finding,14,R3,,,,
a1,Cardiomegaly,3,R1,100,100,300,300
a1,Cardiomegaly,3,R2,104,100,304,300
a1,No finding,14,R3,,,,
a2,Nodule/Mass,8,R1,50,50,80,80
a2,No finding,14,R2,,,,
a2,No finding,14,R3,,,,
"""
# class 3: TP -> AP 1; class 8: FP then TP -> AP 1/2; No finding: n1 first (TP) -> AP 1; mAP40 = 5/6
SUBMISSION = """image_id,PredictionString
n1,14 0.9 0 0 1 1
a1,3 0.8 102 100 302 300 14 0.3 0 0 1 1
a2,8 0.6 200 200 220 220 8 0.5 50 50 80 80 14 0.4 0 0 1 1
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "train.csv").write_text(TRAIN_CSV)
    (tmp_path / "sub.csv").write_text(SUBMISSION)
    # the same ground truth as a prepared COCO JSON: PNGs at half the original size
    coco = {
        "info": {"dataset": "vindr-cxr", "classes": ["Aortic enlargement", "Atelectasis", "Calcification",
                                                     "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
                                                     "Lung Opacity", "Nodule/Mass", "Other lesion",
                                                     "Pleural effusion", "Pleural thickening", "Pneumothorax",
                                                     "Pulmonary fibrosis"]},
        "categories": [{"id": i, "name": str(i)} for i in range(14)],
        "images": [{"id": k + 1, "file_name": f"{u}.png", "image_uid": u, "width": 256, "height": 256,
                    "orig_width": 512, "orig_height": 512} for k, u in enumerate(["n1", "a1", "a2"])],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 3, "bbox": [51, 50, 100, 100], "area": 1e4, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 8, "bbox": [25, 25, 15, 15], "area": 225, "iscrowd": 0},
        ],
    }
    (tmp_path / "val.json").write_text(json.dumps(coco))
    return tmp_path


def _run(*args):
    return evaluate_cli.main(evaluate_cli.get_parser().parse_args([str(a) for a in args]))


def test_reader_csv_with_wbf(files, capsys):
    out = files / "m.json"
    assert _run("--gt", files / "train.csv", "--pred", files / "sub.csv", "--out", out) == 0
    m = json.loads(out.read_text())
    assert m["mAP40"] == pytest.approx(5 / 6)
    assert m["AP_per_class"]["Cardiomegaly"] == 1.0 and m["AP_per_class"]["Nodule/Mass"] == 0.5
    assert m["AP_per_class"]["No finding"] == 1.0 and m["AP_per_class"]["Atelectasis"] is None
    assert "Atelectasis" in m["excluded_classes"] and len(m["excluded_classes"]) == 12
    assert m["num_gt"]["No finding"] == 1 and m["num_pred"]["Nodule/Mass"] == 2
    assert 0 < m["coco_mAP40"] <= 1 and set(m["froc"]) >= {"fp_rates", "sensitivity", "mean"}
    # 2 lesions, 3 images; FROC: the FP (0.6) comes before the second TP
    assert m["froc"]["sensitivity"][:3] == [0.5, 0.5, 1.0]
    il = m["image_level"]
    assert {"auc", "f1", "sensitivity", "specificity", "threshold"} <= set(il)
    # P(abnormal) = 1 - No-finding confidence: n1 0.1, a1 0.7, a2 0.6
    assert il["auc"] == 1.0 and il["threshold"] == pytest.approx(0.6) and il["f1"] == 1.0
    assert il["auc_per_class"]["Cardiomegaly"] == 1.0
    printed = capsys.readouterr().out
    assert "excluded (no GT)" in printed and "mAP40" in printed and "Nodule/Mass" in printed


def test_no_fusion_keeps_every_reader_box(files):
    out = files / "m.json"
    assert _run("--gt", files / "train.csv", "--pred", files / "sub.csv", "--gt-fusion", "none", "--out", out) == 0
    m = json.loads(out.read_text())
    # two Cardiomegaly boxes (R1, R2), one predicted: recall 1/2 -> AP 1/2
    assert m["AP_per_class"]["Cardiomegaly"] == 0.5 and m["mAP40"] == pytest.approx(2 / 3)


def test_prepared_coco_json_gives_the_same(files):
    out = files / "m.json"
    assert _run("--gt", files / "val.json", "--pred", files / "sub.csv", "--out", out, "--strict") == 0
    m = json.loads(out.read_text())
    assert m["mAP40"] == pytest.approx(5 / 6) and m["gt_fusion"] is None


def test_bad_submission_strict_and_lenient(files, capsys):
    bad = files / "bad.csv"
    bad.write_text(SUBMISSION.replace("a1,3 0.8", "a1,3 1.8"))
    # a problem lenient mode would skip stops a --strict run with exit status 1 (README "Exit status")
    assert _run("--gt", files / "train.csv", "--pred", bad, "--strict") == 1
    err = capsys.readouterr().err
    assert "image a1" in err and "confidence 1.8 outside [0, 1]" in err
    out = files / "m.json"
    assert _run("--gt", files / "train.csv", "--pred", bad, "--out", out) == 0
    m = json.loads(out.read_text())
    assert m["problems"]["submission"] == 1 and m["AP_per_class"]["Cardiomegaly"] == 0.0
    assert "Skipped in lenient mode: 1 submission problem" in capsys.readouterr().out
    # an image missing from the submission
    missing = files / "missing.csv"
    missing.write_text("\n".join(SUBMISSION.splitlines()[:3]) + "\n")
    assert _run("--gt", files / "train.csv", "--pred", missing, "--strict") == 1
    assert "image a2 missing" in capsys.readouterr().err
    assert _run("--gt", files / "train.csv", "--pred", missing, "--out", out) == 0
    assert json.loads(out.read_text())["AP_per_class"]["Nodule/Mass"] == 0.0


def test_script_help_and_plots(files):
    r = subprocess.run([sys.executable, "tools/evaluate.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--gt-fusion" in r.stdout
    plots = files / "plots"
    r = subprocess.run([sys.executable, "tools/evaluate.py", "--gt", files / "train.csv", "--pred", files / "sub.csv",
                        "--plots", plots], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("pr_curves.png", "froc.png", "roc.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spinexr_reader_csv_uses_its_seven_classes(tmp_path):
    (tmp_path / "spine.csv").write_text(
        "image_id,study_id,series_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n"
        "s1,st1,se1,R1,Osteophytes,10,10,50,50\n"
        "s2,st2,se2,R1,No finding,,,,\n"
    )
    (tmp_path / "sub.csv").write_text("image_id,PredictionString\ns1,0 0.9 10 10 50 50 7 0.2 0 0 1 1\n"
                                      "s2,7 0.8 0 0 1 1\n")
    out = tmp_path / "m.json"
    assert _run("--gt", tmp_path / "spine.csv", "--pred", tmp_path / "sub.csv", "--out", out, "--strict") == 0
    m = json.loads(out.read_text())
    assert m["dataset"] == "spinexr" and list(m["AP_per_class"])[-1] == "No finding"
    assert len(m["AP_per_class"]) == 8 and m["mAP40"] == 1.0
    (tmp_path / "sub.csv").write_text("image_id,PredictionString\ns1,14 0.9 0 0 1 1\ns2,\n")
    assert _run("--gt", tmp_path / "spine.csv", "--pred", tmp_path / "sub.csv", "--strict") == 1
