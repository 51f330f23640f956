"""Atomic file output: write to a temporary file beside the target, then rename over it.

An interrupted job therefore leaves either the previous file or none, never a partial one. The final file gets
the permissions any new file of the user would (``0666`` less the umask), not the ``0600`` of a temporary file,
so a prepared dataset or a submission stays readable to the user's group and to containers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detx.core.errors import InputError

LOCK_NAME = ".detx.lock"


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        os.chmod(tmp_path, 0o666 & ~current_umask())
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


class FolderInUseError(InputError):
    """Another detx run holds the output folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``folder/.detx.lock``, a ``filelock`` lock released by the system when
    the process dies) for the block, so that two runs never write into the same folder at once. A folder the lock
    created is removed again when the block wrote nothing into it (a run stopped by bad input).

    Raises:
        FolderInUseError: at once, when another run holds it; the message names the folder and that run (pid,
            host, start time, command line).
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME))
    owner = folder / f"{LOCK_NAME}.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            o = json.loads(owner.read_text(encoding="utf-8"))
            other = f"pid {o['pid']} on {o['host']}, started {o['started']}: {o['command']}"
        except (OSError, ValueError, KeyError):
            other = "its details are not recorded"
        raise FolderInUseError(f"{what} {folder} is in use by another detx run ({other}); wait for it to finish, "
                               "stop it, or choose another folder") from None
    try:
        write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                           "started": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)})
        yield folder
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
        if created:  # a run that stopped before writing anything leaves no folder holding only the lock behind
            _remove_if_only_lock(folder)


def _remove_if_only_lock(folder: Path) -> None:
    try:
        if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:  # another run took the folder meanwhile, or it cannot be listed: leave it
        pass
