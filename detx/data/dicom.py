"""DICOM X-ray to PNG: the one decoding path used by data preparation and by the predictor.

:func:`load_dicom_image` is the pipeline:

1. pydicom decodes the stored values (pylibjpeg / gdcm plugins handle compressed transfer syntaxes);
2. the modality LUT (rescale slope/intercept or a LUT sequence) and the VOI LUT (a LUT sequence or
   the first window center/width) are applied with pydicom's ``apply_modality_lut`` / ``apply_voi_lut``;
3. the result is scaled to the full output range (min -> 0, max -> 255 or 65535), and MONOCHROME1
   images are inverted so that bone is bright;
4. the image is resized with its aspect ratio kept (longest side = ``size``, ``cv2.INTER_AREA``).

**JPEG 2000** (the Kaggle VinBigData DICOMs: lossless, 12-bit, MONOCHROME1, about 2,400 x 2,850 px). Its wavelet
codestream holds the image at every power-of-two resolution; when ``size`` is given, step 1 decodes only the
coarsest resolution level whose longest side is still at least ``size`` (OpenJPEG's ``reduce``, through Pillow's
bundled OpenJPEG), which skips most of the decoding work, and steps 2-4 run on it; the resize goes to the size
computed from the *original* Rows/Columns, so the PNG has the same shape as before. When the full level is needed
(``size`` None or above half the longest side) the file takes the ordinary path and the PNG is bit-identical.
The reduced level is the wavelet's low-pass image, not an area average, so the PNG differs slightly from the full
decode's (measured in docs/data-preparation.md); a codestream Pillow cannot reduce falls back to the full decode.

Steps 2-3 are pointwise functions of the stored integer value, so they are evaluated once per
distinct value (a lookup table over ``[min, max]`` of the stored values) and applied with one
indexing pass, in 16 bits; the resize then runs on the 16-bit image and 8-bit output is rounded from
it. This gives the float pipeline's result within one gray level at a fraction of its cost.

:func:`convert_dicoms` converts many files in parallel (``workers`` processes, a tqdm bar) and
skips images converted before with the same settings (a journal of settings fingerprints).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000, JPEG2000Lossless

from detx.core.errors import InputError, MissingFileError
from detx.core.io import atomic_write_text, write_png
from detx.core.progress import progress_bar

logger = logging.getLogger(__name__)

#: bump when the decoding changes, so a second run re-converts instead of skipping
DECODER_VERSION = 2  # 2: JPEG 2000 decoded at a reduced resolution level
DICOM_SUFFIXES: tuple[str, ...] = (".dicom", ".dcm")
#: largest stored-value range decoded through a lookup table (larger ranges take the float path)
MAX_TABLE = 1 << 20
#: transfer syntaxes decoded at a reduced resolution level when the output is smaller (JPEG 2000 part 1)
J2K_SYNTAXES: frozenset[str] = frozenset({str(JPEG2000Lossless), str(JPEG2000)})


class DicomError(InputError):
    """A DICOM file that cannot be decoded (the message names the file)."""


def read_dicom(path: str | os.PathLike) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as e:  # pydicom raises several types for broken files
        raise DicomError(f"{path}: cannot read DICOM: {e}") from e


def _file_size(path: str | os.PathLike) -> str:
    try:
        return f"{os.path.getsize(path)} bytes"
    except OSError:
        return "size unknown"


def _stored_pixels(ds: pydicom.Dataset, path: str | os.PathLike) -> np.ndarray:
    pixel_keys = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(k in ds for k in pixel_keys) and "Rows" in ds and "Columns" in ds:
        # the header describes an image but the file ends before its pixels (an interrupted copy or download)
        raise DicomError(f"{path}: truncated file ({_file_size(path)}): its header describes a {ds.Columns} x "
                         f"{ds.Rows} image but the file ends before the pixel data")
    try:
        raw = ds.pixel_array
    except Exception as e:
        if "less than expected" in str(e):
            raise DicomError(f"{path}: truncated file ({_file_size(path)}): {e}") from e
        raise DicomError(f"{path}: cannot decode pixel data "
                         f"(transfer syntax {getattr(ds.file_meta, 'TransferSyntaxUID', '?')}): {e}") from e
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise DicomError(f"{path}: {ds.SamplesPerPixel} samples per pixel; only grayscale X-rays are supported")
    if raw.ndim == 3:
        logger.warning("%s: %d frames; using the first", path, raw.shape[0])
        raw = raw[0]
    if raw.ndim != 2 or raw.size == 0:
        raise DicomError(f"{path}: pixel data of shape {raw.shape} is not a 2-D image")
    if not np.issubdtype(raw.dtype, np.integer):
        raise DicomError(f"{path}: floating point pixel data is not supported")
    return raw


def _chain(ds: pydicom.Dataset, lo: int, hi: int) -> np.ndarray:
    """Modality LUT then VOI LUT / window of every stored value ``lo..hi`` (float64)."""
    values = np.arange(lo, hi + 1, dtype=np.int64)
    return np.asarray(apply_voi_lut(apply_modality_lut(values, ds), ds), dtype=np.float64)


def _is_affine(out: np.ndarray) -> bool:
    """Whether the values lie on the straight line through their first and last points."""
    if len(out) <= 2:
        return True
    line = np.linspace(out[0], out[-1], len(out))
    return bool(np.abs(out - line).max() <= 1e-9 * max(abs(out[-1] - out[0]), 1.0))


def full_range_lut(ds: pydicom.Dataset, lo: int, hi: int, idx: np.ndarray | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """uint16 table mapping stored values ``lo..hi`` through the modality LUT, the VOI LUT or window,
    full-range scaling to 0..65535 and MONOCHROME1 inversion.

    Args:
        ds: the DICOM dataset (its LUT / window / photometric attributes are used).
        lo: the smallest stored value of the image.
        hi: the largest stored value of the image.
        idx: optional stored values minus ``lo``; only used when the VOI LUT is not monotonic, to take
            the scaling range over the values that occur (a monotonic table has them at its ends).
        out: the precomputed :func:`_chain` of ``lo..hi``.
    """
    out = _chain(ds, lo, hi) if out is None else out
    diff = np.diff(out)
    if idx is not None and not ((diff >= 0).all() or (diff <= 0).all()):
        present = np.bincount(idx.ravel(), minlength=hi - lo + 1) > 0
        vmin, vmax = float(out[present].min()), float(out[present].max())
    else:
        vmin, vmax = float(out.min()), float(out.max())
    if vmax > vmin:
        scaled = (np.clip(out, vmin, vmax) - vmin) * (65535.0 / (vmax - vmin))
    else:
        scaled = np.zeros_like(out)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        scaled = 65535.0 - scaled
    return np.rint(scaled).astype(np.uint16)


def j2k_reduce_level(width: int, height: int, size: int | None, levels: int) -> int:
    """The coarsest JPEG 2000 resolution level (0 = full) whose longest side, ``ceil(side / 2**r)``, is still at
    least ``size``; at most ``levels`` (the codestream's wavelet decomposition levels); 0 when ``size`` is None."""
    if not size:
        return 0
    r = 0
    while r < levels and max(-(-width // (1 << (r + 1))), -(-height // (1 << (r + 1)))) >= size:
        r += 1
    return r


def _j2k_codestream_info(frame: bytes) -> tuple[int, int, bool] | None:
    """(decomposition levels, bit precision, signed) of a JPEG 2000 codestream's first component, from its SIZ
    and COD marker segments; None when they cannot be found."""
    if not frame.startswith(b"\xff\x4f\xff\x51"):  # SOC then SIZ: a raw codestream (DICOM's form)
        return None
    ssiz = frame[4 + 2 + 2 + 32 + 2] if len(frame) > 42 else None  # Lsiz, Rsiz, 8 x 4-byte sizes, Csiz
    cod = frame.find(b"\xff\x52")
    if ssiz is None or cod < 0 or len(frame) < cod + 10:
        return None
    return frame[cod + 9], (ssiz & 0x7F) + 1, bool(ssiz & 0x80)  # Lcod, Scod, SGcod (4), then levels


def _reduced_j2k_pixels(ds: pydicom.Dataset, size: int | None) -> np.ndarray | None:
    """The stored values at the coarsest JPEG 2000 resolution level still at least ``size`` on the longest side;
    None when the full level is needed or the file is not a single-frame unsigned grayscale JPEG 2000 image that
    Pillow's OpenJPEG can reduce (the caller then decodes it in full)."""
    if not size or str(getattr(ds.file_meta, "TransferSyntaxUID", "")) not in J2K_SYNTAXES:
        return None
    if (int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("PixelRepresentation", 0)) != 0
            or int(ds.get("NumberOfFrames", 1) or 1) != 1):
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # noqa: BLE001 - malformed encapsulation: the full decoder reports it
        return None
    info = _j2k_codestream_info(frame)
    if info is None or info[2] or info[1] > 16:
        return None
    levels, precision, _ = info
    r = j2k_reduce_level(int(ds.Columns), int(ds.Rows), size, levels)
    while r > 0:
        try:
            with Image.open(io.BytesIO(frame)) as im:
                im.reduce = r
                im.load()
                arr = np.asarray(im)
        except Exception as e:  # noqa: BLE001 - some codestreams fail at deep levels in OpenJPEG: try a finer one
            logger.debug("JPEG 2000 reduce=%d failed (%s); trying %d", r, e, r - 1)
            r -= 1
            continue
        if arr.ndim != 2:
            return None
        shift = 16 - precision if arr.dtype == np.uint16 else 0  # Pillow widens 9-15 bit data to 16 bits
        if shift and (arr & ((1 << shift) - 1)).any():
            return None  # not the widening we expect: decode in full
        return (arr >> shift).astype(np.uint16) if shift else arr
    return None


def dicom_to_uint16(ds: pydicom.Dataset, path: str | os.PathLike = "<dataset>", size: int | None = None) -> np.ndarray:
    """The image after LUTs, full-range scaling (0..65535), MONOCHROME1 inversion and resizing.

    When the LUT chain is affine over the image's values (no VOI window clipping inside them, no
    non-linear LUT) it commutes with area resizing, so the stored values are resized first and the
    table is applied to the small image; otherwise the table is applied at full resolution. A JPEG 2000
    image is decoded at the coarsest resolution level still at least ``size`` (module docstring).
    """
    target = resized_shape(int(ds.Columns), int(ds.Rows), size) if size else None
    raw = _reduced_j2k_pixels(ds, size)
    if raw is None:
        raw = _stored_pixels(ds, path)
        target = resized_shape(raw.shape[1], raw.shape[0], size) if size else None
    lo, hi = int(raw.min()), int(raw.max())
    if raw.dtype not in (np.uint8, np.uint16, np.int16) or hi - lo > MAX_TABLE:
        return _float_pipeline(ds, raw, target)  # e.g. 32-bit data: a table would be too large
    chain = _chain(ds, lo, hi)
    if _is_affine(chain):
        table = full_range_lut(ds, lo, hi, out=chain)
        small = resize_to(raw, target)
        return table[small if lo == 0 else small.astype(np.int32) - lo]
    if lo >= 0:  # index with the stored values themselves: no subtraction pass over the image
        idx = raw
        table = np.concatenate([np.zeros(lo, np.uint16), full_range_lut(ds, lo, hi, raw.astype(np.int32) - lo
                                                                        if _needs_present(chain) else None, chain)])
    else:
        idx = raw.astype(np.int32) - lo
        table = full_range_lut(ds, lo, hi, idx, chain)
    return resize_to(table[idx], target)


def _float_pipeline(ds: pydicom.Dataset, raw: np.ndarray, target: tuple[int, int] | None) -> np.ndarray:
    """The same steps on the whole image in floating point (for data a lookup table does not suit)."""
    out = np.asarray(apply_voi_lut(apply_modality_lut(raw, ds), ds), dtype=np.float64)
    vmin, vmax = float(out.min()), float(out.max())
    out = (out - vmin) * (65535.0 / (vmax - vmin)) if vmax > vmin else np.zeros_like(out)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        out = 65535.0 - out
    out = resize_to(out.astype(np.float32), target)
    return np.rint(np.clip(out, 0, 65535)).astype(np.uint16)


def _needs_present(out: np.ndarray) -> bool:
    diff = np.diff(out)
    return not ((diff >= 0).all() or (diff <= 0).all())


def resized_shape(width: int, height: int, size: int | None) -> tuple[int, int]:
    """(width, height) with the longest side ``size`` and the aspect ratio kept (unchanged when size is None)."""
    if not size:
        return width, height
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_longest(img: np.ndarray, size: int | None) -> np.ndarray:
    """Resize so the longest side is ``size`` (aspect kept, ``cv2.INTER_AREA``); None keeps the image."""
    h, w = img.shape[:2]
    new_w, new_h = resized_shape(w, h, size)
    if (new_w, new_h) == (w, h):
        return img
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)


def resize_to(img: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """Resize to ``shape`` = (width, height) with ``cv2.INTER_AREA``; None or the same shape keeps the image."""
    if shape is None or (img.shape[1], img.shape[0]) == tuple(shape):
        return img
    return cv2.resize(img, tuple(shape), interpolation=cv2.INTER_AREA)


def to_uint8(img16: np.ndarray) -> np.ndarray:
    """Round a 0..65535 image to 0..255."""
    return ((img16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def load_dicom_image(
    path: str | os.PathLike, size: int | None = None, bit_depth: int = 8,
) -> tuple[np.ndarray, int, int]:
    """Decode a DICOM exactly as data preparation does.

    Args:
        path: the DICOM file.
        size: longest side of the output (None: original resolution).
        bit_depth: 8 (uint8) or 16 (uint16).

    Returns:
        (image (H, W) uint8 or uint16, original width, original height).

    Raises:
        DicomError: the file cannot be read or decoded.
    """
    img, ds = _load(path, size, bit_depth)
    return img, int(ds.Columns), int(ds.Rows)


def _load(path: str | os.PathLike, size: int | None, bit_depth: int) -> tuple[np.ndarray, pydicom.Dataset]:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    ds = read_dicom(path)
    try:
        img = dicom_to_uint16(ds, path, size)
    except DicomError:
        raise
    except Exception as e:  # a malformed LUT or window attribute
        raise DicomError(f"{path}: cannot apply the modality/VOI LUT: {e}") from e
    return (to_uint8(img) if bit_depth == 8 else img), ds


def dicom_attributes(ds: pydicom.Dataset) -> dict[str, str | float | int]:
    """Header attributes worth keeping per image (meta.csv): photometric, bits, sex, age, pixel spacing (mm; NaN when
    unknown, including a spacing of 0, which means "not given")."""
    spacing_mm = float("nan")  # unknown (an empty cell in meta.csv): absent, unparsable, or 0 (pydicom-data's RG1)
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = float(ds.get(key)[0])
        except (TypeError, ValueError, IndexError):
            continue
        if np.isfinite(value) and value > 0:
            spacing_mm = value
            break
    return {
        "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "patient_sex": str(ds.get("PatientSex", "") or "").strip(),
        "patient_age": str(ds.get("PatientAge", "") or "").strip(),
        "pixel_spacing_mm": spacing_mm,
    }


@dataclass
class ConvertResult:
    """Outcome of one DICOM -> PNG conversion (``error`` set when it failed)."""

    image_id: str
    orig_width: int = 0
    orig_height: int = 0
    width: int = 0
    height: int = 0
    key: str = ""
    error: str = ""
    skipped: bool = False
    attributes: dict = field(default_factory=dict)  # dicom_attributes() of the file
    png_bytes: int = 0  # size and CRC-32 of the PNG written, so a rerun can verify what it skips
    png_crc32: int = 0


def file_crc32(path: str | os.PathLike, chunk: int = 1 << 20) -> int:
    """CRC-32 of a file's bytes (zlib's, read in 1 MiB chunks)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def conversion_key(src: str | os.PathLike, size: int | None, bit_depth: int) -> str:
    """Fingerprint of the settings and the source file (size, mtime): equal keys mean the PNG is current."""
    st = os.stat(src)
    text = json.dumps({"v": DECODER_VERSION, "size": size, "bit_depth": bit_depth,
                       "src_bytes": st.st_size, "src_mtime_ns": st.st_mtime_ns}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def convert_dicom(image_id: str, src: str | os.PathLike, dst: str | os.PathLike, size: int | None,
                  bit_depth: int = 8) -> ConvertResult:
    """Convert one DICOM to PNG; failures are returned in ``error`` (never raised), for worker pools."""
    try:
        key = conversion_key(src, size, bit_depth)
        img, ds = _load(src, size, bit_depth)
        write_png(dst, img)
        return ConvertResult(image_id, int(ds.Columns), int(ds.Rows), img.shape[1], img.shape[0], key,
                             attributes=dicom_attributes(ds), png_bytes=os.path.getsize(dst),
                             png_crc32=file_crc32(dst))
    except Exception as e:
        msg = str(e) if isinstance(e, DicomError) else f"{src}: {type(e).__name__}: {e}"
        return ConvertResult(image_id, error=msg)


def _pool_context() -> mp.context.BaseContext:
    """Worker processes that do not inherit this process's threads (OpenCV's thread pool, tqdm's monitor):
    a plain fork of a threaded process can deadlock in the child. The fork server starts from a clean
    interpreter with this module and the main script imported, then forks each worker cheaply."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", __name__])  # workers start with both imported
        return ctx
    return mp.get_context("spawn")


def _worker_init(main_pid: int) -> None:
    cv2.setNumThreads(1)  # the processes are the parallelism; OpenCV threads on top would oversubscribe
    # Ctrl-C reaches the whole process group: the parent stops the pool, the workers must not print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(main_pid,), name="detx-watchdog", daemon=True).start()


def _exit_with(main_pid: int, period: float = 0.5) -> None:
    """End this worker when the process that started the pool is gone (``kill -9``, the OOM killer).

    A worker's parent is the fork server, not that process, and it holds both ends of its task queue and a copy
    of the fork server's liveness pipe, so without this it would wait forever and keep the fork server alive.
    Once the workers are gone, the fork server and multiprocessing's resource tracker see EOF and exit too.
    """
    while True:
        time.sleep(period)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # pragma: no cover - the pid was reused by another user's process
            os._exit(1)


def convert_png(image_id: str, src: str | os.PathLike, dst: str | os.PathLike, size: int | None,
                bit_depth: int = 8) -> ConvertResult:
    """Convert one 8- or 16-bit PNG (grayscale, BGR or BGRA, e.g. MURA's radiographs) to the prepared grayscale PNG
    (longest side ``size``, aspect kept, area interpolation); failures are returned in ``error``, never raised."""
    try:
        key = conversion_key(src, size, bit_depth)
        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            return ConvertResult(image_id, error=f"{src}: cannot read the image (missing, truncated or not a PNG)")
        channels = 1 if img.ndim == 2 else img.shape[2]
        if channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        elif channels != 1:
            return ConvertResult(image_id, error=f"{src}: {channels} channels; expected grayscale, BGR or BGRA")
        if img.dtype == np.uint8:
            img16 = img.astype(np.uint16) * 257
        elif img.dtype == np.uint16:
            img16 = img
        else:
            return ConvertResult(image_id, error=f"{src}: pixel type {img.dtype}; expected 8 or 16 bit")
        h, w = img16.shape[:2]
        small = resize_longest(img16, size)
        out = to_uint8(small) if bit_depth == 8 else small
        write_png(dst, out)
        return ConvertResult(image_id, w, h, out.shape[1], out.shape[0], key, attributes={"channels": channels},
                             png_bytes=os.path.getsize(dst), png_crc32=file_crc32(dst))
    except Exception as e:  # noqa: BLE001 - one bad file must not stop a worker pool
        return ConvertResult(image_id, error=f"{src}: {type(e).__name__}: {e}")


#: what :func:`convert_dicoms` can convert from
CONVERTERS: dict[str, Callable[..., ConvertResult]] = {"dicom": convert_dicom, "png": convert_png}


def _convert_job(args: tuple) -> ConvertResult:
    return CONVERTERS[args[0]](*args[1:])


class ConversionJournal:
    """Append-only record of finished conversions (``<dir>/.convert.jsonl``); survives interruption."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                    self.entries[e["image_id"]] = e
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by an interruption
        self._fh = None

    def done(self, image_id: str, key: str, dst: Path) -> ConvertResult | None:
        """The recorded result when ``dst`` is the PNG that conversion wrote: same settings, same byte count and
        CRC-32 (a truncated, damaged or replaced PNG is converted again); None otherwise."""
        e = self.entries.get(image_id)
        if e is None or e.get("key") != key or not dst.exists():
            return None
        try:
            if dst.stat().st_size != e.get("png_bytes") or file_crc32(dst) != e.get("png_crc32"):
                logger.warning("%s differs from the PNG converted earlier (damaged or replaced): converting again",
                               dst)
                return None
        except OSError:
            return None
        return ConvertResult(image_id, e["orig_width"], e["orig_height"], e["width"], e["height"], key,
                             skipped=True, attributes=e.get("attributes", {}), png_bytes=e["png_bytes"],
                             png_crc32=e["png_crc32"])

    def record(self, r: ConvertResult) -> None:
        entry = {k: v for k, v in asdict(r).items() if k not in ("error", "skipped")}
        self.entries[r.image_id] = entry
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()

    def close(self, keep: Iterable[str] | None = None) -> None:
        """Close, and compact the journal to the entries of ``keep`` (all when None)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        entries = self.entries if keep is None else {k: self.entries[k] for k in keep if k in self.entries}
        if self.path.exists() or entries:
            atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in entries.values()))


def convert_dicoms(
    jobs: Sequence[tuple[str, str | os.PathLike, str | os.PathLike]],
    size: int | None,
    bit_depth: int = 8,
    workers: int = 1,
    journal: str | os.PathLike | None = None,
    on_error: Callable[[ConvertResult], None] | None = None,
    progress: bool = True,
    source: str = "dicom",
) -> dict[str, ConvertResult]:
    """Convert ``(image_id, dicom_path, png_path)`` jobs, in ``workers`` processes.

    Args:
        jobs: what to convert.
        source: ``"dicom"`` (:func:`convert_dicom`) or ``"png"`` (:func:`convert_png`, radiographs already in PNG).
        size: longest side of the PNGs (None: original resolution).
        bit_depth: 8 or 16.
        workers: processes (1: in this process).
        journal: path of the conversion journal; a job whose PNG exists and whose journal entry has
            the same :func:`conversion_key` is skipped.
        on_error: called with each failed result as it arrives; it may raise to stop the run (strict
            mode), which cancels the jobs not yet started.
        progress: show a tqdm bar.

    Returns:
        image_id -> result (failed ones have ``error`` set).
    """
    if source not in CONVERTERS:
        raise InputError(f"unknown image source {source!r}; expected one of {sorted(CONVERTERS)}")
    log = ConversionJournal(journal) if journal is not None else None
    results: dict[str, ConvertResult] = {}
    todo = []
    for image_id, src, dst in jobs:
        dst = Path(dst)
        if log is not None:
            try:
                prev = log.done(image_id, conversion_key(src, size, bit_depth), dst)
            except OSError:
                prev = None
            if prev is not None:
                results[image_id] = prev
                continue
        todo.append((source, image_id, str(src), str(dst), size, bit_depth))
    if results:
        logger.info("%d of %d images already converted with the same settings; skipped", len(results), len(jobs))

    def handle(r: ConvertResult) -> None:
        results[r.image_id] = r
        if r.error:
            if on_error is not None:
                on_error(r)
        elif log is not None:
            log.record(r)

    desc = "DICOM -> PNG" if source == "dicom" else "PNG -> PNG"
    bar = progress_bar(total=len(todo), desc=desc, unit="img", disable=not progress or not todo)
    try:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                handle(_convert_job(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_worker_init,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_convert_job, job) for job in todo]
                try:
                    for fut in as_completed(futures):
                        handle(fut.result())
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
        if log is not None:
            log.close()
    return results


def dicom_image_id(path: str | os.PathLike) -> str:
    """The image id of a DICOM file: its name minus a ``.dicom`` / ``.dcm`` suffix, and nothing else.

    PACS exports name files by SOP Instance UID without an extension (``1.2.840.113619.2.55.3.604688.12``):
    the dots belong to the id, so ``Path.stem`` would be wrong.
    """
    name = Path(path).name
    for suffix in DICOM_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def has_dicom_marker(path: str | os.PathLike) -> bool:
    """Whether the file carries the DICOM Part 10 marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A ``.dicom`` / ``.dcm`` file, or any other file (with or without dots in its name) that carries the
    ``DICM`` marker; hidden files and ``DICOMDIR`` index files are not images."""
    path = Path(path)
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR" or not path.is_file():
        return False
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_marker(path)


def find_dicoms(root: str | os.PathLike) -> tuple[dict[str, Path], list[tuple[str, Path, Path]]]:
    """The DICOM files under ``root``, recursively (:func:`is_dicom_file`), keyed by :func:`dicom_image_id`.

    This is the one discovery of DICOM files: preparation and prediction both call it.

    Returns:
        (image_id -> path, [(image_id, kept path, duplicate path), ...] for ids seen twice; the first in
        sorted path order is kept).

    Raises:
        MissingFileError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"DICOM folder not found: {root}")
    found: dict[str, Path] = {}
    duplicates = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts[:-1]):
            continue  # inside a hidden folder (e.g. .cache)
        if not is_dicom_file(p):
            continue
        image_id = dicom_image_id(p)
        if image_id in found:
            duplicates.append((image_id, found[image_id], p))
        else:
            found[image_id] = p
    return found, duplicates


#: the suffixes of the PNG images a folder input may hold (prediction of a prepared ``images/`` folder, MURA)
PNG_SUFFIXES: tuple[str, ...] = (".png",)


def png_image_id(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The image id of a PNG under ``root``: its path relative to ``root`` without the suffix, ``/``-separated
    (``im0`` in a flat folder; ``study1_positive/image1`` in a MURA patient folder, whose file names repeat)."""
    rel = Path(path).relative_to(root)
    return rel.with_suffix("").as_posix()


def find_pngs(root: str | os.PathLike) -> dict[str, Path]:
    """The PNG files under ``root``, recursively (hidden files and folders skipped), keyed by :func:`png_image_id`.

    The PNG counterpart of :func:`find_dicoms`: prediction calls both and refuses a folder that holds both kinds.

    Raises:
        MissingFileError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"PNG folder not found: {root}")
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or p.suffix.lower() not in PNG_SUFFIXES or not p.is_file():
            continue
        found[png_image_id(p, root)] = p
    return found
