"""MURA and box-free datasets: parsing the release, bad input, patient-grouped folds, the valid split kept apart,
study-level metrics, the synthetic MURA layout, evaluation of a classification CSV per study and body part."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import load_script
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from detx.evaluation.image_level import image_level_metrics, study_level_metrics
from detx.synthetic.mura import generate_mura

ROOT = Path(__file__).resolve().parents[1]


prepare_mura = load_script("datasets/prepare_mura.py").main
evaluate_tool = load_script("tools/evaluate.py")


def _png(path: Path, channels: int = 1, h: int = 60, w: int = 40, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w), value, np.uint8)
    img[10:20, 5:15] = 250
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if channels == 3 else img)


def _hand_tree(root: Path) -> Path:
    """A hand-made release: good studies, a 3-channel PNG, a missing file, a contradicting label, a duplicate path
    and an unreadable PNG."""
    rel = root / "MURA-v1.1"
    good = ["train/XR_WRIST/patient00001/study1_positive/image1.png",
            "train/XR_WRIST/patient00001/study1_positive/image2.png",
            "train/XR_HAND/patient00002/study1_negative/image1.png",
            "valid/XR_ELBOW/patient09001/study1_negative/image1.png"]
    for p in good:
        _png(rel / p)
    _png(rel / "train/XR_HAND/patient00003/study1_negative/image1.png", channels=3, value=90)  # 3-channel
    _png(rel / "train/XR_HAND/patient00004/study1_negative/image1.png")  # its study is labelled 1: contradiction
    (rel / "train/XR_SHOULDER/patient00005/study1_positive").mkdir(parents=True)
    (rel / "train/XR_SHOULDER/patient00005/study1_positive/image1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    paths = [f"MURA-v1.1/{p}" for p in good[:3]] + [
        "MURA-v1.1/train/XR_HAND/patient00003/study1_negative/image1.png",
        "MURA-v1.1/train/XR_HAND/patient00004/study1_negative/image1.png",
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image9.png",   # line 6: listed, does not exist
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png",   # line 7: duplicate
        "MURA-v1.1/train/XR_SHOULDER/patient00005/study1_positive/image1.png",  # unreadable
    ]
    (rel / "train_image_paths.csv").write_text("\n".join(paths) + "\n")
    (rel / "train_labeled_studies.csv").write_text(
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1\n"
        "MURA-v1.1/train/XR_HAND/patient00002/study1_negative/,0\n"
        "MURA-v1.1/train/XR_HAND/patient00003/study1_negative/,0\n"
        "MURA-v1.1/train/XR_HAND/patient00004/study1_negative/,1\n"         # line 4: contradicts the folder
        "MURA-v1.1/train/XR_SHOULDER/patient00005/study1_positive/,1\n")
    (rel / "valid_image_paths.csv").write_text(f"MURA-v1.1/{good[3]}\n")
    (rel / "valid_labeled_studies.csv").write_text("MURA-v1.1/valid/XR_ELBOW/patient09001/study1_negative/,0\n")
    return root


def test_hand_made_release_parses_and_names_each_bad_input(tmp_path, capsys):
    root = _hand_tree(tmp_path / "raw")
    out = tmp_path / "out"
    assert prepare_mura(["--root", str(root), "--out", str(out), "--size", "32", "--folds", "0", "--workers", "1",
                         "--quiet"]) == 0
    meta = pd.read_csv(out / "meta.csv", dtype=str).set_index("image_id")
    assert sorted(meta.index) == sorted([
        "train_XR_WRIST_patient00001_study1_positive_image1", "train_XR_WRIST_patient00001_study1_positive_image2",
        "train_XR_HAND_patient00002_study1_negative_image1", "train_XR_HAND_patient00003_study1_negative_image1",
        "valid_XR_ELBOW_patient09001_study1_negative_image1"])
    row = meta.loc["train_XR_HAND_patient00003_study1_negative_image1"]
    assert row["channels"] == "3" and row["label"] == "0" and row["body_part"] == "XR_HAND"
    assert row["path"] == "MURA-v1.1/train/XR_HAND/patient00003/study1_negative/image1.png"
    assert row["study_id"] == "train/XR_HAND/patient00003/study1_negative" and row["patient_id"] == "patient00003"
    png = cv2.imread(str(out / "images" / "train_XR_HAND_patient00003_study1_negative_image1.png"), cv2.IMREAD_UNCHANGED)
    assert png.ndim == 2 and png.shape == (32, 21)  # grayscale, longest side 32, aspect kept (60x40)
    problems = pd.read_csv(out / "problems.csv")
    assert sorted(problems["kind"]) == ["bad_image", "duplicate_path", "label_conflict", "missing_image"]
    text = "\n".join(problems["where"] + ": " + problems["message"])
    assert "train_labeled_studies.csv line 4" in text and "folder says negative" in text
    assert "train_image_paths.csv line 6" in text and "image9.png is listed but does not exist" in text
    assert "train_image_paths.csv line 7" in text and "listed twice" in text
    assert "patient00005" in text
    coco = json.loads((out / "annotations" / "valid.json").read_text())
    assert [im["image_uid"] for im in coco["images"]] == ["valid_XR_ELBOW_patient09001_study1_negative_image1"]
    assert coco["images"][0]["abnormal"] == 0 and coco["annotations"] == [] and coco["categories"] == []
    assert "valid_XR_ELBOW" not in (out / "annotations" / "all.json").read_text()
    # --strict stops at the first problem with exit status 1; --root may name MURA-v1.1 itself
    assert prepare_mura(["--root", str(root / "MURA-v1.1"), "--out", str(tmp_path / "strict"), "--size", "32",
                         "--workers", "1", "--strict", "--quiet"]) == 1
    assert "error (--strict)" in capsys.readouterr().err
    assert prepare_mura(["--root", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a release


def test_folds_are_patient_disjoint_and_valid_is_never_trained_on(tmp_path):
    generate_mura(tmp_path / "raw", n_train=60, n_valid=15, seed=1, min_size=48, max_size=64, progress=False)
    out = tmp_path / "out"
    assert prepare_mura(["--root", str(tmp_path / "raw"), "--out", str(out), "--size", "48", "--folds", "3",
                         "--workers", "1", "--quiet"]) == 0
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str})
    train, valid = meta[meta["split"] == "train"], meta[meta["split"] == "valid"]
    assert (train.groupby("patient_id")["fold"].nunique() == 1).all()  # a patient's images share a fold
    assert (train.groupby("study_id")["label"].nunique() == 1).all()
    assert set(train["fold"]) == {0, 1, 2} and (valid["fold"] == -1).all()
    valid_ids = set(valid["image_id"])
    for k in range(3):
        tr = {im["image_uid"] for im in json.loads((out / "annotations" / f"train_fold{k}.json").read_text())["images"]}
        va = {im["image_uid"] for im in json.loads((out / "annotations" / f"val_fold{k}.json").read_text())["images"]}
        assert not tr & va and not (tr | va) & valid_ids and tr | va == set(train["image_id"])
        assert not set(train.loc[train["image_id"].isin(tr), "patient_id"]) & \
            set(train.loc[train["image_id"].isin(va), "patient_id"])
    # a second run resumes: every image already converted is verified and skipped
    summary = json.loads((out / "summary.json").read_text())
    assert prepare_mura(["--root", str(tmp_path / "raw"), "--out", str(out), "--size", "48", "--folds", "3",
                         "--workers", "1", "--quiet"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["images_already_done"] == sum(summary["images"].values()) and again["images_converted"] == 0


def test_study_level_metrics_equal_a_hand_computation_and_scikit_learn():
    # three studies: A (abnormal, images 0.9 and 0.5 -> 0.7), B (normal, 0.2 and 0.4 -> 0.3), C (normal, 0.8)
    labels = [1, 1, 0, 0, 0]
    probs = [0.9, 0.5, 0.2, 0.4, 0.8]
    studies = ["A", "A", "B", "B", "C"]
    parts = ["XR_WRIST", "XR_WRIST", "XR_WRIST", "XR_WRIST", "XR_HAND"]
    m = study_level_metrics(labels, probs, studies, parts, threshold=0.5, n_boot=0)
    o = m["overall"]
    assert m["num_studies"] == 3 and o["num_abnormal"] == 1 and o["num_normal"] == 2
    assert o["auc"] == pytest.approx(0.5)  # A (0.7) ranks above B (0.3) but below C (0.8)
    assert o["auc"] == pytest.approx(roc_auc_score([1, 0, 0], [0.7, 0.3, 0.8]))
    # at 0.5: A and C called abnormal: tp 1, fp 1, tn 1 -> sens 1, spec 0.5, kappa by hand: po 2/3, pe 4/9 -> 0.4
    assert o["sensitivity"] == 1.0 and o["specificity"] == 0.5 and o["kappa"] == pytest.approx(0.4)
    assert o["kappa"] == pytest.approx(cohen_kappa_score([1, 0, 0], [1, 0, 1]))
    wrist = m["per_body_part"]["XR_WRIST"]
    assert wrist["num_studies"] == 2 and wrist["auc"] == 1.0 and wrist["kappa"] == pytest.approx(1.0)
    assert m["per_body_part"]["XR_HAND"]["specificity"] == 0.0
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 40), rng.random(40)
    r = image_level_metrics(y, s, 0.5)
    assert r["kappa"] == pytest.approx(cohen_kappa_score(y, (s >= 0.5).astype(int)))


def test_evaluate_a_classification_csv_per_study_and_body_part(tmp_path):
    generate_mura(tmp_path / "raw", n_train=20, n_valid=24, seed=2, min_size=48, max_size=64, progress=False)
    out = tmp_path / "out"
    assert prepare_mura(["--root", str(tmp_path / "raw"), "--out", str(out), "--size", "48", "--folds", "2",
                         "--workers", "1", "--quiet"]) == 0
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str})
    valid = meta[meta["split"] == "valid"]
    rng = np.random.default_rng(0)
    p = np.clip(0.35 * valid["label"].to_numpy() + 0.6 * rng.random(len(valid)), 0, 1)
    pd.DataFrame({"image_id": valid["image_id"], "p_abnormal": p}).to_csv(tmp_path / "cls.csv", index=False)
    js = tmp_path / "m.json"
    assert evaluate_tool.main(evaluate_tool.get_parser().parse_args([
        "--gt", str(out / "annotations" / "valid.json"), "--pred", str(tmp_path / "cls.csv"), "--out", str(js)])) == 0
    m = json.loads(js.read_text())
    expected = study_level_metrics(valid["label"], p, valid["study_id"], valid["body_part"], n_boot=0)
    assert m["study_level"]["auc"] == pytest.approx(expected["overall"]["auc"])
    assert m["study_level"]["kappa"] == pytest.approx(expected["overall"]["kappa"])
    assert m["study_level"]["num_studies"] == valid["study_id"].nunique()
    assert set(m["per_body_part"]) == set(valid["body_part"])
    assert m["image_level"]["auc"] == pytest.approx(roc_auc_score(valid["label"], p))


def test_synthetic_release_layout(tmp_path):
    s = generate_mura(tmp_path, n_train=8, n_valid=4, seed=0, min_size=48, max_size=64, progress=False)
    rel = tmp_path / "MURA-v1.1"
    paths = (rel / "train_image_paths.csv").read_text().split()
    assert len(paths) == s["images"]["train"] >= 8
    assert all(p.startswith("MURA-v1.1/train/XR_") and (tmp_path / p).is_file() for p in paths)
    studies = [line.split(",") for line in (rel / "train_labeled_studies.csv").read_text().split()]
    assert all(st.endswith("/") and lab == str(int(st.rstrip("/").endswith("positive"))) for st, lab in studies)
    again = tmp_path / "again"
    generate_mura(again, n_train=8, n_valid=4, seed=0, min_size=48, max_size=64, progress=False)
    assert (rel / "train_image_paths.csv").read_bytes() == (again / "MURA-v1.1" / "train_image_paths.csv").read_bytes()
    first = paths[0].split("MURA-v1.1/")[1]
    assert (rel / first).read_bytes() == (again / "MURA-v1.1" / first).read_bytes()  # same seed, same files
