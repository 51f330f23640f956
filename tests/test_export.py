"""Exported models (TorchScript, ONNX) and multi-process prediction: the metadata inside the files, parity with the
eager models in original pixels, the README's pre/post-processing contract run without detx, predict --exported,
--num-gpus 2 on the CPU (byte-identical to one process, --cache-dir resuming) and the bad inputs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import CLS_TINY_CONFIG, load_script

from detx.core.classes import VINDR_CXR_CLASSES
from detx.core.submission import read_submission

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": "ts", "onnx": "onnx"}


def _tool(name):
    return load_script(f"tools/{name}.py")


export_tool, predict_tool = _tool("export"), _tool("predict")


def _export(*argv) -> int:
    return export_tool.main(export_tool.parse_args([str(a) for a in argv]))


def _predict(*argv) -> int:
    return predict_tool.main(predict_tool.parse_args(["--quiet"] + [str(a) for a in argv]))


def _noise(h, w, seed):
    g = (np.random.default_rng(seed).random((h // 8, w // 8)) * 255).astype(np.uint8)
    return np.kron(g, np.ones((8, 8), np.uint8))


def match(ref_boxes, ref_scores, ref_classes, boxes, scores, classes, box_tol=1.0, score_tol=1e-3):
    """Reference check of the parity rule: the same number of detections, and each reference detection has its own
    partner of the same class, score within score_tol and every corner within box_tol (greedy by score)."""
    assert len(ref_scores) == len(scores), (len(ref_scores), len(scores))
    free = np.ones(len(scores), bool)
    for j in np.argsort(-np.asarray(ref_scores), kind="stable"):
        ok = free & (classes == ref_classes[j]) & (np.abs(scores - ref_scores[j]) <= score_tol) \
            & (np.abs(boxes - ref_boxes[j]).max(axis=1) <= box_tol)
        assert ok.any(), f"no partner for detection {j}: class {ref_classes[j]} score {ref_scores[j]} {ref_boxes[j]}"
        free[np.flatnonzero(ok)[np.argmin(np.abs(boxes[ok] - ref_boxes[j]).max(axis=1))]] = False


# ------------------------------------------------------------------------------------------- fast

def test_unsupported_operator_is_named_from_exporter_and_runtime_messages():
    from detx.inference.export import unsupported_operators

    e = RuntimeError("Exporting the operator 'aten::kthvalue' to ONNX opset version 17 is not supported\n"
                     "Torch IR graph at exception: aten::conv2d aten::relu")
    assert unsupported_operators(e) == ["aten::kthvalue"]
    ort = RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                       "RoiAlign(16) node with name '/roi_heads/RoiAlign'")
    assert unsupported_operators(ort) == ["RoiAlign"]
    assert unsupported_operators(RuntimeError("something else")) == []


def test_metadata_round_trip_and_what_is_not_an_exported_model(tmp_path):
    from detx.engine.config import get_detx_cfg
    from detx.inference.export import ExportedModelInfo, NotExportedModelError, model_info, read_exported_info

    cfg = get_detx_cfg(CLS_TINY_CONFIG, ["MODEL.DEVICE", "cpu"])
    info = model_info(cfg, "torchscript", VINDR_CXR_CLASSES)
    back = ExportedModelInfo.from_json(info.to_json(), "x")
    assert back == info and back.kind == "classifier" and back.prob_names[0] == "abnormal"
    assert len(back.prob_names) == 15 and back.score_threshold is None
    assert json.loads(info.to_json())["input"]["layout"] == "CHW"

    checkpoint = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, checkpoint)
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    plain_ts = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(plain_ts))
    plain_onnx = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(plain_onnx), dynamo=False)
    for path, why in [(checkpoint, "PyTorch checkpoint"), (random_bytes, "neither a TorchScript nor an ONNX"),
                      (plain_ts, "TorchScript file without detx metadata"),
                      (plain_onnx, "ONNX file without detx metadata")]:
        with pytest.raises(NotExportedModelError, match=why):
            read_exported_info(path)


def test_merged_runs_are_keyed_in_input_order():
    from detx.core.predictions import Predictions
    from detx.inference.predictor import PredictionRun

    def p(v):
        return Predictions(np.full((1, 4), v, float), np.array([v / 10], np.float32), np.array([0]))

    a = PredictionRun([{"c": p(3), "a": p(1)}], ["m0:orig"], [1.0], {"c": (3, 3), "a": (1, 1)}, {}, ["a", "c"])
    b = PredictionRun([{"b": p(2)}], ["m0:orig"], [1.0], {"b": (2, 2)}, {"d": "broken"}, ["b", "d"])
    m = PredictionRun.merge([a, b], ["a", "b", "c", "d"])
    assert list(m.sets[0]) == ["a", "b", "c"] and list(m.orig_sizes) == ["a", "b", "c"]
    assert m.failures == {"d": "broken"} and m.order == ["a", "b", "c", "d"] and m.names == ["m0:orig"]


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    """Three PNGs of different shapes, with a meta.csv beside the folder giving original sizes 10x larger."""
    root = tmp_path_factory.mktemp("export_pngs")
    d = root / "images"
    d.mkdir()
    shapes = [(256, 192), (200, 160), (192, 256)]
    for k, (h, w) in enumerate(shapes):
        cv2.imwrite(str(d / f"im{k}.png"), _noise(h, w, k))
    (root / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\n" + "".join(
        f"im{k},{10 * w},{10 * h},{w},{h}\n" for k, (h, w) in enumerate(shapes)))
    return d


@pytest.fixture(scope="module")
def exported_det(tiny_random_checkpoint, tmp_path_factory):
    """The random-init tiny detector exported in both formats: format -> file."""
    cfg_file, weights = tiny_random_checkpoint
    out = tmp_path_factory.mktemp("exported_det")
    files = {}
    for fmt in FORMATS:
        files[fmt] = out / f"det.{SUFFIX[fmt]}"
        assert _export("--config-file", cfg_file, "--weights", weights, "--format", fmt, "--out", files[fmt],
                       "MODEL.DEVICE", "cpu") == 0
    return files


@pytest.fixture(scope="module")
def exported_cls(trained_cls_dir, tmp_path_factory):
    """The trained tiny image classifier exported in both formats: format -> file."""
    out = tmp_path_factory.mktemp("exported_cls")
    files = {}
    for fmt in FORMATS:
        files[fmt] = out / f"cls.{SUFFIX[fmt]}"
        assert _export("--config-file", trained_cls_dir / "config.yaml", "--weights",
                       trained_cls_dir / "model_final.pth", "--format", fmt, "--out", files[fmt]) == 0
    return files


# ------------------------------------------------------------------------------------------- export

@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_file_carries_the_metadata(exported_det, exported_cls, trained_cls_dir, fmt):
    from detx.inference.export import read_exported_info

    det, cls = exported_det[fmt], exported_cls[fmt]
    if fmt == "torchscript":  # readable with torch alone: the extra file detx.json
        extra = {"detx.json": ""}
        torch.jit.load(str(det), _extra_files=extra)
        raw = json.loads(extra["detx.json"])
    else:  # and with onnx alone: metadata_props["detx"]
        import onnx

        raw = json.loads({p.key: p.value for p in onnx.load(str(det)).metadata_props}["detx"])
    assert raw["kind"] == "detector" and raw["input_format"] == "BGR" and raw["format"] == fmt
    assert raw["class_names"] == list(VINDR_CXR_CLASSES)
    assert (raw["min_size_test"], raw["max_size_test"]) == (256, 256)
    assert raw["score_threshold"] == pytest.approx(0.001) and raw["detections_per_image"] == 100
    assert raw["output_names"] == ["boxes", "scores", "classes"] and raw["detx_version"]
    assert len(raw["pixel_mean"]) == 3 and raw["outputs"][0]["shape"] == ["N", 4]

    info = read_exported_info(cls)
    assert info.kind == "classifier" and info.prob_names == ["abnormal", *VINDR_CXR_CLASSES]
    assert info.image_size == 128 and info.min_size_test == 128  # DETX.IMAGE_SIZE from the training config
    assert info.output_names == ["probs"] and info.format == fmt


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_detector_parity_in_original_pixels(exported_det, tiny_random_checkpoint, png_dir, fmt):
    from detx.engine.config import get_detx_cfg
    from detx.inference.exported import ExportedPredictor
    from detx.inference.predictor import BatchedPredictor, collect_inputs, load_image
    from detx.inference.tta import parse_tta

    cfg_file, weights = tiny_random_checkpoint
    eager = BatchedPredictor(get_detx_cfg(cfg_file, ["MODEL.DEVICE", "cpu"]), weights)
    exported = ExportedPredictor(exported_det[fmt])
    for view in parse_tta(["hflip", "scale=224"]):
        for record in collect_inputs(png_dir).images:
            im = load_image(record, "BGR", 1024)
            ref = eager([im.image], [im.orig_size], view)[0]
            got = exported([im.image], [im.orig_size], view)[0]
            assert len(ref) > 10 and got.boxes.max() > 1000  # original pixels (10x the PNG)
            match(ref.boxes, ref.scores, ref.classes, got.boxes, got.scores, got.classes)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_classifier_parity(exported_cls, trained_cls_dir, png_dir, fmt):
    from detx.engine.config import get_detx_cfg
    from detx.inference.exported import ExportedClassifier
    from detx.inference.predictor import BatchedClassifier, collect_inputs, load_image

    eager = BatchedClassifier(get_detx_cfg(str(trained_cls_dir / "config.yaml"), []),
                              trained_cls_dir / "model_final.pth")
    exported = ExportedClassifier(exported_cls[fmt])
    for record in collect_inputs(png_dir).images:
        im = load_image(record, "BGR", 1024)
        ref, got = eager([im.image], [im.orig_size])[0], exported([im.image], [im.orig_size])[0]
        assert got.shape == (15,)
        np.testing.assert_allclose(got, ref, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("options", [[], ["--batch-size", 1, "--tta", "hflip"]], ids=["defaults", "bs1-hflip"])
def test_predict_exported_equals_eager(exported_det, exported_cls, tiny_random_checkpoint, trained_cls_dir, png_dir,
                                       tmp_path, fmt, options):
    """The same submission (twins within 1e-3 in score and 1 px) from the exported files and the checkpoints, with
    the default options too (--batch-size 4: the eager models give each image what it gets alone)."""
    cfg_file, weights = tiny_random_checkpoint
    cls = ["--classifier-config", trained_cls_dir / "config.yaml", "--classifier-weights",
           trained_cls_dir / "model_final.pth"]
    common = ["--input", png_dir, *options]
    assert _predict("--config-file", cfg_file, "--weights", weights, *cls, *common, "--out",
                    tmp_path / "eager.csv", "MODEL.DEVICE", "cpu") == 0
    # no --config-file/--weights: the files carry what prediction needs; detector and classifier told apart
    assert _predict("--exported", exported_det[fmt], "--exported", exported_cls[fmt], *common, "--out",
                    tmp_path / "exported.csv") == 0
    eager, exported = read_submission(tmp_path / "eager.csv"), read_submission(tmp_path / "exported.csv")
    assert list(eager) == list(exported) == ["im0", "im1", "im2"]
    for i in eager:
        a, b = eager[i], exported[i]
        match(a.boxes, a.scores, a.classes, b.boxes, b.scores, b.classes)
    e_cls = (tmp_path / "eager.classification.csv").read_text().splitlines()
    assert e_cls[0].startswith("image_id,p_abnormal,label,status,p_Aortic enlargement")


@pytest.mark.slow
def test_exported_and_checkpoint_mixed_fuse_like_two_checkpoints(exported_det, tiny_random_checkpoint, png_dir,
                                                                 tmp_path):
    cfg_file, weights = tiny_random_checkpoint
    common = ["--input", png_dir, "--batch-size", 1, "MODEL.DEVICE", "cpu"]
    assert _predict("--config-file", cfg_file, "--weights", weights, weights, "--out", tmp_path / "two.csv",
                    *common) == 0
    assert _predict("--config-file", cfg_file, "--weights", weights, "--exported", exported_det["torchscript"],
                    "--model-weights", 1, 1, "--out", tmp_path / "mixed.csv", *common) == 0
    two, mixed = read_submission(tmp_path / "two.csv"), read_submission(tmp_path / "mixed.csv")
    for i in two:
        match(two[i].boxes, two[i].scores, two[i].classes, mixed[i].boxes, mixed[i].scores, mixed[i].classes)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_readme_contract_without_detx(exported_det, png_dir, tmp_path, fmt):
    """What the README tells someone calling the file from another language, done with PIL, NumPy and the runtime
    alone, gives predict --exported's submission rows."""
    from PIL import Image

    path = exported_det[fmt]
    assert _predict("--exported", path, "--input", png_dir, "--out", tmp_path / "sub.csv") == 0
    sub = read_submission(tmp_path / "sub.csv")
    if fmt == "torchscript":
        extra = {"detx.json": ""}
        module = torch.jit.load(str(path), _extra_files=extra)
        meta = json.loads(extra["detx.json"])

        def run(x):
            with torch.no_grad():
                return [t.numpy() for t in module(torch.from_numpy(x))]
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = json.loads(session.get_modelmeta().custom_metadata_map["detx"])

        def run(x):
            return session.run(None, {"image": x})
    orig = {line.split(",")[0]: (int(line.split(",")[1]), int(line.split(",")[2]))
            for line in (png_dir.parent / "meta.csv").read_text().splitlines()[1:]}
    for image_id, (ow, oh) in orig.items():
        gray = cv2.imread(str(png_dir / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)  # a gray PNG; BGR = RGB
        h, w = gray.shape
        short, long_ = meta["min_size_test"], meta["max_size_test"]
        scale = short / min(h, w)
        if max(h, w) * scale > long_:
            scale = long_ / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        x = np.ascontiguousarray(resized.transpose(2, 0, 1)).astype(np.float32)
        boxes, scores, classes = run(x)
        boxes = boxes * np.array([ow / nw, oh / nh, ow / nw, oh / nh])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, ow)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, oh)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        row = sub[image_id]
        finding = row.classes < len(meta["class_names"])
        match(boxes[keep], scores[keep], classes[keep], row.boxes[finding], row.scores[finding],
              row.classes[finding], box_tol=0.01, score_tol=1e-5)
        nf = row.scores[~finding][0]  # "14 p 0 0 1 1", p = 1 - max score (the default rule)
        assert nf == pytest.approx(1 - scores.max(), abs=1e-5)


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.slow
def test_an_operator_onnx_cannot_export_is_named_and_torchscript_still_works(tmp_path, capsys):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_model

    from detx.engine.config import get_detx_cfg

    name = "build_cummax_test_backbone"
    if name not in BACKBONE_REGISTRY:
        class Cummax(Backbone):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)

            def forward(self, x):
                return {"res5": torch.cummax(self.conv(x), dim=3)[0]}

            def output_shape(self):
                return {"res5": ShapeSpec(channels=8, stride=4)}

        def build_cummax_test_backbone(cfg, input_shape):
            return Cummax()

        BACKBONE_REGISTRY.register(build_cummax_test_backbone)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", name, "MODEL.CLASSIFIER.NUM_CLASSES", "0"]
    cfg = get_detx_cfg(CLS_TINY_CONFIG, opts)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("cummax")
    args = ["--config-file", CLS_TINY_CONFIG, "--weights", tmp_path / "cummax.pth"]
    assert _export(*args, "--format", "onnx", "--out", tmp_path / "m.onnx", *opts) == 2
    err = capsys.readouterr().err
    assert "aten::cummax" in err and "--format torchscript" in err and not (tmp_path / "m.onnx").exists()
    assert _export(*args, "--format", "torchscript", "--out", tmp_path / "m.ts", *opts) == 0
    assert "agrees with the eager model" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_export_and_exported_inputs_exit_2(tiny_random_checkpoint, trained_cls_dir, png_dir, tmp_path, capsys,
                                                monkeypatch):
    from conftest import save_random_checkpoint

    cfg_file, weights = tiny_random_checkpoint
    out = tmp_path / "m.ts"
    with pytest.raises(SystemExit) as e:  # an unknown format: argparse's exit status 2
        export_tool.parse_args(["--config-file", cfg_file, "--weights", str(weights), "--format", "tflite", "--out",
                                str(out)])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    from detx.core.errors import InputError
    from detx.workflows.export import ExportOptions, run_export

    with pytest.raises(InputError, match="unknown export format 'tflite'"):
        run_export(ExportOptions(cfg_file, str(weights), "tflite", str(out)))
    # weights that do not fit the config: another class count, a classifier's checkpoint for a detector config
    three = save_random_checkpoint(tmp_path, "three", ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert _export("--config-file", cfg_file, "--weights", three, "--format", "torchscript", "--out", out,
                   "MODEL.DEVICE", "cpu") == 2
    assert "trained for 3 classes" in capsys.readouterr().err
    assert _export("--config-file", cfg_file, "--weights", trained_cls_dir / "model_final.pth", "--format", "onnx",
                   "--out", out, "MODEL.DEVICE", "cpu") == 2
    assert "image classifier's checkpoint" in capsys.readouterr().err
    assert not out.exists()
    # a written file that disagrees with the eager model on the sample is not kept
    import detx.workflows.export as export_workflow

    with monkeypatch.context() as m:
        m.setattr(export_workflow, "verify_export", lambda *a: {"reference": 5, "exported": 4, "unmatched": 1,
                                                                "max_box_diff": 0.0, "max_score_diff": 0.0})
        assert _export("--config-file", cfg_file, "--weights", weights, "--format", "torchscript", "--out", out,
                       "MODEL.DEVICE", "cpu") == 2
    assert "differs from the eager model" in capsys.readouterr().err and not out.exists()
    # files that are not exported detx models, given to predict --exported
    random_file = tmp_path / "random.onnx"
    random_file.write_bytes(np.random.default_rng(1).bytes(1000))
    sub = tmp_path / "sub.csv"
    for path, why in [(weights, "PyTorch checkpoint"), (random_file, "not an exported detx model"),
                      (tmp_path / "missing.ts", "does not exist")]:
        assert _predict("--exported", path, "--input", png_dir, "--out", sub) == 2
        err = capsys.readouterr().err
        assert why in err and str(path) in err
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("a.txt", "hello")
    assert _predict("--exported", tmp_path / "other.zip", "--input", png_dir, "--out", sub) == 2
    assert "zip archive without detx metadata" in capsys.readouterr().err
    assert not sub.exists()


# ------------------------------------------------------------------------------------- multi-process

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def five_pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("five") / "images"
    d.mkdir()
    for k in range(5):
        cv2.imwrite(str(d / f"im{k}.png"), _noise(256 - 16 * k, 192, 10 + k))
    # the PNGs are the originals: a meta.csv saying so (without one, a detector refuses PNGs of unknown size)
    (d.parent / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\n" + "".join(
        f"im{k},192,{256 - 16 * k},192,{256 - 16 * k}\n" for k in range(5)))
    return d


@pytest.mark.slow
def test_two_processes_write_the_single_process_files_and_the_cache_resumes(tiny_random_checkpoint, trained_cls_dir,
                                                                            five_pngs, tmp_path, monkeypatch):
    from detx.inference.predictor import BatchedClassifier, BatchedPredictor

    cfg_file, weights = tiny_random_checkpoint
    common = ["--config-file", cfg_file, "--weights", weights, "--classifier-config", trained_cls_dir / "config.yaml",
              "--classifier-weights", trained_cls_dir / "model_final.pth", "--input", five_pngs, "--tta", "hflip",
              "--batch-size", 1]
    one, two = tmp_path / "one", tmp_path / "two"
    assert _predict(*common, "--out", one / "sub.csv", "MODEL.DEVICE", "cpu") == 0
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "tools/predict.py", "--quiet", *map(str, common), "--out", two / "sub.csv",
                           "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}", "--cache-dir", cache,
                           "MODEL.DEVICE", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    for name in ("sub.csv", "sub.classification.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    # both processes filled the cache: 5 images (batch 1) x 2 views x (detector + classifier)
    assert len(list(cache.glob("*/*.npz"))) == 5 * 2 * 2

    def forbidden(*args, **kwargs):
        raise AssertionError("predicted again instead of reading the cache")

    monkeypatch.setattr(BatchedPredictor, "__call__", forbidden)
    monkeypatch.setattr(BatchedClassifier, "__call__", forbidden)
    assert _predict(*common, "--out", tmp_path / "again" / "sub.csv", "--cache-dir", cache, "MODEL.DEVICE", "cpu") == 0
    assert (tmp_path / "again" / "sub.csv").read_bytes() == (one / "sub.csv").read_bytes()


@pytest.mark.slow
def test_a_process_that_stops_reports_its_error_and_exit_status(tiny_random_checkpoint, five_pngs, tmp_path,
                                                                 monkeypatch, capsys):
    """The launched processes' errors reach the command: here launch is replaced by a stand-in that runs process 1
    of 2 in this process (its share holds a damaged PNG, --strict) and fails the way torch's spawn does."""
    import shutil

    import detectron2.engine
    from detectron2.utils import comm

    folder = tmp_path / "images"
    shutil.copytree(five_pngs, folder)
    shutil.copy(five_pngs.parent / "meta.csv", tmp_path / "meta.csv")
    (folder / "im3.png").write_bytes(b"not a png")  # image 3: process 1's share (images 1 and 3)

    def fake_launch(main_func, num_gpus, num_machines=1, machine_rank=0, dist_url=None, args=()):
        assert (num_gpus, num_machines, dist_url) == (2, 1, "auto")
        monkeypatch.setattr(comm, "get_rank", lambda: 1)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        try:
            main_func(*args)
        except Exception as e:
            raise RuntimeError("process 1 terminated with an exception") from e

    monkeypatch.setattr(detectron2.engine, "launch", fake_launch)
    cfg_file, weights = tiny_random_checkpoint
    out = tmp_path / "sub.csv"
    assert _predict("--config-file", cfg_file, "--weights", weights, "--input", folder, "--out", out, "--num-gpus", 2,
                    "--strict", "MODEL.DEVICE", "cpu") == 1
    err = capsys.readouterr().err
    assert "error (--strict): process 1: image im3" in err and not out.exists()
    # bad input is refused before any process starts
    assert _predict("--config-file", cfg_file, "--weights", tmp_path / "nope.pth", "--input", folder, "--out", out,
                    "--num-gpus", 2, "MODEL.DEVICE", "cpu") == 2
    assert "nope.pth does not exist" in capsys.readouterr().err
