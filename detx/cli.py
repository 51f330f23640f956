"""What every command-line script shares (the top layer, above the workflows): ``--version``, logging, and the
one translation of errors into exit statuses.

Exit status everywhere: 0 done; 1 a problem under ``--strict`` (:class:`detx.core.errors.StrictModeError`);
2 bad arguments or input (any other :class:`detx.core.errors.DetxError`, or a file the system cannot open);
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import detx
from detx.core.errors import DetxError, StrictModeError

EXIT_OK = 0
EXIT_STRICT = StrictModeError.exit_status
EXIT_BAD_INPUT = DetxError.exit_status
EXIT_INTERRUPTED = 130


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
    from detx.workflows.prepare_mura import add_mura_arguments, prepare_mura_from_args
    from detx.workflows.prepare_openi import add_openi_arguments, prepare_openi_from_args

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if dataset == "mura":
        add_mura_arguments(parser)
    elif dataset == "openi":
        add_openi_arguments(parser)
    else:
        add_prepare_arguments(parser, dataset)
    args = add_version(parser).parse_args(argv)
    setup_logging(logging.INFO)

    def prepare() -> int:
        if dataset == "mura":
            summary = prepare_mura_from_args(args)
        elif dataset == "openi":
            summary = prepare_openi_from_args(args)
        else:
            summary = prepare_from_args(args, dataset)
        print(summary.format())
        return EXIT_OK

    return run(prepare)
