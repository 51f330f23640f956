"""Progress bars: tqdm on a terminal; plain lines (no carriage returns, one a minute) when the output is a file or
a pipe, so that logs of long runs stay readable. The one place that makes a bar (:func:`progress_bar`)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LINE_INTERVAL_S", "progress_bar"]

#: seconds between progress lines when the output is not a terminal
LINE_INTERVAL_S = 60.0


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "").strip("\n")
        if text.strip():
            self._stream.write(text + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Any = None, *, stream: TextIO | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr (or ``stream``): a live bar on a terminal; otherwise ASCII lines at most
    one per :data:`LINE_INTERVAL_S` seconds (and the last), each a whole line."""
    stream = stream or sys.stderr
    if not _is_terminal(stream):
        kwargs = {"mininterval": LINE_INTERVAL_S, "ascii": True, "dynamic_ncols": False, "ncols": 80, **kwargs,
                  "file": _Lines(stream)}
    else:
        kwargs.setdefault("file", stream)
    return tqdm(iterable, **kwargs)
