"""Atomic file output: write to a temporary file beside the target, then rename over it.

An interrupted job therefore leaves either the previous file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file.
        suffix: suffix of the temporary file (defaults to ``path``'s, so writers that infer the format from
            the extension, such as ``cv2.imwrite`` or matplotlib, still work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON atomically (NaN is not valid JSON: pass None for missing numbers)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False))


def write_png(path: str | os.PathLike, img: Any) -> None:
    """Write an image array (grayscale or BGR, 8 or 16 bit) as PNG atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically and close it (also when saving fails)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path
