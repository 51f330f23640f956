"""Batched detectron2 prediction in original DICOM pixels, over prepared JSONs, DICOM folders or PNG folders.

:func:`collect_inputs` turns ``--input`` into :class:`InputImage` records (with original sizes where they
are known before decoding); :class:`BatchedPredictor` runs one checkpoint on several images per forward
pass (AMP on CUDA) for any :class:`~detx.inference.tta.TTAView`; :func:`predict_all` decodes each batch
once and runs every model and view on it, keeping images that fail to decode apart (lenient) or
stopping at the first (strict).

Images are read exactly as training reads them (detectron2 ``read_image`` in ``INPUT.FORMAT``; DICOMs
decoded by the preparation pipeline at the prepared size) and resized like detectron2's
``DefaultPredictor`` (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``). detectron2's
post-processing scales boxes to the ``height``/``width`` passed with each image: passing the original
size gives boxes in original pixels directly (the PNG keeps the aspect ratio, so original = model input
times ``orig / input`` per axis).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from detectron2.config import CfgNode

from detx.core.crop import Crop, boxes_from_crop
from detx.core.errors import InputError, StrictModeError
from detx.core.predictions import Predictions
from detx.core.prepared import (
    PreparedDatasetError,
    image_crop,
    load_prepared_coco,
    read_meta_crops,
    read_meta_sizes,
    test_split_unreadable,
)
from detx.data.dicom import (
    PNG_SUFFIXES,
    dicom_image_id,
    find_dicoms,
    find_pngs,
    is_dicom_file,
    load_dicom_image,
    to_uint8,
)
from detx.engine.checkpoint import check_checkpoint
from detx.engine.config import is_classifier, num_classes, num_classes_key
from detx.inference.tta import TTAView, hflip_boxes, hflip_image

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: image formats a batch is decoded in and converted between (a channel swap) for models that differ
SWAPPABLE_FORMATS = ("BGR", "RGB")


class PredictionInputError(InputError):
    """An input (folder, JSON, image) that prediction cannot use; the message names it."""


class UnreadableImageError(StrictModeError, PredictionInputError):
    """An image that cannot be decoded, in strict mode (lenient mode writes it as no finding)."""


@dataclass
class InputImage:
    """One image to predict.

    Attributes:
        image_id: the dataset's string id (submission row).
        path: PNG or DICOM file.
        kind: ``"png"`` or ``"dicom"``.
        orig_width, orig_height: original DICOM size; None until decoded (a DICOM folder) or when a PNG
            folder has no meta.csv (then the PNG size is used).
        crop: the rectangle ``(x0, y0, x1, y1)`` of the original image the PNG holds (``prepare --crop lungs``),
            None for a whole image: a detector's boxes are mapped back through it to original pixels.
    """

    image_id: str
    path: Path
    kind: str
    orig_width: int | None = None
    orig_height: int | None = None
    error: str | None = None  # set for an image known to be unreadable before decoding (a test set's failures)
    pixels: np.ndarray | None = None  # kind "array": the image itself (one-image API)
    crop: tuple[int, int, int, int] | None = None

    def crop_extent(self) -> tuple[int, int] | None:
        """(width, height) in original pixels of the rectangle the PNG holds, None for a whole image."""
        if self.crop is None:
            return None
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    def from_crop(self, pred: Predictions) -> Predictions:
        """A detector's boxes in the crop's frame (original pixels, origin at its corner) in the original image's."""
        if self.crop is None:
            return pred
        x0, y0, x1, y1 = self.crop
        crop = Crop(x0, y0, x1, y1, int(self.orig_width), int(self.orig_height))
        return Predictions(boxes_from_crop(pred.boxes, crop), pred.scores, pred.classes)

    def identity(self) -> str:
        """What the pixels are: the file's absolute path, byte count and modification time (the cache key)."""
        if self.pixels is not None:
            return f"<array>|{self.image_id}|{self.pixels.shape}|{hash(self.pixels.tobytes())}"
        try:
            st = os.stat(self.path)
        except OSError:
            return f"{os.path.abspath(self.path)}|missing"
        return f"{os.path.abspath(self.path)}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class InputSet:
    """What ``--input`` holds: images, and for a prepared JSON its classes, dataset and ground truth."""

    images: list[InputImage]
    source: Path
    classes: tuple[str, ...] | None = None
    dataset: str | None = None
    gt: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    png_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    size: int | None = None  # the image size a prepared JSON was prepared at


def is_single_image(path: str | os.PathLike) -> bool:
    """Whether ``--input`` names one image file (a DICOM or a PNG) rather than a prepared JSON or a folder."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() != ".json"


def single_image_record(path: str | os.PathLike) -> InputImage:
    """The record of one DICOM (any file with the DICM marker, ``.dcm``, ``.dicom``) or PNG file; a PNG's original
    size comes from a ``meta.csv`` beside it when that lists it, else it is the PNG's own.

    Raises:
        PredictionInputError: neither a DICOM nor a PNG.
    """
    path = Path(path)
    if path.suffix.lower() in PNG_SUFFIXES:
        try:
            meta = read_meta_sizes(path.parent)
        except PreparedDatasetError as e:
            raise PredictionInputError(str(e)) from e
        m = meta.get(path.stem)
        return InputImage(path.stem, path, "png", m[0] if m else None, m[1] if m else None,
                          crop=read_meta_crops(path.parent).get(path.stem) if m else None)
    if is_dicom_file(path):
        return InputImage(dicom_image_id(path), path, "dicom")
    raise PredictionInputError(f"input {path}: expected a DICOM (.dcm, .dicom or the DICM marker), a PNG, a prepared "
                               "COCO .json, a DICOM folder or a PNG folder")


def array_record(image: np.ndarray, image_id: str = "image", orig_size: tuple[int, int] | None = None) -> InputImage:
    """The record of an image array: 2-D grayscale (uint8, or uint16 read as 0..65535, as a 16-bit prepared PNG) or
    H x W x 3 RGB uint8; ``orig_size`` (width, height) is the frame of the boxes (default the array's size).

    Raises:
        PredictionInputError: another shape or pixel type.
    """
    arr = np.asarray(image)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.dtype not in (np.uint8, np.uint16):
        raise PredictionInputError(f"image array {image_id}: expected H x W (uint8/uint16) or H x W x 3 (uint8 RGB), "
                                   f"got shape {arr.shape} of {arr.dtype}")
    if arr.ndim == 3 and arr.dtype != np.uint8:
        raise PredictionInputError(f"image array {image_id}: a 3-channel array must be uint8 RGB, got {arr.dtype}")
    w, h = orig_size if orig_size is not None else (arr.shape[1], arr.shape[0])
    return InputImage(image_id, Path("<array>"), "array", int(w), int(h), pixels=arr)


def collect_inputs(path: str | os.PathLike) -> InputSet:
    """The images of a prepared COCO JSON, a DICOM folder or a PNG folder (sorted by image id), or one DICOM or PNG
    file.

    Raises:
        PredictionInputError: the path does not exist, or a folder holds no DICOM or PNG image.
    """
    path = Path(path)
    if not path.exists():
        raise PredictionInputError(f"input {path} does not exist")
    if is_single_image(path):
        return InputSet([single_image_record(path)], path)
    if path.is_file():
        try:
            coco = load_prepared_coco(path)
        except (ValueError, KeyError) as e:
            raise PredictionInputError(f"input {path}: {e}") from e
        images = []
        for uid, im in coco.images.items():
            c = image_crop(im)
            images.append(InputImage(uid, coco.image_path(uid), "png", int(im["orig_width"]), int(im["orig_height"]),
                                     crop=(c.x0, c.y0, c.x1, c.y1) if c is not None else None))
        images += _unreadable_records(coco.unreadable, path)
        if not images:
            raise PredictionInputError(f"input {path} lists no images")
        has_gt = any(len(b) for b, _ in coco.gt.values())  # every JSON annotation is a box in coco.gt
        return InputSet(images, path, coco.classes, coco.info.get("dataset"), coco.gt if has_gt else None,
                        {uid: (int(im["width"]), int(im["height"])) for uid, im in coco.images.items()}, coco.size)
    dicoms, duplicates = find_dicoms(path)
    for image_id, kept, dup in duplicates:
        logger.warning("two DICOM files for image %s: %s and %s; predicting the first", image_id, kept, dup)
    found_pngs = find_pngs(path)
    if dicoms and found_pngs:  # one kind per folder: the PNGs' frame (prepared? original?) is not the DICOMs'
        raise PredictionInputError(
            f"input folder {path} holds {len(dicoms)} DICOM and {len(found_pngs)} PNG image(s) (e.g. "
            f"{next(iter(dicoms.values())).name} and {next(iter(found_pngs.values())).name}): give a folder of one "
            "kind (the DICOMs, or a prepared images/ folder with its meta.csv)")
    if dicoms:
        return InputSet([InputImage(i, p, "dicom") for i, p in sorted(dicoms.items())], path)
    pngs = sorted(found_pngs.items())
    if not pngs:
        raise PredictionInputError(f"input folder {path} holds no DICOM (*.dicom, *.dcm, or files with the DICM "
                                   "marker) or PNG images (both searched recursively)")
    try:
        meta = read_meta_sizes(path)
    except PreparedDatasetError as e:
        raise PredictionInputError(str(e)) from e
    images = []
    crops = read_meta_crops(path) if meta else {}
    for image_id, p in pngs:
        m = meta.get(image_id)
        images.append(InputImage(image_id, p, "png", m[0] if m else None, m[1] if m else None,
                                 crop=crops.get(image_id)))
    images += _unreadable_records(test_split_unreadable(path), path)
    if meta:
        missing = [im.image_id for im in images if im.orig_width is None]
        if missing:
            logger.warning("%d PNG(s) not in meta.csv, their own size is taken as original: %s", len(missing),
                           missing[:5])
    return InputSet(images, path)


def _unreadable_records(unreadable: Mapping[str, str], source: Path) -> list[InputImage]:
    """Input records for the images a test-set preparation could not convert: predicted as unreadable, so the
    submission keeps one row for every image of the test set."""
    return [InputImage(i, source, "unreadable", error=f"not converted by preparation: {reason}")
            for i, reason in sorted(unreadable.items())]


def to_model_format(gray_or_rgb: np.ndarray, fmt: str) -> np.ndarray:
    """An image array as detectron2 ``read_image`` would return its PNG in ``fmt`` (e.g. gray -> 3-channel BGR)."""
    from detectron2.data.detection_utils import convert_PIL_to_numpy
    from PIL import Image

    return convert_PIL_to_numpy(Image.fromarray(gray_or_rgb), fmt)


@dataclass
class LoadedImage:
    """A decoded image in the model's format, with its original size, or the error that stopped it."""

    record: InputImage
    image: np.ndarray | None = None
    orig_size: tuple[int, int] | None = None  # (width, height)
    error: str | None = None


def load_image(record: InputImage, fmt: str, dicom_size: int) -> LoadedImage:
    """Decode one input image (never raises: a failure is returned as ``error``)."""
    if record.error is not None:
        return LoadedImage(record, error=record.error)
    try:
        if record.pixels is not None:
            arr = record.pixels
            arr = to_uint8(arr) if arr.dtype == np.uint16 else arr
            fmt_arr = to_model_format(arr, fmt)
            return LoadedImage(record, fmt_arr, (record.orig_width or arr.shape[1], record.orig_height or arr.shape[0]))
        if record.kind == "dicom":
            gray, orig_w, orig_h = load_dicom_image(record.path, dicom_size)
            return LoadedImage(record, to_model_format(gray, fmt), (orig_w, orig_h))
        from detectron2.data.detection_utils import read_image

        image = read_image(str(record.path), format=fmt)
        h, w = image.shape[:2]
        # a crop (prepare --crop lungs): the model's boxes come back in the crop's extent, shifted by predict_all
        orig = record.crop_extent() or (record.orig_width or w, record.orig_height or h)
        return LoadedImage(record, image, orig)
    except Exception as e:  # noqa: BLE001 - any decoder error makes this one image unreadable
        return LoadedImage(record, error=f"{record.path}: {type(e).__name__}: {e}")


class _Images(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[InputImage], fmt: str, dicom_size: int):
        self.records, self.fmt, self.dicom_size = list(records), fmt, dicom_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> LoadedImage:
        return load_image(self.records[i], self.fmt, self.dicom_size)


def iter_batches(records: Sequence[InputImage], fmt: str, dicom_size: int, batch_size: int,
                 num_workers: int = 0) -> Iterator[list[LoadedImage]]:
    """Decoded images in batches, decoding in ``num_workers`` background processes."""
    loader = torch.utils.data.DataLoader(_Images(records, fmt, dicom_size), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list, shuffle=False)
    yield from loader


# ----------------------------------------------------------------------------------------- model

def inference_resize(min_size: int, max_size: int, view: TTAView | None = None):
    """detectron2's test-time resize (``ResizeShortestEdge([min, min], max)``, as ``DefaultPredictor``) for a view:
    a ``scale=N`` view takes shortest edge N and keeps the config's max/min ratio."""
    from detectron2.data import transforms as T

    if view is not None and view.min_size is not None:
        max_size = int(round(max_size * view.min_size / min_size))
        min_size = view.min_size
    return T.ResizeShortestEdge([min_size, min_size], max_size)


def padded_shape(height: int, width: int, size_divisibility: int = 0, square_size: int = 0) -> tuple[int, int]:
    """The (height, width) detectron2's ``ImageList.from_tensors`` pads an image of this size to when it is alone
    in its batch: a square of ``square_size`` when given, each side rounded up to ``size_divisibility``."""
    if square_size > 0:
        height = width = square_size
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    return int(height), int(width)


def model_input(image: np.ndarray, resize: Any, model_format: str, view: TTAView | None = None,
                fmt: str | None = None) -> torch.Tensor:
    """The tensor a model is fed: an HWC uint8 image in ``fmt`` swapped to ``model_format`` (BGR <-> RGB),
    resized by ``resize`` (:func:`inference_resize`), as CHW float32 in 0-255, mirrored for a flipped view."""
    if fmt is not None and fmt != model_format:
        image = image[:, :, ::-1]
    x = resize.get_transform(image).apply_image(image)
    t = torch.as_tensor(np.ascontiguousarray(x.transpose(2, 0, 1))).float()
    return hflip_image(t) if view is not None and view.hflip else t


class ImageModel(Protocol):
    """What :func:`predict_all` runs: a detector (returning :class:`Predictions` in original pixels) or an image
    classifier (returning probabilities), eager (:class:`BatchedPredictor`, :class:`BatchedClassifier`) or exported
    (:mod:`detx.inference.exported`)."""

    input_format: str

    def cache_key(self, view: TTAView, dicom_size: int) -> str: ...

    def batch_key(self, image_shape: tuple[int, int], view: TTAView) -> Any:
        """What an image of decoded shape (height, width) must share with the others of a batch for each to get the
        outputs it gets alone (None: any images may share a batch)."""
        ...

    def __call__(self, images: Sequence[np.ndarray], orig_sizes: Sequence[tuple[int, int]],
                 view: TTAView | None = None, fmt: str | None = None) -> list[Any]: ...


class _BatchedModel:
    """One checkpoint of a config, run on several images per forward pass: loading and checking the weights,
    the device, AMP on CUDA, detectron2's test-time resize and the TTA views (shared by detector and classifier).

    A forward pass only ever holds images of one padded input shape (:meth:`batch_key`): detectron2 pads a batch to
    its largest image, and padding moves what the convolutions see near the border, so an image batched with a larger
    one would get other boxes than alone. A call with mixed shapes runs one forward pass per shape, in input order.
    Same-shape batches are still not bit-exact: oneDNN (CPU) and cuDNN/cuBLAS (CUDA) pick their kernels by batch
    size, which moves the last bits (measured on the CPU: boxes by up to ~0.005 px, scores by ~1e-7;
    docs/reproducibility.md). So with ``exact`` (the default) a CPU model runs one image per forward pass (where
    batching gains less than on a GPU), and every image gets bit for bit what it gets alone (and what ``DefaultPredictor`` and
    an exported file give); on CUDA, where batching pays, same-shape batches run and :attr:`exact_batching` is False.
    """

    def __init__(self, cfg: CfgNode, weights: str | os.PathLike, amp: bool = True, exact: bool = True):
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        check_checkpoint(self.model, weights, num_classes(self.cfg), num_classes_key(self.cfg))
        DetectionCheckpointer(self.model).load(str(weights))
        self.weights = str(weights)
        self.device = torch.device(self.cfg.MODEL.DEVICE)
        self.amp = amp and self.device.type == "cuda"
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in SWAPPABLE_FORMATS:
            raise InputError(f"INPUT.FORMAT {self.input_format!r} is not supported for prediction "
                             f"({' or '.join(SWAPPABLE_FORMATS)})")
        #: every image gets bit for bit what it gets alone: one image per forward pass (a CPU model with ``exact``)
        self.exact_batching = exact and self.device.type == "cpu"
        backbone = getattr(self.model, "backbone", None)
        self.size_divisibility = int(getattr(backbone, "size_divisibility", 0) or 0)
        self.square_size = int((getattr(backbone, "padding_constraints", None) or {}).get("square_size", 0) or 0)

    def batch_key(self, image_shape: tuple[int, int], view: TTAView) -> tuple[int, int]:
        """The padded (height, width) of the model input of a decoded image of ``image_shape`` under ``view``:
        images with equal keys pad alike, so batching them gives each what it gets alone."""
        from detectron2.data.transforms import ResizeShortestEdge

        resize = inference_resize(self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST, view)
        h, w = ResizeShortestEdge.get_output_shape(int(image_shape[0]), int(image_shape[1]),
                                                   int(resize.short_edge_length[0]), int(resize.max_size))
        return padded_shape(h, w, self.size_divisibility, self.square_size)

    def cache_key(self, view: TTAView, dicom_size: int) -> str:
        """What determines this predictor's output for a view: weights file (path, size, mtime), config, view."""
        st = os.stat(self.weights)
        return "|".join([os.path.abspath(self.weights), str(st.st_size), str(st.st_mtime_ns), self.cfg.dump(),
                         view.name, str(dicom_size), str(self.amp)])

    @torch.no_grad()
    def _run(self, images: Sequence[np.ndarray], orig_sizes: Sequence[tuple[int, int]], view: TTAView,
             fmt: str | None) -> list[dict[str, Any]]:
        """The model's outputs for a batch of HWC uint8 images in ``fmt`` (default: this model's format)."""
        resize = inference_resize(self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST, view)
        inputs = [{"image": model_input(image, resize, self.input_format, view, fmt), "height": int(oh),
                   "width": int(ow)} for image, (ow, oh) in zip(images, orig_sizes)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(inputs):
            h, w = x["image"].shape[-2:]
            groups.setdefault(padded_shape(h, w, self.size_divisibility, self.square_size), []).append(i)
        outputs: list[Any] = [None] * len(inputs)
        step = 1 if self.exact_batching else len(inputs)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
            for idx in groups.values():
                for k in range(0, len(idx), step):
                    for i, out in zip(idx[k:k + step], self.model([inputs[i] for i in idx[k:k + step]])):
                        outputs[i] = out
        return outputs


class BatchedPredictor(_BatchedModel):
    """A detector checkpoint, predicting several images per forward pass.

    Like detectron2's ``DefaultPredictor`` (same resize, same model call) but batched, with AMP on
    CUDA, TTA views, and boxes returned in original pixels as :class:`Predictions`.
    """

    def __init__(self, cfg: CfgNode, weights: str | os.PathLike, amp: bool = True, exact: bool = True):
        if is_classifier(cfg):
            raise InputError(f"{cfg.MODEL.META_ARCHITECTURE} is an image classifier, not a detector: give it as "
                             "--classifier-config/--classifier-weights")
        super().__init__(cfg, weights, amp, exact)

    def __call__(self, images: Sequence[np.ndarray], orig_sizes: Sequence[tuple[int, int]],
                 view: TTAView | None = None, fmt: str | None = None) -> list[Predictions]:
        """Predict a batch.

        Args:
            images: HWC uint8 arrays in ``fmt`` (default ``INPUT.FORMAT``; as :func:`load_image` returns them).
            orig_sizes: (width, height) in original pixels, the frame of the returned boxes.
            view: the TTA view (flip, scale) to run.
            fmt: the images' format when it is not the model's (BGR and RGB are swapped).
        """
        view = view or TTAView()
        if not images:
            return []
        preds = []
        for out, (ow, _oh) in zip(self._run(images, orig_sizes, view, fmt), orig_sizes):
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.float().numpy().astype(np.float64)
            if view.hflip:
                boxes = hflip_boxes(boxes, float(ow))
            preds.append(Predictions(boxes, inst.scores.float().numpy(), inst.pred_classes.numpy()))
        return preds


class BatchedClassifier(_BatchedModel):
    """An image-classifier checkpoint (``DetxClassifier``): per image the probabilities of its outputs
    (``abnormal``, then ``MODEL.CLASSIFIER.NUM_CLASSES`` classes)."""

    def __init__(self, cfg: CfgNode, weights: str | os.PathLike, amp: bool = True, exact: bool = True):
        if not is_classifier(cfg):
            raise InputError(f"{cfg.MODEL.META_ARCHITECTURE} is a detector, not an image classifier: give it as "
                             "--config-file/--weights")
        super().__init__(cfg, weights, amp, exact)
        self.square_size = 0  # DetxClassifier pads to size_divisibility only (no padding_constraints)
        self.num_outputs = 1 + int(cfg.MODEL.CLASSIFIER.NUM_CLASSES)

    def __call__(self, images: Sequence[np.ndarray], orig_sizes: Sequence[tuple[int, int]],
                 view: TTAView | None = None, fmt: str | None = None) -> list[np.ndarray]:
        """(1 + K,) probabilities per image (a horizontal flip does not change what an image shows)."""
        if not images:
            return []
        return [out["cls_probs"].float().cpu().numpy().astype(np.float64)
                for out in self._run(images, orig_sizes, view or TTAView(), fmt)]


def _probs_as_entries(probs: np.ndarray) -> Predictions:
    """A classifier's probabilities in the prediction cache's record type: entry k = output k, score = P."""
    return Predictions(np.zeros((len(probs), 4)), probs, np.arange(len(probs)))


class PredictionCache:
    """Raw predictions of each (model, view) saved batch by batch, to resume an interrupted run.

    ``root/<sha1 of the set's key>/<first image>_<n>.npz`` holds a batch: image ids, the identity of each input
    file (:meth:`InputImage.identity`: path, size, modification time), original sizes and the concatenated
    boxes/scores/classes; ``key.txt`` beside them records what the key hashed. A cached entry is used only while
    its input file is unchanged, so re-preparing the same image ids (another size, another decoder) predicts
    them again instead of serving stale boxes.
    """

    def __init__(self, root: str | os.PathLike, keys: Sequence[str]):
        import hashlib

        self.dirs = []
        for key in keys:
            d = Path(root) / hashlib.sha1(key.encode()).hexdigest()[:16]
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "key.txt").exists():
                from detx.core.io import atomic_write_text

                atomic_write_text(d / "key.txt", key)
            self.dirs.append(d)

    def save(self, k: int, image_ids: Sequence[str], idents: Sequence[str], preds: Sequence[Predictions],
             orig_sizes: Sequence[tuple[int, int]]) -> None:
        import hashlib

        from detx.core.io import atomic_path

        counts = np.array([len(p) for p in preds], dtype=np.int64)
        digest = hashlib.sha1("\n".join(image_ids).encode()).hexdigest()[:8]
        name = f"{image_ids[0].replace('/', '_')}_{len(image_ids)}_{digest}.npz"
        with atomic_path(self.dirs[k] / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=np.array(image_ids, dtype=str), idents=np.array(idents, dtype=str), counts=counts,
                     sizes=np.array(orig_sizes, dtype=np.int64).reshape(-1, 2),
                     boxes=np.concatenate([p.boxes for p in preds]).reshape(-1, 4),
                     scores=np.concatenate([p.scores for p in preds]),
                     classes=np.concatenate([p.classes for p in preds]))

    def load(self, current: Mapping[str, str]) -> list[dict[str, tuple[Predictions, tuple[int, int]]]]:
        """Per set: image_id -> (predictions, original size) of the saved entries whose input identity equals
        ``current[image_id]`` (unreadable files, and entries of changed or other inputs, are skipped)."""
        out = []
        stale = 0
        for d in self.dirs:
            found: dict[str, tuple[Predictions, tuple[int, int]]] = {}
            for f in sorted(d.glob("*.npz")):
                try:
                    z = np.load(f)
                    bounds = np.r_[0, np.cumsum(z["counts"])]
                    idents = z["idents"].tolist()
                    for j, image_id in enumerate(z["ids"].tolist()):
                        if current.get(image_id) != idents[j]:
                            stale += 1
                            continue
                        sl = slice(bounds[j], bounds[j + 1])
                        found[image_id] = (Predictions(z["boxes"][sl], z["scores"][sl], z["classes"][sl]),
                                           tuple(int(v) for v in z["sizes"][j]))
                except (OSError, ValueError, KeyError) as e:
                    logger.warning("prediction cache file %s unreadable, its images are predicted again: %s", f, e)
            out.append(found)
        if stale:
            logger.info("%d cached prediction(s) of changed or other input files ignored", stale)
        return out


@dataclass
class PredictionRun:
    """Raw predictions of every (model, view) pair, before ensembling.

    Attributes:
        sets: one ``{image_id: Predictions}`` per (detector, view), in ``names`` order.
        names: ``"m<k>:<view>"`` per set.
        set_weights: WBF weight of each set (its model's weight).
        orig_sizes: image_id -> (width, height) original pixels, for every decoded image.
        failures: image_id -> the reason it could not be decoded (lenient mode).
        order: every input image id, in input order.
        cls_sets: one ``{image_id: (1 + K,) probabilities}`` per (classifier, view).
    """

    sets: list[dict[str, Predictions]]
    names: list[str]
    set_weights: list[float]
    orig_sizes: dict[str, tuple[int, int]]
    failures: dict[str, str]
    order: list[str]
    cls_sets: list[dict[str, np.ndarray]] = field(default_factory=list)

    @classmethod
    def merge(cls, runs: Sequence[PredictionRun], order: Sequence[str]) -> PredictionRun:
        """The runs of disjoint shares of the images (one per process) as one run over ``order``: each set keyed in
        input order, whichever process predicted an image, so what follows is the same as after one process."""
        first = runs[0]

        def ordered(dicts):
            merged = {k: v for d in dicts for k, v in d.items()}
            return {i: merged[i] for i in order if i in merged}

        return cls([ordered([r.sets[k] for r in runs]) for k in range(len(first.sets))], list(first.names),
                   list(first.set_weights), ordered([r.orig_sizes for r in runs]), ordered([r.failures for r in runs]),
                   list(order), [ordered([r.cls_sets[k] for r in runs]) for k in range(len(first.cls_sets))])

    def cls_probs(self) -> dict[str, np.ndarray]:
        """image_id -> the classifiers' probabilities averaged over classifiers and views (fusion by mean)."""
        if not self.cls_sets:
            return {}
        ids = set.intersection(*(set(s) for s in self.cls_sets))
        return {i: np.mean([s[i] for s in self.cls_sets], axis=0) for i in self.order if i in ids}


def batches_by_key(items: Iterable[T], key: Callable[[T], Hashable], batch_size: int,
                   max_waiting: int | None = None) -> Iterator[list[T]]:
    """Batches of up to ``batch_size`` items that share one ``key`` (for prediction: the padded input shape), so a
    batch gives each item what it gets alone. Items wait in their key's bucket until it is full; when more than
    ``max_waiting`` (default ``4 * batch_size + 16``) wait, the fullest bucket goes early (bounded memory); at the
    end the rest go in order of their keys' first item. Every item is yielded once."""
    max_waiting = 4 * batch_size + 16 if max_waiting is None else max_waiting
    buckets: dict[Hashable, list[T]] = {}
    waiting = 0
    for item in items:
        k = key(item)
        bucket = buckets.setdefault(k, [])
        bucket.append(item)
        waiting += 1
        if len(bucket) >= batch_size:
            waiting -= len(bucket)
            yield buckets.pop(k)
        elif waiting > max_waiting:
            fullest = max(buckets, key=lambda b: len(buckets[b]))
            waiting -= len(buckets[fullest])
            yield buckets.pop(fullest)
    yield from buckets.values()


def predict_all(
    predictors: Sequence[ImageModel],
    records: Sequence[InputImage],
    views: Sequence[TTAView] | None = None,
    batch_size: int = 4,
    model_weights: Sequence[float] | None = None,
    dicom_size: int = 1024,
    num_workers: int = 0,
    strict: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    classifiers: Sequence[ImageModel] = (),
) -> PredictionRun:
    """Run every detector, classifier and view on every image, decoding each batch once.

    ``predictors`` and ``classifiers`` are eager checkpoints (:class:`BatchedPredictor`, :class:`BatchedClassifier`)
    or exported files (:class:`~detx.inference.exported.ExportedPredictor`, ``ExportedClassifier``), mixed freely.

    A forward pass holds only images of one padded input shape (every model's and view's ``batch_key``), so each
    image gets what it gets alone, whatever ``batch_size`` is (bit for bit on the CPU, where an eager model runs one
    image per pass; up to float rounding in same-shape CUDA batches, which the log says); images whose original size is known up front
    (a prepared JSON, a PNG folder with meta.csv) are decoded in order of aspect ratio, so same shapes come
    together. Results are keyed by image id, in input order. With
    ``cache_dir`` each batch's raw predictions are saved (:class:`PredictionCache`; a classifier's
    probabilities as entries, one per output) and a rerun skips the images every (model, view) already
    predicted: an interrupted run resumes.

    Raises:
        UnreadableImageError: in ``strict`` mode, at the first image that cannot be decoded.
    """
    from detx.core.progress import progress_bar

    if not predictors and not classifiers:
        raise InputError("no model to predict with")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    weights = list(model_weights) if model_weights is not None else [1.0] * len(predictors)
    if len(weights) != len(predictors):
        raise InputError(f"{len(weights)} model weights for {len(predictors)} models")
    views = list(views) if views else [TTAView()]
    det_pairs = [(m, v) for m in range(len(predictors)) for v in views]
    n_det = len(det_pairs)
    jobs: list[tuple[ImageModel, TTAView]] = [(predictors[m], v) for m, v in det_pairs]
    jobs += [(c, v) for c in classifiers for v in views]
    fmt = jobs[0][0].input_format
    sets: list[dict[str, Predictions]] = [{} for _ in jobs]
    sizes: dict[str, tuple[int, int]] = {}
    failures: dict[str, str] = {}
    cache = PredictionCache(cache_dir, [mdl.cache_key(v, dicom_size) for mdl, v in jobs]) \
        if cache_dir is not None else None
    todo = list(records)
    idents = {r.image_id: r.identity() for r in records} if cache is not None else {}
    if cache is not None:
        for k, cached in enumerate(cache.load(idents)):
            sets[k].update({i: p for i, (p, _) in cached.items()})
            sizes.update({i: wh for i, (_, wh) in cached.items()})
        done = set.intersection(*(set(x) for x in sets)) if sets else set()
        if done:
            logger.info("%d of %d image(s) found in the prediction cache %s", len(done), len(todo), cache_dir)
        todo = [r for r in todo if r.image_id not in done]
    bar = progress_bar(total=len(todo), desc="predict", unit="img", disable=not progress)
    ordered = todo
    if all(r.orig_width and r.orig_height for r in ordered if r.error is None):  # same shapes come together
        ordered.sort(key=lambda r: r.orig_height / r.orig_width if r.error is None else 0.0)

    def run(group: list[LoadedImage]) -> None:
        images = [g.image for g in group]
        frames = [g.orig_size for g in group]  # what the models scale their boxes to (a crop's extent for a crop)
        orig = [sizes[g.record.image_id] for g in group]
        for k, (mdl, view) in enumerate(jobs):
            out = mdl(images, frames, view, fmt)
            preds = [g.record.from_crop(p) for g, p in zip(group, out)] if k < n_det else \
                [_probs_as_entries(p) for p in out]
            for g, p in zip(group, preds):
                sets[k][g.record.image_id] = p
            if cache is not None:
                cache.save(k, [g.record.image_id for g in group], [idents[g.record.image_id] for g in group], preds,
                           orig)
        bar.update(len(group))

    keyers = [getattr(mdl, "batch_key", None) for mdl, _ in jobs]
    inexact = [m for m, _ in jobs if not getattr(m, "exact_batching", True)]
    if batch_size > 1 and inexact:
        logger.warning("--batch-size %d on %s: images of one padded input shape share a forward pass, whose kernels "
                       "depend on the batch size: boxes and scores equal --batch-size 1 up to float rounding",
                       batch_size, ", ".join(sorted({str(getattr(m, "device", "?")) for m in inexact})))

    def decoded() -> Iterator[LoadedImage]:
        for batch in iter_batches(ordered, fmt, dicom_size, batch_size, num_workers):
            for item in batch:
                if item.error is None:
                    rec = item.record
                    sizes[rec.image_id] = (int(rec.orig_width), int(rec.orig_height)) if rec.crop else item.orig_size
                    yield item
                    continue
                if strict:
                    raise UnreadableImageError(f"image {item.record.image_id}: {item.error}")
                logger.warning("image %s cannot be read, written as no finding: %s", item.record.image_id,
                               item.error)
                failures[item.record.image_id] = item.error
                bar.update(1)

    def key(item: LoadedImage) -> tuple:  # the padded input shape under every model and view
        shape = item.image.shape[:2]
        return tuple(None if f is None else f(shape, view) for f, (_, view) in zip(keyers, jobs))

    for group in batches_by_key(decoded(), key, batch_size):
        run(group)
    bar.close()
    in_order = [r.image_id for r in records]
    sets = [{i: s[i] for i in in_order if i in s} for s in sets]
    cls_sets = [{i: p.scores for i, p in s.items()} for s in sets[n_det:]]
    return PredictionRun(sets[:n_det], [f"m{m}:{v.name}" for m, v in det_pairs], [weights[m] for m, _ in det_pairs],
                         sizes, failures, [r.image_id for r in records], cls_sets)
