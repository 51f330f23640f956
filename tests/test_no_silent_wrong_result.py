"""Issue 11: every tool refuses, repairs or says so; one test per case, through the CLI where the user meets it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import load_script

from detx.core.predictions import Predictions
from detx.core.submission import read_submission, write_submission
from detx.synthetic import write_dicom

ROOT = Path(__file__).resolve().parents[1]
HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


prepare_cxr = load_script("datasets/prepare_vindr_cxr.py").main
prepare_spine = load_script("datasets/prepare_spinexr.py").main
evaluate_tool = load_script("tools/evaluate.py")
fit_tool = load_script("tools/fit_classifier.py")
predict_tool = load_script("tools/predict.py")
train_tool = load_script("tools/train_net.py")


def _evaluate(*args) -> int:
    return evaluate_tool.main(evaluate_tool.get_parser().parse_args([str(a) for a in args]))


def _fit(*args) -> int:
    return fit_tool.main(fit_tool.get_parser().parse_args([str(a) for a in args]))


def _predict(*args) -> int:
    return predict_tool.main(predict_tool.parse_args(["--quiet", *[str(a) for a in args]]))


def _dicoms(folder: Path, names, size=(80, 100), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        write_dicom(folder / f"{name}.dicom", rng.integers(0, 4096, size).astype(np.uint16), bits_stored=12)
    return folder


def _small_dataset(tmp_path: Path, n: int = 4) -> tuple[Path, Path]:
    names = [f"im{k}" for k in range(n)]
    d = _dicoms(tmp_path / "dicom", names)
    rows = "".join(f"{i},Cardiomegaly,3,R1,20,30,60,70\n" if k % 2 else f"{i},No finding,14,R1,,,,\n"
                   for k, i in enumerate(names))
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + rows)
    return csv, d


# 1 ------------------------------------------------------------------------------------ one run per folder

def test_a_second_prepare_into_a_folder_in_use_stops_at_once(tmp_path, capsys):
    csv, d = _small_dataset(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom detx.core.io import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.monotonic()
        rc = prepare_cxr(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "64",
                          "--folds", "0", "--workers", "1", "--no-report"])
        assert rc == 2 and time.monotonic() - t < 10  # at once, not after waiting
        err = capsys.readouterr().err
        assert f"output folder {out} is in use by another detx run (pid {holder.pid}" in err
        assert not (out / "images").exists() or not list((out / "images").iterdir())
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder: the same command now runs
    assert prepare_cxr(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "64", "--folds", "0",
                        "--workers", "1", "--no-report"]) == 0


# 2 ------------------------------------------------------------------------------------ fit_classifier

def _fit_files(tmp_path: Path, n: int = 40):
    gt_rows, preds = [], {}
    rng = np.random.default_rng(0)
    for k in range(n):
        i = f"img{k}"
        if k % 2:
            gt_rows.append(f"{i},Atelectasis,1,R1,10,10,50,50\n")
        else:
            gt_rows.append(f"{i},No finding,14,R1,,,,\n")
        preds[i] = Predictions([[10, 10, 50, 50]], [rng.uniform(0.5, 0.9) if k % 2 else rng.uniform(0, 0.4)], [1])
    gt = tmp_path / "train.csv"
    gt.write_text(HEADER + "".join(gt_rows))
    return gt, preds


def test_fit_classifier_fits_only_on_shared_images_and_refuses_none(tmp_path, capsys):
    gt, preds = _fit_files(tmp_path)
    part = tmp_path / "part.csv"
    write_submission(part, {i: p for i, p in preds.items() if int(i[3:]) < 20})  # 20 of 40 images
    out = tmp_path / "clf.json"
    assert _fit("--pred", part, "--gt", gt, "--out", out) == 0
    text = capsys.readouterr().out
    assert "20 images (10 abnormal)" in text and "20 of 40 ground-truth images predicted, 20 missing" in text
    assert json.loads(out.read_text())["metrics"]["num_images"] == 20  # not 40 with 20 invented as empty
    other = tmp_path / "other.csv"
    write_submission(other, {f"x{k}": Predictions() for k in range(5)})
    assert _fit("--pred", other, "--gt", gt, "--out", tmp_path / "c2.json") == 2
    assert "share no image" in capsys.readouterr().err
    header_only = tmp_path / "empty.csv"
    header_only.write_text("image_id,PredictionString\n")
    assert _fit("--pred", header_only, "--gt", gt, "--out", tmp_path / "c3.json") == 2
    few = tmp_path / "few.csv"
    write_submission(few, {i: p for i, p in preds.items() if int(i[3:]) < 4})  # 2 abnormal, 2 normal
    assert _fit("--pred", few, "--gt", gt, "--out", tmp_path / "c4.json") == 2
    assert "too few images of a label" in capsys.readouterr().err
    assert not any((tmp_path / f"c{k}.json").exists() for k in (2, 3, 4))


# 3 ------------------------------------------------------------------------------------ evaluate

def test_evaluate_refuses_disjoint_or_unlabelled_inputs_and_reports_partial_coverage(tmp_path, capsys):
    gt, preds = _fit_files(tmp_path, n=10)
    disjoint = tmp_path / "disjoint.csv"
    write_submission(disjoint, {f"x{k}": Predictions([[0, 0, 1, 1]], [0.5], [14]) for k in range(3)})
    assert _evaluate("--gt", gt, "--pred", disjoint) == 2
    assert "shares no image with the ground truth" in capsys.readouterr().err
    # an unlabelled test split (prepared without --csv) has nothing to score against
    d = _dicoms(tmp_path / "test_dicoms", ["t0", "t1"])
    assert prepare_cxr(["--dicom-dir", str(d), "--out", str(tmp_path / "test"), "--size", "64", "--workers", "1"]) == 0
    test_sub = tmp_path / "test_sub.csv"
    write_submission(test_sub, {"t0": Predictions([[0, 0, 1, 1]], [1.0], [14]), "t1": Predictions()})
    assert _evaluate("--gt", tmp_path / "test" / "annotations" / "test.json", "--pred", test_sub) == 2
    assert "has no labels" in capsys.readouterr().err
    # partial overlap: scored by the Kaggle rule, the coverage beside every number and in the JSON
    part = tmp_path / "part.csv"
    write_submission(part, {i: p for i, p in preds.items() if int(i[3:]) < 6})
    out = tmp_path / "m.json"
    assert _evaluate("--gt", gt, "--pred", part, "--out", out) == 0
    text = capsys.readouterr().out
    assert "WARNING: the submission covers 6 of 10 ground-truth images (4 missing" in text
    assert text.count("[coverage: 6 of 10 images predicted") >= 3
    m = json.loads(out.read_text())
    assert m["coverage"] == {"ground_truth_images": 10, "predicted_images": 6, "shared": 6, "missing": 4,
                             "extra": 0, "fraction": 0.6}
    assert _evaluate("--gt", gt, "--pred", part, "--strict") == 1  # strict: a missing image stops the run


# 4 ------------------------------------------------------------------------------------ wrong CSVs

def test_wrong_annotation_csvs_are_refused_with_the_columns_named(tmp_path, capsys):
    csv, d = _small_dataset(tmp_path)
    no_ymax = tmp_path / "no_ymax.csv"
    no_ymax.write_text(csv.read_text().replace(",y_max\n", "\n", 1).replace(",70\n", "\n"))
    common = ["--dicom-dir", str(d), "--size", "64", "--folds", "0", "--workers", "1", "--no-report"]
    assert prepare_cxr(["--csv", str(no_ymax), "--out", str(tmp_path / "o1"), *common]) == 2
    err = capsys.readouterr().err
    assert "needs the column(s) ['y_max']" in err and "no_ymax.csv" in err
    assert prepare_spine(["--csv", str(csv), "--out", str(tmp_path / "o2"), *common]) == 2
    assert "cannot be prepared as 'spinexr'" in capsys.readouterr().err
    spine = tmp_path / "spine.csv"
    spine.write_text("image_id,series_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n"
                     + "".join(f"im{k},se{k},R1,Osteophytes,10,10,40,40\n" for k in range(4)))
    folds = ["--dicom-dir", str(d), "--size", "64", "--folds", "2", "--workers", "1", "--no-report"]
    assert prepare_spine(["--csv", str(spine), "--out", str(tmp_path / "o3"), *folds]) == 2
    assert "no study_id column" in capsys.readouterr().err and not (tmp_path / "o3" / "annotations").exists()
    assert prepare_spine(["--csv", str(spine), "--out", str(tmp_path / "o4"), *folds, "--no-study-groups"]) == 0


# 5 ------------------------------------------------------------------------------------ damaged PNGs

def test_a_damaged_png_is_converted_again_and_the_loader_names_it(tmp_path, capsys):
    csv, d = _small_dataset(tmp_path)
    out = tmp_path / "out"
    args = ["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "64", "--folds", "0", "--workers",
            "1", "--no-report"]
    assert prepare_cxr(args) == 0
    png = out / "images" / "im1.png"
    good = png.read_bytes()
    png.write_bytes(good[: len(good) // 2])  # truncated
    flipped = out / "images" / "im2.png"
    data = bytearray(flipped.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    flipped.write_bytes(bytes(data))
    capsys.readouterr()
    assert prepare_cxr(args) == 0
    assert "converted 2, already done 2" in capsys.readouterr().out
    assert png.read_bytes() == good and cv2.imread(str(flipped)) is not None

    from detx.core.prepared import PreparedDatasetError
    from detx.engine.config import get_detx_cfg
    from detx.engine.mapper import DetxDatasetMapper

    png.write_bytes(good[:100])
    mapper = DetxDatasetMapper(get_detx_cfg(str(ROOT / "configs/quick_schedules/vindr_cxr_tiny.yaml")), is_train=True)
    with pytest.raises(PreparedDatasetError, match=rf"cannot read training image {png}"):
        mapper({"file_name": str(png), "image_id": 1, "height": 51, "width": 64, "annotations": []})


# 6 ------------------------------------------------------------------------------------ stale cache

@pytest.mark.slow
def test_prediction_cache_is_not_served_for_changed_pixels(tiny_random_checkpoint, tmp_path):
    cfg_file, weights = tiny_random_checkpoint
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        cv2.imwrite(str(folder / f"im{k}.png"), rng.integers(0, 255, (128, 96, 3), dtype=np.uint8))
    cache = tmp_path / "cache"
    first = tmp_path / "a.csv"
    # the PNGs are the originals here (no meta.csv): --png-frame accepts their own size
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", folder, "--out", first,
                    "--cache-dir", cache, "--png-frame") == 0
    # the same image ids, re-prepared with other pixels at another size
    for k in range(3):
        cv2.imwrite(str(folder / f"im{k}.png"), rng.integers(0, 255, (200, 150, 3), dtype=np.uint8))
    cached, fresh = tmp_path / "b.csv", tmp_path / "c.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", folder, "--out", cached,
                    "--cache-dir", cache, "--png-frame") == 0
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", folder, "--out", fresh,
                    "--png-frame") == 0
    assert cached.read_text() == fresh.read_text() != first.read_text()


# 7 ------------------------------------------------------------------------------------ unreadable test images

@pytest.mark.slow
def test_every_test_image_gets_a_row_even_when_preparation_could_not_read_it(tiny_random_checkpoint, tmp_path,
                                                                              caplog):
    d = _dicoms(tmp_path / "test", ["t0", "t1", "t2"])
    (d / "broken.dicom").write_bytes(b"\0" * 300)
    out = tmp_path / "prepared"
    assert prepare_cxr(["--dicom-dir", str(d), "--out", str(out), "--size", "64", "--workers", "1"]) == 0
    info = json.loads((out / "annotations" / "test.json").read_text())["info"]
    assert list(info["unreadable"]) == ["broken"]
    cfg_file, weights = tiny_random_checkpoint
    for name, source in (("json", out / "annotations" / "test.json"), ("pngs", out / "images"), ("dicoms", d)):
        sub_path = tmp_path / f"{name}.csv"
        with caplog.at_level("WARNING"):
            assert _predict("--config-file", cfg_file, "--weights", weights, "--input", source, "--out", sub_path,
                            "--dicom-size", 64) == 0
        sub = read_submission(sub_path)
        assert sorted(sub) == ["broken", "t0", "t1", "t2"], name
        assert sub["broken"].classes.tolist() == [14] and sub["broken"].scores.tolist() == [1.0]
        assert "broken" in caplog.text


# 8, 10a, 10g, 10h ------------------------------------------------------------------ training into a used folder

@pytest.mark.slow
def test_training_refuses_a_finished_output_dir_without_resume(trained_tiny_dir, prepared_cxr_dir, tmp_path):
    from conftest import TINY_CONFIG, TRAINED_TINY_OPTS, run_train_net

    before = (trained_tiny_dir / "model_final.pth").read_bytes()
    proc = run_train_net("--config-file", TINY_CONFIG, "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR",
                         trained_tiny_dir, *TRAINED_TINY_OPTS, check=False)
    assert proc.returncode == 2
    assert "already holds a training run" in proc.stderr and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert (trained_tiny_dir / "model_final.pth").read_bytes() == before
    # --resume given after the overrides is a flag, not an odd override
    args = train_tool.parse_args(["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path), "--resume"])
    assert args.resume and args.opts == ["OUTPUT_DIR", str(tmp_path)]
    # the closing summary names the best checkpoint; log.txt has no terminal colour codes
    stdout = (trained_tiny_dir / "train_stdout.txt").read_text()
    assert "training finished: best vinbigdata/mAP40" in stdout and "model_best.pth" in stdout
    assert "\x1b[" not in (trained_tiny_dir / "log.txt").read_text()


def test_overwrite_clears_only_the_earlier_run(tmp_path):
    from detx.engine.config import get_detx_cfg
    from detx.engine.trainer import TrainingSetupError, check_output_dir, clear_output_dir

    for name in ("model_final.pth", "model_0000003.pth", "last_checkpoint", "metrics.json", "model_best.pth",
                 "model_best.json", "events.out.tfevents.1.host", "curves.png", "config.yaml", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "inference").mkdir()
    cfg = get_detx_cfg(None, ["OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(TrainingSetupError, match="already holds a training run"):
        check_output_dir(cfg)
    check_output_dir(cfg, resume=True)
    check_output_dir(cfg, overwrite=True)
    with pytest.raises(TrainingSetupError, match="not both"):
        check_output_dir(cfg, resume=True, overwrite=True)
    clear_output_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "notes.txt"]
    check_output_dir(cfg)  # nothing left to protect


# 9 ------------------------------------------------------------------------------------ umask

def test_prepared_files_follow_the_umask(tmp_path):
    csv, d = _small_dataset(tmp_path)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert prepare_cxr(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(out), "--size", "64", "--folds",
                            "2", "--workers", "1", "--no-report"]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".detx.lock")]
    assert len(files) > 8
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o644)}


# 10 ------------------------------------------------------------------------------------ smaller cases

@pytest.mark.parametrize("option, value, message", [
    ("--size", "3", "--size 3 is too small"), ("--iou-thr", "5", "--iou-thr 5.0 must be in (0, 1]"),
    ("--workers", "0", "--workers 0 must be at least 1"), ("--folds", "-1", "--folds -1 must be >= 0"),
])
def test_impossible_values_are_refused(tmp_path, capsys, option, value, message):
    csv, d = _small_dataset(tmp_path)
    rc = prepare_cxr(["--csv", str(csv), "--dicom-dir", str(d), "--out", str(tmp_path / "o"), option, value])
    assert rc == 2 and message in capsys.readouterr().err


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: list[int]) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _start_slow_prepare(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """prepare_vindr_cxr.py with 2 workers on 150 JPEG 2000 DICOMs (about 0.1 s each to decode), started in
    a process group of its own; returns once its fork server and workers run."""
    import pydicom

    y, x = np.mgrid[0:2000, 0:1600]
    px = ((np.sin(x / 37.0) * np.cos(y / 23.0) + 1) * 1500).astype(np.uint16)
    d = tmp_path / "dicom"
    write_dicom(d / "raw.dcm", px, bits_stored=12)
    ds = pydicom.dcmread(d / "raw.dcm")
    ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(d / "im0.dicom")
    (d / "raw.dcm").unlink()
    for k in range(1, 150):  # hard links: 150 files to decode, the disk space of one
        os.link(d / "im0.dicom", d / f"im{k}.dicom")
    cmd = [sys.executable, str(ROOT / "datasets/prepare_vindr_cxr.py"), "--dicom-dir", str(d), "--out",
           str(tmp_path / "out"), "--size", "512", "--workers", "2"]
    # as from a terminal: SIGINT at its default (a job started with & by a non-interactive shell, e.g. a CI script,
    # inherits it ignored, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 3:  # the fork server and its two workers
        time.sleep(0.2)
        workers = _descendants(proc.pid)
    assert len(workers) >= 3, "the worker pool did not start"
    time.sleep(1.0)
    return proc, workers


@pytest.mark.slow
def test_killing_the_prepare_parent_ends_its_workers(tmp_path):
    proc, workers = _start_slow_prepare(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # what the OOM killer does
    proc.wait()
    deadline = time.monotonic() + 15
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(workers) == []


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    proc, _ = _start_slow_prepare(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"


def test_demo_refuses_a_folder_made_with_other_settings(tmp_path):
    from detx.core.errors import InputError
    from detx.workflows.demo import SETTINGS_FILE, DemoSettings, check_settings

    out = tmp_path / "demo"
    check_settings(DemoSettings(out=out, n_train=8, folds=2))
    (out / "submission.csv").write_text("made with n_train 8")
    with pytest.raises(InputError, match=r"other settings \(n_train 8 -> 12\).*--fresh"):
        check_settings(DemoSettings(out=out, n_train=12, folds=2))
    check_settings(DemoSettings(out=out, n_train=8, folds=2))  # the same settings resume
    check_settings(DemoSettings(out=out, n_train=12, folds=2), fresh=True)
    assert not (out / "submission.csv").exists()
    assert json.loads((out / SETTINGS_FILE).read_text())["n_train"] == 12


def test_readme_states_the_real_default_of_workers():
    from detx.workflows.prepare import default_workers

    assert default_workers() == max(1, min(8, os.cpu_count() or 1))
    assert "| `--workers` | the CPU count, at most 8 |" in (ROOT / "docs" / "data-preparation.md").read_text()

