"""Issue 25: what a new user hit on real data (round 2); one test per numbered case, through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import load_script

from detx.core.submission import read_submission
from detx.synthetic import write_dicom

ROOT = Path(__file__).resolve().parents[1]
HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"

predict_tool = load_script("tools/predict.py")


def _predict(*args) -> int:
    return predict_tool.main(predict_tool.parse_args(["--quiet", *[str(a) for a in args]]))


def _dicoms(folder: Path, names, size=(80, 100), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        write_dicom(folder / f"{name}.dicom", rng.integers(0, 4096, size).astype(np.uint16), bits_stored=12)
    return folder


def _pngs(folder: Path, names, size=(96, 128), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{name}.png"), rng.integers(0, 255, size, dtype=np.uint8))
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# 1 ------------------------------------------------------------------------------------ a mixed folder

@pytest.mark.slow
def test_a_folder_of_pngs_and_dicoms_is_refused_naming_both_kinds(tiny_random_checkpoint, tmp_path, capsys):
    cfg_file, weights = tiny_random_checkpoint
    mixed = _pngs(tmp_path / "mixed", [f"p{k}" for k in range(5)])
    _dicoms(mixed, ["d0"])
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", mixed, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"input folder {mixed} holds 1 DICOM and 5 PNG image(s)" in err and "give a folder of one kind" in err
    assert not out.exists() and not (tmp_path / "sub.classification.csv").exists()


# 2, 9a ------------------------------------------------------------------------------- PNGs of unknown size

@pytest.mark.slow
def test_pngs_without_meta_are_refused_unless_png_frame_and_found_recursively(tiny_random_checkpoint, tmp_path,
                                                                              capsys):
    cfg_file, weights = tiny_random_checkpoint
    # a MURA patient folder: the PNGs sit one level down and their file names repeat
    patient = _pngs(tmp_path / "patient00001", ["study1_positive/image1", "study1_positive/image2",
                                                "study2_negative/image1"])
    out = tmp_path / "sub.csv"
    args = ["--config-file", cfg_file, "--weights", weights, "--input", patient, "--out", out]
    assert _predict(*args) == 2
    err = capsys.readouterr().err
    assert "3 of 3 PNG(s) have no original size" in err and "--png-frame" in err and "meta.csv" in err
    assert not out.exists()
    assert _predict(*args, "--png-frame") == 0
    captured = capsys.readouterr()
    assert "the boxes of 3 image(s) are in PNG pixels" in captured.err
    assert sorted(read_submission(out)) == ["study1_positive/image1", "study1_positive/image2",
                                            "study2_negative/image1"]
    problems = _rows(tmp_path / "sub.problems.csv")
    assert [(r["kind"], r["image_id"]) for r in problems] == [("png_frame", "study1_positive/image1"),
                                                              ("png_frame", "study1_positive/image2"),
                                                              ("png_frame", "study2_negative/image1")]
    # with the sizes known (a meta.csv beside the folder) no flag is needed and no problem is listed
    (tmp_path / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\n" + "".join(
        f"{i},1280,960,128,96\n" for i in ("study1_positive/image1", "study1_positive/image2",
                                          "study2_negative/image1")))
    assert _predict(*args) == 0
    assert not (tmp_path / "sub.problems.csv").exists()  # the earlier run's list does not outlive it


# 4 ------------------------------------------------------------------------------------ unreadable images

@pytest.mark.slow
def test_an_unreadable_image_is_marked_in_both_csvs_and_counted(tiny_random_checkpoint, tmp_path, capsys):
    cfg_file, weights = tiny_random_checkpoint
    d = _dicoms(tmp_path / "dicom", ["t0", "t1"])
    (d / "broken.dicom").write_bytes(b"\0" * 300)
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", d, "--out", out,
                    "--dicom-size", 64) == 0
    captured = capsys.readouterr()
    assert "(3 images, 1 prediction set(s) fused: " in captured.out
    assert "1 unreadable written as no finding" in captured.out
    assert "1 of 3 image(s) could not be read" in captured.err and "sub.problems.csv" in captured.err
    sub = read_submission(out)
    assert sub["broken"].classes.tolist() == [14] and sub["broken"].scores.tolist() == [1.0]
    rows = {r["image_id"]: r for r in _rows(tmp_path / "sub.classification.csv")}
    assert rows["broken"]["status"] == "unreadable" and rows["t0"]["status"] == rows["t1"]["status"] == "ok"
    problems = _rows(tmp_path / "sub.problems.csv")
    assert [(r["kind"], r["image_id"]) for r in problems] == [("unreadable", "broken")]


# 5, 6 ---------------------------------------------------------------------------- classification CSV, overlays

@pytest.mark.slow
def test_the_classification_csv_follows_out_and_empty_overlays_say_so(tiny_random_checkpoint, tmp_path, capsys,
                                                                      caplog):
    cfg_file, weights = tiny_random_checkpoint
    d = _dicoms(tmp_path / "dicom", ["t0", "t1"])
    common = ["--config-file", cfg_file, "--weights", weights, "--input", d, "--dicom-size", 64]
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    with caplog.at_level("WARNING"):
        assert _predict(*common, "--out", first, "--vis-dir", tmp_path / "vis", "--vis-score", 0.99) == 0
    printed = capsys.readouterr().out
    assert f"and {tmp_path / 'first.classification.csv'}" in printed
    # a random model's confidences are far below 0.99: every overlay says it shows no box, and the log counts them
    assert "2 overlay(s) in" in printed and "2 show no box at or above --vis-score 0.99" in printed
    assert "2 of 2 overlay(s) show no box: none at or above --vis-score 0.99 (highest confidence among them" \
        in caplog.text
    banner = cv2.imread(str(tmp_path / "vis" / "t0.png"))[:20]
    assert ((banner[..., 0] < 60) & (banner[..., 1] > 200) & (banner[..., 2] > 200)).sum() > 20  # yellow text
    before = (tmp_path / "first.classification.csv").read_bytes()
    assert _predict(*common, "--out", second) == 0
    assert (tmp_path / "first.classification.csv").read_bytes() == before  # not replaced by the second run
    assert (tmp_path / "second.classification.csv").is_file()
    assert not (tmp_path / "classification.csv").exists()
    # an explicit --classification-out that is the submission itself is refused
    assert _predict(*common, "--out", second, "--classification-out", second) == 2
    assert "is the submission (--out) itself" in capsys.readouterr().err


# 7 ------------------------------------------------------------------------------------ TEST.EVAL_PERIOD 0

@pytest.mark.slow
def test_eval_period_0_means_no_evaluation_at_all(prepared_cxr_dir, tmp_path):
    from conftest import TINY_CONFIG, run_train_net

    out = tmp_path / "run"
    proc = run_train_net("--config-file", TINY_CONFIG, "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out,
                         "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "1",
                         "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0", "DETX.VAL_PERIOD", "-1", "DETX.FOLD", "0",
                         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64")
    log = (out / "log.txt").read_text()
    assert "TEST.EVAL_PERIOD 0: no evaluation during or after training" in log
    assert "Start inference" not in log and not (out / "inference").exists()  # not even the final one
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics and not any(k.startswith(("vinbigdata/", "bbox/")) for m in metrics for k in m)
    assert (out / "model_final.pth").is_file() and not (out / "model_best.pth").exists()
    assert "no best checkpoint (no validation set or no evaluation)" in proc.stdout


# 3 ------------------------------------------------------------------------------------ no rad_id

prepare_cxr = load_script("datasets/prepare_vindr_cxr.py").main
evaluate_tool = load_script("tools/evaluate.py")


def _evaluate(*args) -> int:
    return evaluate_tool.main(evaluate_tool.get_parser().parse_args([str(a) for a in args]))


def test_a_reader_csv_without_rad_id_says_fusion_needs_reader_ids(tmp_path, capsys):
    from detx.core.predictions import Predictions
    from detx.core.submission import write_submission

    d = _dicoms(tmp_path / "dicom", ["a", "b", "c"])
    # three readers' boxes of one finding on a and b (with rad_id they fuse to one box each), c normal
    boxes = [(20, 30, 60, 70), (22, 31, 61, 72), (19, 29, 58, 69)]
    rows = [f"{i},Cardiomegaly,3,R{k + 1},{x0},{y0},{x1},{y1}\n" for i in ("a", "b")
            for k, (x0, y0, x1, y1) in enumerate(boxes)] + [f"c,No finding,14,R{k},,,,\n" for k in (1, 2, 3)]
    with_ids = tmp_path / "with_ids.csv"
    with_ids.write_text(HEADER + "".join(rows))
    without = tmp_path / "train.csv"  # the same rows, the rad_id column gone
    without.write_text("image_id,class_name,class_id,x_min,y_min,x_max,y_max\n" + "".join(
        ",".join(r.rstrip("\n").split(",")[:3] + r.rstrip("\n").split(",")[4:]) + "\n" for r in rows))
    common = ["--dicom-dir", str(d), "--size", "64", "--folds", "0", "--workers", "1", "--no-report"]
    assert prepare_cxr(["--csv", str(with_ids), "--out", str(tmp_path / "p1"), *common]) == 0
    text = capsys.readouterr().out
    assert "boxes: 6 from readers -> 2 after fusion" in text and "needs reader ids" not in text
    assert prepare_cxr(["--csv", str(without), "--out", str(tmp_path / "p2"), *common]) == 0
    text = capsys.readouterr().out
    assert "boxes: 6 from readers -> 6 after fusion" in text
    assert ("WARNING: fusion (wbf) needs reader ids: 6 box(es) on 2 image(s) have no rad_id, so each image's boxes "
            "were treated as one reader's (a consensus) and kept unfused") in text
    summary = json.loads((tmp_path / "p2" / "summary.json").read_text())
    assert summary["readers"]["boxes_without_reader"] == {"boxes": 6, "images": 2}
    # evaluate says the same beside the numbers and in the JSON
    sub = tmp_path / "sub.csv"
    write_submission(sub, {"a": Predictions([[20, 30, 60, 70]], [0.9], [3]), "b": Predictions(),
                           "c": Predictions([[0, 0, 1, 1]], [1.0], [14])})
    out = tmp_path / "m.json"
    assert _evaluate("--gt", without, "--pred", sub, "--out", out) == 0
    assert "WARNING: ground truth: fusion (wbf) needs reader ids: 6 box(es) on 2 image(s)" in capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m["gt_boxes_without_reader"]["boxes"] == 6 and m["num_gt"]["Cardiomegaly"] == 6
    assert _evaluate("--gt", with_ids, "--pred", sub, "--out", out) == 0
    assert "needs reader ids" not in capsys.readouterr().out
    assert json.loads(out.read_text())["gt_boxes_without_reader"] == {"boxes": 0, "images": 0, "note": None}


# 8 ------------------------------------------------------------------------------------ floods and noise

def test_evaluate_summarizes_missing_images_in_one_line(tmp_path, caplog):
    from detx.core.predictions import Predictions
    from detx.core.submission import write_submission

    gt = tmp_path / "train.csv"
    gt.write_text(HEADER + "".join(f"im{k},Cardiomegaly,3,R1,10,10,50,50\n" if k % 2 else f"im{k},No finding,14,R1,,,,\n"
                                   for k in range(300)))
    sub = tmp_path / "sub.csv"
    write_submission(sub, {f"im{k}": Predictions([[10, 10, 50, 50]], [0.8], [3]) for k in range(5)})
    with caplog.at_level("WARNING"):
        assert _evaluate("--gt", gt, "--pred", sub) == 0
    lines = [r.getMessage() for r in caplog.records]
    missing = [line for line in lines if "missing from the submission" in line]
    assert len(missing) == 1 and "295 image(s) missing from the submission" in missing[0] and "e.g. im10, im100, im101" in missing[0]
    assert len(lines) < 10


@pytest.mark.slow
def test_a_run_into_a_log_file_carries_no_library_noise_and_no_carriage_returns(tiny_random_checkpoint, tmp_path):
    import subprocess
    import sys

    cfg_file, weights = tiny_random_checkpoint
    d = _dicoms(tmp_path / "dicom", ["t0", "t1"])
    # stdout and stderr are pipes, as in `tools/predict.py ... > log.txt 2>&1`; the progress bar stays on
    proc = subprocess.run([sys.executable, "tools/predict.py", "--config-file", cfg_file, "--weights", str(weights),
                           "--input", str(d), "--out", str(tmp_path / "sub.csv"), "--dicom-size", "64",
                           "MODEL.DEVICE", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for noise in ("FutureWarning", "torch.jit.script", "meshgrid", "is_fx_tracing", "\r"):
        assert noise not in proc.stderr, noise
    bar = [line for line in proc.stderr.splitlines() if line.startswith("predict:")]
    assert bar and "100%" in bar[-1] and "2/2" in bar[-1]


def test_pydicom_warnings_print_once_and_bars_name_what_they_convert(tmp_path, capsys):
    import subprocess
    import sys

    code = ("import logging, detx.cli\nlogging.basicConfig()\nfrom pydicom.misc import warn_and_log\n"
            "warn_and_log('Invalid value for VR AS: 45 years')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.count("Invalid value for VR AS: 45 years") == 1, proc.stderr

    from detx.data.dicom import convert_dicoms

    src = _pngs(tmp_path / "mura", ["image1"])
    results = convert_dicoms([("image1", src / "image1.png", tmp_path / "out" / "image1.png")], 64, workers=1,
                             source="png", progress=True)
    assert not results["image1"].error
    err = capsys.readouterr().err
    assert "PNG -> PNG" in err and "DICOM -> PNG" not in err and "\r" not in err


def test_a_truncated_dicom_is_reported_as_truncated(tmp_path, capsys):
    d = _dicoms(tmp_path / "dicom", ["good", "cut"])
    data = (d / "cut.dicom").read_bytes()
    (d / "cut.dicom").write_bytes(data[: data.index(b"\xe0\x7f\x10\x00")])  # ends before the Pixel Data element
    out = tmp_path / "out"
    assert prepare_cxr(["--dicom-dir", str(d), "--out", str(out), "--size", "64", "--workers", "1"]) == 0
    problems = _rows(out / "problems.csv")
    assert [p["image_id"] for p in problems] == ["cut"]
    assert "truncated file" in problems[0]["message"] and "ends before the pixel data" in problems[0]["message"]


def test_the_readers_table_names_every_column(tmp_path, capsys):
    readers_tool = load_script("tools/readers.py")
    rows = []
    for k in range(6):
        for r in ("R1", "R2", "R3"):
            rows.append(f"im{k},Cardiomegaly,3,{r},{20 + k},30,60,70\n" if k % 2 else f"im{k},No finding,14,{r},,,,\n")
    gt = tmp_path / "train.csv"
    gt.write_text(HEADER + "".join(rows))
    assert readers_tool.main(readers_tool.get_parser().parse_args(["--csv", str(gt), "--out", str(tmp_path / "r"),
                                                                   "--no-plots"])) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| reader"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert "" not in cells and "outlier" in cells


# 9 ------------------------------------------------------------------------------------ small traps

def test_a_wrong_csv_path_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    d = _dicoms(tmp_path / "dicom", ["a"])
    out = tmp_path / "out"
    assert prepare_cxr(["--csv", str(tmp_path / "trian.csv"), "--dicom-dir", str(d), "--out", str(out), "--size",
                        "64", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: annotation CSV (--csv) {tmp_path / 'trian.csv'} does not exist"
    assert not out.exists()


def test_a_pixel_spacing_of_0_is_recorded_as_unknown(tmp_path):
    d = tmp_path / "dicom"
    px = np.random.default_rng(0).integers(0, 4096, (80, 100)).astype(np.uint16)
    write_dicom(d / "zero.dicom", px, bits_stored=12, PixelSpacing=[0, 0])
    write_dicom(d / "zero_pixel_imager_ok.dicom", px, bits_stored=12, PixelSpacing=[0, 0],
                ImagerPixelSpacing=[0.139, 0.139])
    write_dicom(d / "known.dicom", px, bits_stored=12, PixelSpacing=[0.2, 0.2])
    out = tmp_path / "out"
    assert prepare_cxr(["--dicom-dir", str(d), "--out", str(out), "--size", "64", "--workers", "1"]) == 0
    meta = {r["image_id"]: r["pixel_spacing_mm"] for r in _rows(out / "meta.csv")}
    assert meta == {"known": "0.2", "zero": "", "zero_pixel_imager_ok": "0.139"}


def test_evaluate_warns_when_the_boxes_look_like_another_frame(tmp_path, capsys):
    from detx.core.predictions import Predictions
    from detx.core.submission import write_submission

    rng = np.random.default_rng(0)
    boxes = {f"im{k}": rng.uniform(0, 1000, 2).round() for k in range(12)}
    gt = tmp_path / "train.csv"
    gt.write_text(HEADER + "".join(f"{i},Cardiomegaly,3,R1,{x},{y},{x + 900},{y + 800}\n" for i, (x, y) in boxes.items()))
    original = {i: Predictions([[x, y, x + 900, y + 800]], [0.9], [3]) for i, (x, y) in boxes.items()}
    png = {i: Predictions(p.boxes / 10, p.scores, p.classes) for i, p in original.items()}  # a 10x smaller PNG frame
    out = tmp_path / "m.json"
    write_submission(tmp_path / "png.csv", png)
    assert _evaluate("--gt", gt, "--pred", tmp_path / "png.csv", "--out", out) == 0
    text = capsys.readouterr().out
    px = max(x for x, _ in boxes.values()) / 10 + 90
    py = max(y for _, y in boxes.values()) / 10 + 80
    gx, gy = 10 * px, 10 * py
    assert (f"WARNING: every predicted box lies within 0..{px:.0f} x 0..{py:.0f} px, under half the ground truth's "
            f"extent (0..{gx:.0f} x 0..{gy:.0f})") in text and "PNG pixels of a prepared dataset" in text
    assert json.loads(out.read_text())["frame_warning"].startswith("every predicted box lies within")
    write_submission(tmp_path / "orig.csv", original)
    assert _evaluate("--gt", gt, "--pred", tmp_path / "orig.csv", "--out", out) == 0
    assert "another frame" not in capsys.readouterr().out
    assert json.loads(out.read_text())["frame_warning"] is None
