"""The one error base of detx, and what each kind of error means for a command's exit status.

Library code raises; only the command-line scripts print and exit. Every error a user can cause (a bad
argument, a file that does not exist or does not fit, input that cannot be read) is a :class:`DetxError`,
and each CLI catches that one class:

- exit status 2: bad arguments or input (:class:`DetxError`, :class:`InputError`);
- exit status 1: a problem that lenient mode would have skipped and reported, raised because ``--strict``
  was given (:class:`StrictModeError`).
"""

from __future__ import annotations


class DetxError(Exception):
    """Base of every error detx raises for a user's input; ``exit_status`` is what a CLI exits with."""

    exit_status: int = 2


class InputError(DetxError, ValueError):
    """Bad arguments or input (a missing file, a value out of range, files that do not match)."""


class StrictModeError(DetxError):
    """A problem that lenient mode skips with a warning, raised because strict mode was asked for."""

    exit_status = 1


class MissingFileError(DetxError, FileNotFoundError):
    """A file or folder the user named does not exist."""
