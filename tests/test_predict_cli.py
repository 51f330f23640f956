"""tools/predict.py and tools/fit_classifier.py end to end on a random-init tiny checkpoint, and their bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import load_script

from detx.core.predictions import Predictions
from detx.core.submission import read_submission, write_submission

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _tool(name):
    return load_script(f"tools/{name}.py")


predict_tool = _tool("predict")
fit_tool = _tool("fit_classifier")


def _predict(*argv) -> int:
    return predict_tool.main(predict_tool.parse_args(["--quiet"] + [str(a) for a in argv]))


def _noise(h, w, seed):
    g = (np.random.default_rng(seed).random((h // 8, w // 8)) * 255).astype(np.uint8)
    return np.kron(g, np.ones((8, 8), np.uint8))


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    """Three PNGs (256x192) with a meta.csv beside the folder giving original sizes 10x larger."""
    root = tmp_path_factory.mktemp("pngs")
    d = root / "images"
    d.mkdir()
    for k in range(3):
        cv2.imwrite(str(d / f"im{k}.png"), _noise(256, 192, k))
    (root / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\n"
                                   + "".join(f"im{k},1920,2560,192,256\n" for k in range(3)))
    return d


def test_help_runs_as_a_script():
    for tool in ("predict", "fit_classifier"):
        r = subprocess.run([sys.executable, f"tools/{tool}.py", "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout


def test_config_overrides_are_split_from_list_options():
    args = predict_tool.parse_args(["--config-file", "c.yaml", "--weights", "a.pth", "b.pth", "--input", "x",
                                    "--out", "o.csv", "--tta", "hflip", "MODEL.DEVICE", "cpu"])
    assert args.weights == ["a.pth", "b.pth"] and args.tta == ["hflip"] and args.opts == ["MODEL.DEVICE", "cpu"]


def test_submission_round_trip_in_original_pixels(tiny_random_checkpoint, png_dir, tmp_path):
    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedPredictor, collect_inputs, predict_all

    cfg_file, weights = tiny_random_checkpoint
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--out", out,
                    "--batch-size", 2) == 0
    sub = read_submission(out, num_classes=15)
    assert list(sub) == ["im0", "im1", "im2"]
    # the same model called directly
    inputs = collect_inputs(png_dir)
    run = predict_all([BatchedPredictor(get_detx_cfg(cfg_file, []), weights)], inputs.images, batch_size=3,
                      progress=False)
    for image_id, direct in run.sets[0].items():
        got = sub[image_id]
        finding = got.classes < 14
        assert (got.classes == 14).sum() == 1
        order = np.argsort(-direct.scores, kind="stable")
        np.testing.assert_allclose(got.boxes[finding], direct.boxes[order], atol=0.1)
        np.testing.assert_allclose(got.scores[finding], direct.scores[order], atol=1e-5)
        np.testing.assert_array_equal(got.classes[finding], direct.classes[order])
        assert got.boxes[finding].max() > 192 * 2  # original pixels (1920 x 2560), not PNG pixels
        p_abn = direct.scores.max()  # default rule: max
        assert got.scores[~finding][0] == pytest.approx(1 - p_abn, abs=1e-5)
    cls = (tmp_path / "sub.classification.csv").read_text().splitlines()
    assert cls[0].startswith("image_id,p_abnormal,label,status,p_Aortic enlargement") and len(cls) == 4


def test_identical_weights_fuse_to_the_single_model(tiny_random_checkpoint, png_dir, tmp_path):
    cfg_file, weights = tiny_random_checkpoint
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--out",
                    tmp_path / "one.csv") == 0
    assert _predict("--config-file", cfg_file, "--weights", weights, weights, "--input", png_dir, "--out",
                    tmp_path / "two.csv") == 0
    one, two = read_submission(tmp_path / "one.csv"), read_submission(tmp_path / "two.csv")
    for image_id in one:
        a, b = one[image_id], two[image_id]
        oa = np.lexsort((a.boxes[:, 0], a.scores.round(4), a.classes))
        ob = np.lexsort((b.boxes[:, 0], b.scores.round(4), b.classes))
        np.testing.assert_array_equal(a.classes[oa], b.classes[ob])
        np.testing.assert_allclose(a.scores[oa], b.scores[ob], atol=1e-5)
        np.testing.assert_allclose(a.boxes[oa], b.boxes[ob], atol=0.05)


def test_dicom_folder_every_row_and_unreadable_file(tiny_random_checkpoint, tmp_path, capsys):
    from detx.synthetic.generator import write_dicom

    cfg_file, weights = tiny_random_checkpoint
    d = tmp_path / "dicoms"
    d.mkdir()
    sizes = {"a": (300, 200), "b": (180, 240), "c": (256, 256)}
    write_dicom(d / "a.dicom", _noise(200, 300, 1).astype(np.uint16) * 16)
    write_dicom(d / "b.dcm", _noise(240, 180, 2).astype(np.uint16) * 16)
    write_dicom(d / "c", _noise(256, 256, 3).astype(np.uint16) * 16)
    (d / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", d, "--out", out,
                    "--tta", "hflip", "--batch-size", 3) == 0
    assert "broken" in capsys.readouterr().err
    sub = read_submission(out, num_classes=15)
    assert sorted(sub) == ["a", "b", "broken", "c"]
    broken = sub["broken"]
    assert broken.classes.tolist() == [14] and broken.scores.tolist() == [1.0]
    np.testing.assert_array_equal(broken.boxes, [[0, 0, 1, 1]])
    for image_id, (w, h) in sizes.items():
        p = sub[image_id]
        assert (p.classes == 14).sum() == 1 and len(p) > 1
        finding = p.boxes[p.classes < 14]
        assert finding[:, [0, 2]].max() <= w + 1e-6 and finding[:, [1, 3]].max() <= h + 1e-6
    # --strict: non-zero exit and no submission
    out2 = tmp_path / "strict.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", d, "--out", out2, "--strict") == 1
    assert not out2.exists()


def test_spinexr_no_finding_id_is_7(tmp_path, png_dir):
    from conftest import TINY_CONFIG, save_random_checkpoint

    weights = save_random_checkpoint(tmp_path, "spine", ["MODEL.ROI_HEADS.NUM_CLASSES", "7"])
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", TINY_CONFIG, "--weights", weights, "--input", png_dir, "--out", out,
                    "MODEL.ROI_HEADS.NUM_CLASSES", "7") == 0
    sub = read_submission(out, num_classes=8)
    for p in sub.values():
        assert (p.classes == 7).sum() == 1 and p.classes.max() == 7
    assert "p_Osteophytes" in (tmp_path / "sub.classification.csv").read_text().splitlines()[0]


def test_classifier_csv_and_two_class_filter(tiny_random_checkpoint, png_dir, tmp_path):
    cfg_file, weights = tiny_random_checkpoint
    probs = tmp_path / "p.csv"
    probs.write_text("image_id,p_abnormal\nim0,0.02\nim1,0.5\nim2,0.99\n")
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--out", out,
                    "--classifier-csv", probs, "--nofinding-low", 0.1, "--nofinding-high", 0.9) == 0
    lines = (tmp_path / "sub.classification.csv").read_text().splitlines()
    assert lines[1].startswith("im0,0.02,0,ok,") and lines[3].startswith("im2,0.99,1,ok,")
    base = tmp_path / "base.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--out", base) == 0
    sub, ref = read_submission(out), read_submission(base)
    assert sub["im0"].classes.tolist() == [14] and sub["im0"].scores.tolist() == [1.0]  # below low
    mid, mid_ref = sub["im1"], ref["im1"]  # between: confidences times P(abnormal)
    np.testing.assert_allclose(mid.scores[mid.classes < 14], mid_ref.scores[mid_ref.classes < 14] * 0.5, atol=2e-6)
    assert mid.scores[mid.classes == 14] == pytest.approx([0.5])
    high, high_ref = sub["im2"], ref["im2"]  # above high: boxes untouched
    np.testing.assert_array_equal(high.boxes[high.classes < 14], high_ref.boxes[high_ref.classes < 14])
    np.testing.assert_array_equal(high.scores[high.classes < 14], high_ref.scores[high_ref.classes < 14])
    assert high.scores[high.classes == 14] == pytest.approx([0.01])


@pytest.mark.parametrize("content, message", [
    ("image_id,p_abnormal\nim0,0.2\nim1,0.3\n", "no probability for 1 image"),
    ("image_id,p_abnormal\nim0,0.2\nim1,1.3\nim2,0.1\n", "not a number in [0, 1]"),
])
def test_bad_classifier_csv(tiny_random_checkpoint, png_dir, tmp_path, capsys, content, message):
    cfg_file, weights = tiny_random_checkpoint
    probs = tmp_path / "p.csv"
    probs.write_text(content)
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--out", out,
                    "--classifier-csv", probs) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_bad_inputs_exit_2(tiny_random_checkpoint, png_dir, tmp_path, capsys):
    from conftest import save_random_checkpoint

    cfg_file, weights = tiny_random_checkpoint
    out = tmp_path / "sub.csv"
    base = ["--config-file", cfg_file, "--input", png_dir, "--out", out]
    assert _predict(*base, "--weights", tmp_path / "nope.pth") == 2
    assert "nope.pth does not exist" in capsys.readouterr().err
    three = save_random_checkpoint(tmp_path, "three", ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert _predict(*base, "--weights", three) == 2
    assert "trained for 3 classes" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", empty, "--out", out) == 2
    assert "no DICOM" in capsys.readouterr().err
    assert _predict(*base, "--weights", weights, "--nofinding-low", 0.5, "--nofinding-high", 0.2) == 2
    assert _predict(*base, "--weights", weights, "--model-weights", 1, 2) == 2
    assert not out.exists()


def test_interrupted_write_leaves_no_partial_csv(tmp_path, monkeypatch):
    import detx.core.submission as submission

    out = tmp_path / "sub.csv"
    out.write_text("previous\n")
    calls = []

    def boom(pred, digits=6):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return "14 1 0 0 1 1"

    monkeypatch.setattr(submission, "format_prediction_string", boom)
    with pytest.raises(KeyboardInterrupt):
        write_submission(out, {"a": Predictions(), "b": Predictions(), "c": Predictions()})
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


def test_fit_classifier_cli_and_predict_with_it(tiny_random_checkpoint, png_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt_rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    preds = {}
    for k in range(120):
        image_id = f"img{k}"
        abnormal = k % 2
        if abnormal:
            gt_rows.append(f"{image_id},Atelectasis,1,R1,10,10,50,50")
        else:
            gt_rows.append(f"{image_id},No finding,14,R1,,,,")
        s1 = rng.uniform(0.3, 0.7) if abnormal else rng.uniform(0.0, 0.3)
        preds[image_id] = Predictions([[10, 10, 50, 50], [0, 0, 30, 30], [0, 0, 1, 1]],
                                      [s1, rng.uniform(0.75, 0.95), 0.5], [1, 0, 14])
    gt = tmp_path / "train.csv"
    gt.write_text("\n".join(gt_rows) + "\n")
    pred = tmp_path / "val_submission.csv"
    write_submission(pred, preds)
    out = tmp_path / "classifier.json"
    assert fit_tool.main(fit_tool.get_parser().parse_args(["--pred", str(pred), "--gt", str(gt), "--out", str(out)])) == 0
    text = capsys.readouterr().out
    assert "120 images (60 abnormal)" in text and "max rule" in text
    from detx.inference.classifier import ImageClassifier

    clf = ImageClassifier.load(out)
    assert clf.kind == "logistic" and clf.num_classes == 14 and clf.metrics["auc"] > 0.95
    # a bad ground-truth path: exit 2
    assert fit_tool.main(fit_tool.get_parser().parse_args(["--pred", str(pred), "--gt", str(tmp_path / "x.csv"),
                                                          "--out", str(tmp_path / "c2.json")])) == 2
    # predict.py applies it: P(abnormal) in classification.csv is the classifier's, label at its threshold
    cfg_file, weights = tiny_random_checkpoint
    sub = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--out", sub,
                    "--classifier", out) == 0
    rows = read_submission(sub)
    p = clf.predict_proba([rows[i].select(rows[i].classes < 14) for i in rows])
    got = np.array([1 - rows[i].scores[rows[i].classes == 14][0] for i in rows])
    np.testing.assert_allclose(got, p, atol=1e-5)


def test_prepared_json_and_dicom_folder_agree_with_overlays(tiny_random_checkpoint, prepared_cxr_dir,
                                                           synthetic_cxr_dir, tmp_path):
    """The same images as prepared PNGs (JSON input) and as DICOMs decoded at the prepared size give the
    same submission; overlays (with ground truth) are written for the labelled JSON."""
    import json
    import shutil

    cfg_file, weights = tiny_random_checkpoint
    size = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]
    coco = json.loads((prepared_cxr_dir / "annotations" / "val_fold0.json").read_text())
    ids = [im["image_uid"] for im in coco["images"]]
    out_json = tmp_path / "from_json.csv"
    vis = tmp_path / "vis"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input",
                    prepared_cxr_dir / "annotations" / "val_fold0.json", "--out", out_json, "--vis-dir", vis,
                    "--vis-num", 3, "--vis-score", 0.0, *size) == 0
    assert len(list(vis.glob("*.png"))) == 3
    dicoms = tmp_path / "dicoms"
    dicoms.mkdir()
    for image_id in ids:
        shutil.copy(synthetic_cxr_dir / "train" / f"{image_id}.dicom", dicoms)
    out_dcm = tmp_path / "from_dicom.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", dicoms, "--out", out_dcm,
                    "--dicom-size", 128, *size) == 0
    a, b = read_submission(out_json), read_submission(out_dcm)
    assert sorted(a) == sorted(b) == sorted(ids)
    for image_id in ids:
        np.testing.assert_array_equal(a[image_id].classes, b[image_id].classes)
        np.testing.assert_allclose(a[image_id].boxes, b[image_id].boxes, atol=1e-3)
        np.testing.assert_allclose(a[image_id].scores, b[image_id].scores, atol=1e-6)
    # original pixels: the JSON's orig sizes bound the boxes, and they exceed the 128 px PNGs
    orig = {im["image_uid"]: (im["orig_width"], im["orig_height"]) for im in coco["images"]}
    assert max(p.boxes[p.classes < 14].max() for p in a.values()) > 128
    for image_id, p in a.items():
        f = p.boxes[p.classes < 14]
        assert f[:, [0, 2]].max() <= orig[image_id][0] + 1e-6 and f[:, [1, 3]].max() <= orig[image_id][1] + 1e-6


def test_trained_model_predicts_and_evaluates(trained_tiny_dir, prepared_cxr_dir, tmp_path):
    """predict.py with a trained run's own config.yaml and model_final.pth, then the challenge metric on it."""
    from detx.workflows.evaluate import evaluate_files

    out = tmp_path / "sub.csv"
    gt = prepared_cxr_dir / "annotations" / "val_fold0.json"
    assert _predict("--config-file", trained_tiny_dir / "config.yaml", "--weights", trained_tiny_dir / "model_final.pth",
                    "--input", gt, "--out", out, "--tta", "hflip", "MODEL.DEVICE", "cpu") == 0
    metrics = evaluate_files(gt, out).metrics
    assert 0.0 <= metrics["mAP40"] <= 1.0 and metrics["problems"]["submission"] == 0


def test_cache_dir_resumes_without_predicting_again(tiny_random_checkpoint, png_dir, tmp_path, monkeypatch):
    from detx.inference.predictor import BatchedPredictor

    cfg_file, weights = tiny_random_checkpoint
    cache = tmp_path / "cache"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    common = ["--config-file", cfg_file, "--weights", weights, "--input", png_dir, "--tta", "hflip",
              "--cache-dir", cache, "--batch-size", 2]
    assert _predict(*common, "--out", first) == 0
    assert len(list(cache.glob("*/key.txt"))) == 2 and len(list(cache.glob("*/*.npz"))) == 4  # 2 views x 2 batches
    # one batch file lost (an interrupted run): only its images are predicted again
    victim = sorted(cache.glob("*/*.npz"))[0]
    victim.unlink()
    seen = []
    original = BatchedPredictor.__call__

    def counting(self, images, orig_sizes, view=None, fmt=None):
        seen.append(len(images))
        return original(self, images, orig_sizes, view, fmt)

    monkeypatch.setattr(BatchedPredictor, "__call__", counting)
    assert _predict(*common, "--out", second) == 0
    assert 0 < sum(seen) < 2 * 3  # fewer than all 3 images x 2 views
    assert first.read_text() == second.read_text()


def test_uid_named_dicoms_in_nested_folders_predict_with_full_ids(tiny_random_checkpoint, tmp_path):
    from detx.synthetic import write_dicom

    cfg_file, weights = tiny_random_checkpoint
    uids = ["1.2.840.113619.2.55.3.604688.12", "1.3.6.1.4.1.9590.100.1.2.7"]
    rng = np.random.default_rng(0)
    for k, uid in enumerate(uids):
        write_dicom(tmp_path / "export" / f"PAT{k}" / "SER" / uid, rng.integers(0, 4096, (90, 70)).astype(np.uint16))
    (tmp_path / "export" / "README").write_text("not an image")
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", tmp_path / "export", "--out", out,
                    "--dicom-size", 64) == 0
    sub = read_submission(out)
    assert sorted(sub) == sorted(uids)  # '.12' is part of the id, not a suffix


def test_dicoms_decode_at_the_trained_size_and_a_mismatch_warns(trained_tiny_dir, prepared_cxr_dir, tmp_path,
                                                                 caplog):
    """The trained config records the prepared size (DETX.IMAGE_SIZE 128), predict decodes DICOMs at it, and a
    prepared input of another size or an explicit --dicom-size that differs is warned about."""
    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import collect_inputs
    from detx.workflows.predict import decode_size

    cfg = get_detx_cfg(str(trained_tiny_dir / "config.yaml"))
    assert cfg.DETX.IMAGE_SIZE == 128
    dicoms = collect_inputs(prepared_cxr_dir / "annotations" / "val_fold0.json")
    assert dicoms.size == 128
    with caplog.at_level("WARNING", logger="detx.workflows.predict"):
        assert decode_size([cfg], None, dicoms) == 128
    assert not caplog.records
    dicoms.size = 256  # as if the input had been prepared at another size
    with caplog.at_level("WARNING", logger="detx.workflows.predict"):
        assert decode_size([cfg], 96, dicoms) == 96
    text = caplog.text
    assert "--dicom-size 96 but the model was trained on 128" in text and "prepared at --size 256" in text
    old = get_detx_cfg(str(trained_tiny_dir / "config.yaml"), ["DETX.IMAGE_SIZE", "0", "INPUT.MAX_SIZE_TEST", "160"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="detx.workflows.predict"):
        assert decode_size([old], None, dicoms) == 160
    assert "records no DETX.IMAGE_SIZE" in caplog.text
