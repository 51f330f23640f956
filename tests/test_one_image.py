"""One image, one answer: the Python API (detx.XrayPredictor) against tools/predict.py on the same image, as a single
file and inside a folder (the batch path), for DICOM, PNG and array input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_CONFIG, load_script, save_random_checkpoint

from detx.synthetic.generator import write_dicom

predict_tool = load_script("tools/predict.py")
CLS_TINY = str(Path(__file__).resolve().parents[1] / "configs/quick_schedules/vindr_cxr_cls_tiny.yaml")
CPU = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_image_models")
    return save_random_checkpoint(d, "det"), save_random_checkpoint(d, "cls", config=CLS_TINY)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_image_inputs")
    rng = np.random.default_rng(0)
    px = (rng.random((150, 120)) * 3000 + 500).astype(np.uint16)
    px[40:90, 30:70] = 3900
    write_dicom(d / "dcm" / "img_a.dicom", px, bits_stored=12)
    png = np.clip(px / 16, 0, 255).astype(np.uint8)
    (d / "png").mkdir()
    cv2.imwrite(str(d / "png" / "img_b.png"), png)
    return d / "dcm" / "img_a.dicom", d / "png" / "img_b.png"


def _run_tool(capsys, *args) -> tuple[int, str]:
    code = predict_tool.main(predict_tool.parse_args([*map(str, args), *CPU]))
    return code, capsys.readouterr().out


def _row(path: Path, image_id: str) -> list[float]:
    with open(path) as f:
        return [float(v) for r in csv.DictReader(f) if r["image_id"] == image_id for v in r["PredictionString"].split()]


def test_api_equals_predict_tool(models, images, tmp_path, capsys):
    from detx import XrayPredictor

    det, cls = models
    dcm, png = images
    model = XrayPredictor(detector_config=TINY_CONFIG, detector_weights=det, classifier_config=CLS_TINY,
                          classifier_weights=cls, opts=CPU)
    for image in (dcm, png):
        answer = model.predict(image)
        image_id = image.stem
        # a PNG without meta.csv has no original size: the tool refuses it unless told the boxes stay in PNG pixels
        frame = ["--png-frame"] if image.suffix == ".png" else []
        # the command line on the one file: the same sentence, the same JSON answer
        code, out = _run_tool(capsys, "--config-file", TINY_CONFIG, "--weights", det, "--classifier-config", CLS_TINY,
                              "--classifier-weights", cls, "--input", image, "--json",
                              "--out", tmp_path / f"{image_id}_one.csv", *frame)
        assert code == 0
        sentence, js = out.strip().splitlines()[-2:]
        assert sentence == answer.sentence() and sentence.startswith(f"X-ray {image_id} is ")
        assert json.loads(js) == json.loads(json.dumps(answer.to_dict()))
        # the batch path over a folder holding that file: its submission row is the answer's boxes + No finding
        folder = tmp_path / f"in_{image_id}"
        folder.mkdir()
        shutil.copy(image, folder / image.name)
        code, _ = _run_tool(capsys, "--config-file", TINY_CONFIG, "--weights", det, "--classifier-config", CLS_TINY,
                            "--classifier-weights", cls, "--input", folder, "--out", tmp_path / f"{image_id}.csv",
                            *frame)
        assert code == 0
        row = np.array(_row(tmp_path / f"{image_id}.csv", image_id)).reshape(-1, 6)
        assert len(answer.findings) > 0  # the random detector does draw boxes, so the comparison means something
        boxes = row[row[:, 0] != 14]
        order = np.lexsort((-boxes[:, 1],))
        got = np.array([[f.class_id, f.score, *f.box] for f in answer.findings])
        np.testing.assert_allclose(got, boxes[order], rtol=1e-5, atol=1e-6)  # the CSV keeps 6 digits
        assert row[row[:, 0] == 14][0, 1] == pytest.approx(answer.p_no_finding, abs=1e-6)
        assert answer.p_no_finding == pytest.approx(1 - answer.p_abnormal)
        with open(tmp_path / f"{image_id}.classification.csv") as f:  # <out stem>.classification.csv
            cls_row = next(r for r in csv.DictReader(f) if r["image_id"] == image_id)
        assert float(cls_row["p_abnormal"]) == pytest.approx(answer.p_abnormal, rel=1e-5)
        assert [float(cls_row[f"p_{c}"]) for c in answer.class_probs] == pytest.approx(
            list(answer.class_probs.values()), rel=1e-5)
    # boxes in original pixels: the DICOM is 120 x 150
    answer = model.predict(dcm)
    assert (answer.width, answer.height) == (120, 150)
    assert all(0 <= f.box[0] <= f.box[2] <= 120 and 0 <= f.box[1] <= f.box[3] <= 150 for f in answer.findings)
    # an array: the same pixels as the PNG give the same answer; a smaller array with orig_size maps back
    gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    from_array = model.predict(gray, image_id="img_b")
    assert json.dumps({**from_array.to_dict(), "source": ""}) == json.dumps({**model.predict(png).to_dict(),
                                                                             "source": ""})
    # the MURA seed's sentence
    from detx import predict_binary

    assert predict_binary(model, "XR_HUMERUS", png).startswith("X-ray of XR_HUMERUS is ")


def test_classifier_only_and_bad_input(models, images, tmp_path, capsys):
    from detx import XrayPredictor

    _, cls = models
    dcm, _ = images
    code, out = _run_tool(capsys, "--classifier-config", CLS_TINY, "--classifier-weights", cls, "--input", dcm)
    assert code == 0 and "img_a is " in out and "P(abnormal)" in out
    model = XrayPredictor(classifier_config=CLS_TINY, classifier_weights=cls, opts=CPU)
    answer = model.predict(dcm)
    assert out.strip().splitlines()[-1] == answer.sentence()
    assert answer.findings == [] and len(answer.class_probs) == 14
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    code, _ = _run_tool(capsys, "--classifier-config", CLS_TINY, "--classifier-weights", cls, "--input", bad)
    assert code == 2
    with pytest.raises(Exception, match="expected H x W"):
        model.predict(np.zeros((4, 4, 2), np.uint8))


def test_docs_example_runs_on_a_demo_shaped_folder(models, images, tmp_path):
    """The Python example of docs/one-image.md, run as written in a folder laid out as `make demo` leaves it (the
    demo's config.yaml / model_best.pth replaced by the tiny random checkpoints, to keep the test seconds long)."""
    import re
    import subprocess
    import sys

    det, cls = models
    dcm, _ = images
    demo = tmp_path / "output" / "demo"
    from detx.engine.config import get_detx_cfg

    for sub, cfg, w in (("train", TINY_CONFIG, det), ("cls_train", CLS_TINY, cls)):
        (demo / sub).mkdir(parents=True)
        (demo / sub / "config.yaml").write_text(get_detx_cfg(cfg, CPU).dump())  # resolved, as train_net writes it
        shutil.copy(w, demo / sub / "model_best.pth")
    (demo / "raw" / "test").mkdir(parents=True)
    shutil.copy(dcm, demo / "raw" / "test" / dcm.name)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "one-image.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith("X-ray img_a is ")
