"""Exported models: a trained detector or image classifier as a TorchScript or ONNX file that runs without detx's
Python code, the metadata that travels inside it, and reading such a file back.

The export traces the model with detectron2's :class:`~detectron2.export.TracingAdapter` on one image (a fixed
batch of one: the safe route through detectron2's data-dependent inference code), then writes

- TorchScript: ``torch.jit.trace`` + ``torch.jit.save`` with the metadata as the extra file ``detx.json``;
- ONNX: ``torch.onnx.export`` (the TorchScript-based exporter, opset :data:`ONNX_OPSET`, where torchvision
  registers ``RoiAlign`` and ``NonMaxSuppression``) with the metadata as ``metadata_props["detx"]``; run by
  onnxruntime.

The graph's contract (also in the metadata, see :meth:`ExportedModelInfo.to_dict`):

- input ``image``: float32, ``(3, H, W)``, pixel values 0-255 in ``INPUT.FORMAT`` channel order, already resized
  like detectron2's ``DefaultPredictor`` (shortest edge ``MIN_SIZE_TEST``, longest at most ``MAX_SIZE_TEST``,
  bilinear); the pixel mean/std normalization and detectron2's padding happen inside the graph;
- a detector's outputs ``boxes`` (N, 4) float32 ``x0 y0 x1 y1`` in the input image's pixels, ``scores`` (N,)
  float32, ``classes`` (N,) int64, after the score threshold, NMS and the per-image cap baked in from the config;
- a classifier's output ``probs`` (1 + K,) float32: P(abnormal), then one probability per class.

A file is "an exported detx model" exactly when it carries that metadata: a checkpoint, a TorchScript or ONNX file
from elsewhere, or any other file is refused with :class:`NotExportedModelError`.

This lives in ``detx.inference``, not ``detx.engine``: what an exported file promises is an inference contract (the
test-time resize, pixel format, score threshold, the frame of the boxes), shared with the predictors beside it
(:func:`~detx.inference.predictor.model_input`) and read back by the runner (:mod:`detx.inference.exported`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode

from detx import __version__ as DETX_VERSION
from detx.core.errors import InputError, MissingFileError
from detx.engine.body_part import PART_PROB_PREFIX, body_part_names
from detx.engine.config import is_classifier, num_classes, num_classes_key

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "ONNX_OPSET", "ExportError", "ExportedModelInfo", "ExportedModule", "NotExportedModelError",
    "OnnxExportError", "compare_detections", "export_model", "model_info", "read_exported_info", "sample_input",
    "unsupported_operators", "verify_export",
]

#: the export formats of ``tools/export.py --format``
FORMATS = ("torchscript", "onnx")
#: ONNX opset of the export: 16 is the first where torchvision's RoiAlign keeps ``aligned=True`` (ROIAlignV2)
ONNX_OPSET = 17
#: what the metadata says it is, and the version of its layout
SCHEMA = "detx-exported-model"
SCHEMA_VERSION = 1
#: the metadata's name: the TorchScript extra file, the ONNX ``metadata_props`` key
TORCHSCRIPT_EXTRA = "detx.json"
ONNX_METADATA_KEY = "detx"
DETECTOR_OUTPUTS = ("boxes", "scores", "classes")
CLASSIFIER_OUTPUTS = ("probs",)
INPUT_NAME = "image"


class ExportError(InputError):
    """A model that cannot be exported in the format asked for; the message says why."""


class OnnxExportError(ExportError):
    """The ONNX exporter (or onnxruntime) cannot handle an operator of the model; ``operators`` names it."""

    def __init__(self, message: str, operators: Sequence[str] = ()):
        super().__init__(message)
        self.operators = list(operators)


class NotExportedModelError(InputError):
    """A file that is not an exported detx model (no detx metadata in it)."""


# ----------------------------------------------------------------------------------------- metadata

@dataclass
class ExportedModelInfo:
    """What an exported file carries besides the graph: everything inference needs around it.

    Attributes:
        kind: ``"detector"`` or ``"classifier"``.
        format: ``"torchscript"`` or ``"onnx"``.
        meta_architecture: the config's ``MODEL.META_ARCHITECTURE``.
        class_names: the finding classes (id = index); the No-finding id is ``len(class_names)``.
        input_format: ``INPUT.FORMAT`` (``BGR`` or ``RGB``), the channel order of the input.
        min_size_test, max_size_test: the resize rule (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``).
        image_size: ``DETX.IMAGE_SIZE``, the longest side DICOMs are decoded to (0: not recorded).
        score_threshold, nms_threshold, detections_per_image: baked into a detector's graph (None for a classifier).
        pixel_mean, pixel_std: the normalization applied inside the graph (raw 0-255 pixels go in).
        output_names: the graph's outputs, in order.
        prob_names: a classifier's outputs (``abnormal``, then the classes, then ``body_part:<PART>`` for each part
            of a body-part head); empty for a detector.
        device: where it was traced (a TorchScript file runs there).
        opset: the ONNX opset (None for TorchScript).
        detx_version, torch_version: who wrote it.
        source: the config file and weights it was exported from.
        config: the resolved config (yaml) it was exported from.
    """

    kind: str
    format: str
    meta_architecture: str
    class_names: list[str]
    input_format: str
    min_size_test: int
    max_size_test: int
    image_size: int
    pixel_mean: list[float]
    pixel_std: list[float]
    output_names: list[str]
    prob_names: list[str] = field(default_factory=list)
    score_threshold: float | None = None
    nms_threshold: float | None = None
    detections_per_image: int | None = None
    device: str = "cpu"
    opset: int | None = None
    detx_version: str = DETX_VERSION
    torch_version: str = torch.__version__
    source: dict[str, str] = field(default_factory=dict)
    config: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_detector(self) -> bool:
        return self.kind == "detector"

    @property
    def body_parts(self) -> list[str]:
        """A classifier's body parts (the ``body_part:`` outputs after the classes), in order."""
        return [n[len(PART_PROB_PREFIX):] for n in self.prob_names if n.startswith(PART_PROB_PREFIX)]

    def contract(self) -> dict[str, Any]:
        """The pre/post-processing contract in words and shapes, for a caller in another language."""
        inp = {"name": INPUT_NAME, "dtype": "float32", "shape": [3, "H", "W"], "layout": "CHW",
               "pixel_format": self.input_format, "range": [0, 255],
               "resize": (f"shortest edge {self.min_size_test}, longest at most {self.max_size_test}, bilinear "
                          "(detectron2 ResizeShortestEdge); the graph normalizes and pads itself")}
        if self.is_detector:
            outs = [{"name": "boxes", "dtype": "float32", "shape": ["N", 4],
                     "frame": "x0 y0 x1 y1 in the input image's pixels; times (orig_w / W, orig_h / H) for original "
                              "pixels"},
                    {"name": "scores", "dtype": "float32", "shape": ["N"]},
                    {"name": "classes", "dtype": "int64", "shape": ["N"], "values": "index into class_names"}]
        else:
            outs = [{"name": "probs", "dtype": "float32", "shape": [len(self.prob_names)],
                     "values": self.prob_names}]
        return {"input": inp, "outputs": outs}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **asdict(self), "num_classes": self.num_classes,
                **self.contract()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, path: str | os.PathLike) -> ExportedModelInfo:
        """Parse the metadata of ``path``.

        Raises:
            NotExportedModelError: not detx metadata, or a layout this detx cannot read.
        """
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise NotExportedModelError(f"{path}: its detx metadata is not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise NotExportedModelError(f"{path} is not an exported detx model: its metadata is not {SCHEMA!r}")
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise NotExportedModelError(f"{path} was exported by a newer detx ({d.get('detx_version')}, metadata "
                                        f"version {d.get('schema_version')}): update detx to run it")
        names = {f.name for f in fields(cls)}
        try:
            info = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise NotExportedModelError(f"{path}: incomplete detx metadata ({e})") from None
        if info.kind not in ("detector", "classifier") or info.format not in FORMATS:
            raise NotExportedModelError(f"{path}: unknown kind/format {info.kind!r}/{info.format!r} in its metadata")
        return info


def class_names_of(cfg: CfgNode, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(finding class names, a classifier's output names) of a config's model, from ``names`` (the model's
    classes, at least ``num_classes(cfg)`` of them)."""
    k = num_classes(cfg)
    classes = list(names)[:k]
    if len(classes) != k:
        raise InputError(f"{len(classes)} class names for {num_classes_key(cfg)} {k}")
    if not is_classifier(cfg):
        return classes, []
    return classes, ["abnormal", *classes, *(PART_PROB_PREFIX + p for p in body_part_names(cfg))]


def model_info(cfg: CfgNode, fmt: str, class_names: Sequence[str], source: dict[str, str] | None = None
               ) -> ExportedModelInfo:
    """The metadata of ``cfg``'s model exported as ``fmt``."""
    classes, probs = class_names_of(cfg, class_names)
    kind = "classifier" if is_classifier(cfg) else "detector"
    info = ExportedModelInfo(
        kind=kind, format=fmt, meta_architecture=cfg.MODEL.META_ARCHITECTURE, class_names=classes,
        input_format=cfg.INPUT.FORMAT, min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST), image_size=int(cfg.DETX.IMAGE_SIZE),
        pixel_mean=[float(v) for v in cfg.MODEL.PIXEL_MEAN], pixel_std=[float(v) for v in cfg.MODEL.PIXEL_STD],
        output_names=list(DETECTOR_OUTPUTS if kind == "detector" else CLASSIFIER_OUTPUTS), prob_names=probs,
        device=str(cfg.MODEL.DEVICE), opset=ONNX_OPSET if fmt == "onnx" else None, source=dict(source or {}),
        config=cfg.dump())
    if kind == "detector":
        if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
            info.score_threshold = float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
            info.nms_threshold = float(cfg.MODEL.RETINANET.NMS_THRESH_TEST)
        else:
            info.score_threshold = float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
            info.nms_threshold = float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST)
        info.detections_per_image = int(cfg.TEST.DETECTIONS_PER_IMAGE)
    return info


def _not_exported(path: Path, why: str) -> NotExportedModelError:
    return NotExportedModelError(f"{path} is not an exported detx model ({why}); write one with tools/export.py")


def read_exported_info(path: str | os.PathLike) -> ExportedModelInfo:
    """The metadata of an exported file, read without loading the graph (TorchScript: the zip's ``extra/detx.json``;
    ONNX: ``metadata_props``).

    Raises:
        MissingFileError: no such file.
        NotExportedModelError: a file without detx metadata (a checkpoint, a foreign model, anything else).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"exported model {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip: TorchScript, or a torch.save checkpoint
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                meta = [n for n in names if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}")]
                if not meta:
                    if any("/code/" in n for n in names):
                        raise _not_exported(path, "a TorchScript file without detx metadata")
                    if any(n.endswith("/data.pkl") for n in names):
                        raise _not_exported(path, "a PyTorch checkpoint; it needs --config-file/--weights")
                    raise _not_exported(path, "a zip archive without detx metadata")
                text = z.read(meta[0])
        except zipfile.BadZipFile as e:
            raise _not_exported(path, f"a damaged zip: {e}") from None
        fmt = "torchscript"
    else:
        import onnx

        try:
            model = onnx.load_model(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - protobuf's decode errors: not an ONNX file at all
            raise _not_exported(path, "neither a TorchScript nor an ONNX file") from None
        props = {p.key: p.value for p in model.metadata_props}
        if ONNX_METADATA_KEY not in props:
            why = "an ONNX file without detx metadata" if len(model.graph.node) else "neither a TorchScript nor an " \
                                                                                    "ONNX file"
            raise _not_exported(path, why)
        text = props[ONNX_METADATA_KEY]
        fmt = "onnx"
    info = ExportedModelInfo.from_json(text, path)
    if info.format != fmt:
        raise NotExportedModelError(f"{path}: its metadata says {info.format} but the file is {fmt}")
    return info


# ------------------------------------------------------------------------------------------- export

def _detector_outputs(model: torch.nn.Module, inputs: list[dict[str, torch.Tensor]]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes, scores, classes) of one image in the input frame, before any rescaling (what the graph returns)."""
    from detectron2.modeling import GeneralizedRCNN

    if isinstance(model, GeneralizedRCNN):  # R-CNNs: skip the postprocess (scaling, mask pasting) done outside
        inst = model.inference(inputs, do_postprocess=False)[0]
    else:  # RetinaNet & co. postprocess to the input size: a scale of 1
        inst = model(inputs)[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def _classifier_outputs(model: torch.nn.Module, inputs: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return model(inputs)[0]["cls_probs"]


def graph_function(kind: str) -> Callable[[torch.nn.Module, list[dict[str, torch.Tensor]]], Any]:
    """What the exported graph computes from ``[{"image": tensor}]``: a detector's (boxes, scores, classes) in the
    input frame, a classifier's probabilities."""
    return _detector_outputs if kind == "detector" else _classifier_outputs


_OPERATOR = re.compile(r"\b((?:aten|prim|torchvision|detectron2|_caffe2|quantized|onnx)::[A-Za-z0-9_.]+)")
_QUOTED_OPERATOR = re.compile(r"operator '?([A-Za-z0-9_]+::[A-Za-z0-9_.]+)'?")
_ORT_NODE = re.compile(r"implementation for (\w+)\(\d+\) node|\bop_type[:=]\s*'?(\w+)")


def unsupported_operators(error: BaseException) -> list[str]:
    """The operator(s) an exporter or onnxruntime error names (``aten::kthvalue``, ``RoiAlign``, ...), best first."""
    text = str(error)
    first = text.strip().splitlines()[0] if text.strip() else ""
    found = _QUOTED_OPERATOR.findall(first) or _OPERATOR.findall(first)
    if not found:
        found = [a or b for a, b in _ORT_NODE.findall(text)]
    return list(dict.fromkeys(found))


def _export_onnx(adapter: torch.nn.Module, sample: torch.Tensor, path: Path, output_names: Sequence[str],
                 what: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(adapter, (sample,), str(path), opset_version=ONNX_OPSET, dynamo=False,
                              input_names=[INPUT_NAME], output_names=list(output_names),
                              dynamic_axes={INPUT_NAME: {1: "height", 2: "width"},
                                            **{n: {0: "n"} for n in output_names if n != "probs"}})
    except Exception as e:  # noqa: BLE001 - every exporter failure becomes one message naming the operator
        ops = unsupported_operators(e)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if ops:
            raise OnnxExportError(
                f"cannot export {what} to ONNX with torch {torch.__version__} (opset {ONNX_OPSET}): the operator "
                f"{', '.join(ops)} has no ONNX conversion ({first}). TorchScript does not need one: "
                "--format torchscript", ops) from None
        raise OnnxExportError(f"cannot export {what} to ONNX with torch {torch.__version__} (opset {ONNX_OPSET}): "
                              f"{type(e).__name__}: {first}. --format torchscript exports it") from None
    finally:
        adapter.eval()  # the exporter restores the mode it found, which for a fresh wrapper is training


def export_model(model: torch.nn.Module, info: ExportedModelInfo, out: str | os.PathLike,
                 sample: torch.Tensor) -> None:
    """Trace ``model`` (eval mode, float32) on ``sample`` and write it to ``out`` in ``info.format`` with ``info``
    inside.

    Args:
        model: the detectron2 model (``GeneralizedRCNN``, ``RetinaNet``, ``DetxClassifier``, ...).
        info: its metadata (:func:`model_info`).
        out: the file to write (not atomically: callers write to a temporary path and rename).
        sample: a (3, H, W) float32 input as the contract describes; tracing follows its branches.

    Raises:
        ExportError / OnnxExportError: the format cannot take the model (ONNX: the operator is named).
    """
    from detectron2.export import TracingAdapter

    if info.format not in FORMATS:
        raise ExportError(f"unknown export format {info.format!r}: expected one of {', '.join(FORMATS)}")
    model.eval()
    sample = sample.to(next(model.parameters()).device)
    adapter = TracingAdapter(model, [{"image": sample}], graph_function(info.kind)).eval()
    what = f"this {info.meta_architecture} {info.kind}"
    out = Path(out)
    fx_log = logging.getLogger("torch.fx._symbolic_trace")  # a torch note about is_fx_tracing, on every export
    level = fx_log.level
    fx_log.setLevel(logging.ERROR)
    try:
        _trace_and_save(adapter, info, out, sample, what)
    finally:
        fx_log.setLevel(level)


def _trace_and_save(adapter: torch.nn.Module, info: ExportedModelInfo, out: Path, sample: torch.Tensor,
                    what: str) -> None:
    with torch.no_grad():
        if info.format == "torchscript":
            with warnings.catch_warnings():
                # the tracer's warnings about Python values it keeps constant; torch 2.14 deprecates TorchScript
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(adapter, (sample,), check_trace=False)
                buffer = io.BytesIO()  # saved through memory: the archive's folder is then "archive", not a temp name
                torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_EXTRA: info.to_json()})
            out.write_bytes(buffer.getvalue())
        else:
            import onnx

            _export_onnx(adapter, sample, out, info.output_names, what)
            proto = onnx.load_model(str(out))
            entry = proto.metadata_props.add()
            entry.key, entry.value = ONNX_METADATA_KEY, info.to_json()
            proto.producer_name = f"detx {DETX_VERSION}"
            onnx.save_model(proto, str(out))


# --------------------------------------------------------------------------------------------- load

class ExportedModule:
    """An exported file loaded for inference: ``module(image)`` -> the graph's outputs as NumPy arrays.

    TorchScript runs with torch on the device it was traced on (the CPU when that is not available); ONNX runs in
    onnxruntime (CUDA when its GPU build and a GPU are there, else the CPU).
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None):
        self.path = Path(path)
        self.info = read_exported_info(self.path)
        self.format = self.info.format
        if self.format == "torchscript":
            want = device or self.info.device
            if want.startswith("cuda") and not torch.cuda.is_available():
                logger.info("%s was traced on %s; CUDA is not available: running on the CPU", path, want)
                want = "cpu"
            self.device = torch.device(want)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
                    self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
            except Exception as e:  # noqa: BLE001 - torch's loader errors: a damaged file
                raise NotExportedModelError(f"{path}: TorchScript cannot load it: {type(e).__name__}: "
                                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        else:
            import onnxruntime as ort

            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers() and (device is None or device.startswith("cuda")
                                                                    or p == "CPUExecutionProvider")]
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=providers)
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors are one class per status code
                ops = unsupported_operators(e)
                raise OnnxExportError(f"onnxruntime {ort.__version__} cannot run {path}"
                                      + (f": operator {', '.join(ops)} is not implemented" if ops else "")
                                      + f" ({str(e).strip()[:300]})", ops) from None
            self.device = torch.device("cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu")

    def __call__(self, image: torch.Tensor) -> tuple[np.ndarray, ...]:
        """The outputs (``info.output_names`` order) for one (3, H, W) float32 image."""
        if self.format == "torchscript":
            with torch.no_grad():
                out = self.module(image.to(self.device))
            out = out if isinstance(out, (tuple, list)) else (out,)
            return tuple(o.detach().cpu().numpy() for o in out)
        return tuple(self.session.run(None, {INPUT_NAME: image.detach().cpu().numpy().astype(np.float32)}))


# ------------------------------------------------------------------------------------------- verify

def compare_detections(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], score_tol: float = 1e-3
                       ) -> dict[str, Any]:
    """Match two detection sets (boxes, scores, classes) one to one: each reference detection, by descending score,
    takes the unmatched detection of its class with a score within ``score_tol`` and the nearest corners.

    Returns:
        ``reference``, ``exported`` (counts), ``unmatched`` (reference detections without a partner),
        ``max_box_diff`` (largest corner difference of a matched pair, pixels) and ``max_score_diff``.
    """
    rb, rs, rc = (np.asarray(a) for a in ref)
    gb, gs, gc = (np.asarray(a) for a in got)
    free = np.ones(len(gs), bool)
    unmatched, box_diff, score_diff = 0, 0.0, 0.0
    for j in np.argsort(-rs, kind="stable"):
        cand = np.flatnonzero(free & (gc == rc[j]) & (np.abs(gs - rs[j]) <= score_tol))
        if not len(cand):
            unmatched += 1
            continue
        d = np.abs(gb[cand] - rb[j]).max(axis=1)
        k = cand[int(np.argmin(d))]
        free[k] = False
        box_diff = max(box_diff, float(d.min()))
        score_diff = max(score_diff, float(abs(gs[k] - rs[j])))
    return {"reference": int(len(rs)), "exported": int(len(gs)), "unmatched": int(unmatched),
            "max_box_diff": box_diff, "max_score_diff": score_diff}


def verify_export(model: torch.nn.Module, info: ExportedModelInfo, path: str | os.PathLike,
                  sample: torch.Tensor) -> dict[str, Any]:
    """Run the exported file and the eager model on ``sample`` and compare (in the input frame).

    Returns:
        A detector's :func:`compare_detections`, a classifier's ``max_prob_diff``.

    Raises:
        OnnxExportError: onnxruntime cannot run the file (the operator is named).
    """
    module = ExportedModule(path)
    got = module(sample)
    with torch.no_grad():
        ref = graph_function(info.kind)(model.eval(), [{"image": sample.to(next(model.parameters()).device)}])
    if info.is_detector:
        return compare_detections([t.detach().cpu().numpy() for t in ref], got)
    return {"max_prob_diff": float(np.abs(ref.detach().cpu().numpy() - got[0]).max())}


def sample_input(info: ExportedModelInfo, image: np.ndarray | None = None) -> torch.Tensor:
    """The example the export traces: ``image`` (HWC uint8 in ``info.input_format``, as prediction decodes it) or, by
    default, blocky gray noise in a 3:4 portrait frame, resized by the contract."""
    from detx.inference.predictor import inference_resize, model_input

    if image is None:
        side = max(int(info.min_size_test), 32)
        g = (np.random.default_rng(0).random((side // 6, side // 8)) * 255).astype(np.uint8)
        image = np.repeat(np.kron(g, np.ones((8, 8), np.uint8))[:, :, None], 3, axis=2)
    return model_input(image, inference_resize(info.min_size_test, info.max_size_test), info.input_format)
