"""What every command-line script shares (the top layer, above the workflows): ``--version``, logging, and the
one translation of errors into exit statuses.

Exit status everywhere: 0 done; 1 a problem under ``--strict`` (:class:`detx.core.errors.StrictModeError`);
2 bad arguments or input (any other :class:`detx.core.errors.DetxError`, or a file the system cannot open);
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import detx
from detx.core.errors import DetxError, StrictModeError

EXIT_OK = 0
EXIT_STRICT = StrictModeError.exit_status
EXIT_BAD_INPUT = DetxError.exit_status
EXIT_INTERRUPTED = 130


#: library messages every run printed that no user can act on: (warning category, message regex)
LIBRARY_NOISE: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),  # at detectron2's import
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),  # detectron2's anchor generator
)
#: loggers whose warnings are not the user's business (torch's one-time ``is_fx_tracing`` notice)
NOISY_LOGGERS: tuple[str, ...] = ("torch.fx._symbolic_trace",)


def silence_library_noise() -> None:
    """Hide the library warnings listed in :data:`LIBRARY_NOISE` and :data:`NOISY_LOGGERS`, and pydicom's second copy
    of each of its warnings (its ``warn_and_log`` logs, then ``warnings.warn``s them; the log line stays). Called when the
    scripts import this module, before detectron2 is imported; ``DETX_LIBRARY_WARNINGS=1`` keeps them all."""
    if os.environ.get("DETX_LIBRARY_WARNINGS", "") not in ("", "0"):
        return
    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, _RememberMessages) for f in pydicom_logger.filters):
        remember = _RememberMessages()
        pydicom_logger.addFilter(remember)
        warnings.showwarning = _skip_logged(warnings.showwarning, remember)


class _RememberMessages(logging.Filter):
    """Lets every record through and remembers the last messages (pydicom logs each warning, then warns it)."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.recent: collections.deque[str] = collections.deque(maxlen=size)

    def filter(self, record: logging.LogRecord) -> bool:
        self.recent.append(record.getMessage())
        return True


def _skip_logged(show: Callable[..., None], logged: _RememberMessages) -> Callable[..., None]:
    """``warnings.showwarning`` that drops a warning whose text was just logged (pydicom's ``warn_and_log``)."""

    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' API
        if str(message) in logged.recent:
            return
        show(message, category, filename, lineno, file, line)

    return showwarning


silence_library_noise()


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` (prints ``<prog> (detx X.Y.Z)``)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (detx {detx.__version__})")
    return parser


#: a detectron2/detx config key (``MODEL.DEVICE``, ``DETX.AUG.HFLIP_PROB``), the start of the ``KEY VALUE`` overrides
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the trailing ``KEY VALUE`` config overrides split off first (list options such as
    ``--weights W [W ...]`` would otherwise swallow them); they end up in ``args.opts``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = next((i for i, t in enumerate(argv) if CONFIG_KEY.match(t)), len(argv))
    args = parser.parse_args(argv[:cut])
    args.opts = list(getattr(args, "opts", None) or []) + argv[cut:]
    return args


def setup_logging(level: int = logging.WARNING) -> None:
    """One plain console format for the library's warnings (no colour codes)."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def run(main: Callable[[], int | None]) -> int:
    """Call ``main`` and return its exit status; a :class:`DetxError` or an unopenable file becomes one line on
    stderr and status 2 (1 for a strict-mode stop), Ctrl-C one line and 130, never a traceback."""
    try:
        return int(main() or 0)
    except DetxError as e:
        prefix = "error (--strict)" if e.exit_status == EXIT_STRICT else "error"
        print(f"{prefix}: {e}", file=sys.stderr)
        return e.exit_status
    except OSError as e:  # a path the user gave that the system cannot open (permissions, a folder for a file)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def exits(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a script's ``main(args)`` so that it returns an exit status through :func:`run`."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        return run(lambda: main(*args, **kwargs))

    return wrapper


def prepare_main(dataset: str, description: str, argv: list[str] | None = None) -> int:
    """The whole of ``datasets/prepare_<dataset>.py``: parse, prepare, print the summary; the exit status."""
    from detx.workflows.prepare import add_prepare_arguments, prepare_from_args
    from detx.workflows.prepare_lung_masks import add_lung_mask_arguments, prepare_lung_masks_from_args
    from detx.workflows.prepare_mura import add_mura_arguments, prepare_mura_from_args
    from detx.workflows.prepare_openi import add_openi_arguments, prepare_openi_from_args

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if dataset == "mura":
        add_mura_arguments(parser)
    elif dataset == "openi":
        add_openi_arguments(parser)
    elif dataset == "lungs":
        add_lung_mask_arguments(parser)
    else:
        add_prepare_arguments(parser, dataset)
    args = add_version(parser).parse_args(argv)
    setup_logging(logging.INFO)

    def prepare() -> int:
        if dataset == "mura":
            summary = prepare_mura_from_args(args)
        elif dataset == "openi":
            summary = prepare_openi_from_args(args)
        elif dataset == "lungs":
            summary = prepare_lung_masks_from_args(args)
        else:
            summary = prepare_from_args(args, dataset)
        print(summary.format())
        return EXIT_OK

    return run(prepare)
