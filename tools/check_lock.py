#!/usr/bin/env python
"""Check that the running environment holds exactly the versions of the lock (requirements-lock.txt).

Every package the lock pins must be installed at the pinned version; packages installed beyond the lock (a
developer's jupyter) are listed but allowed. Called by tools/install.sh after installing, and by the tests.

    python tools/check_lock.py [--lock requirements-lock.txt]      exit 0: equal, 1: a difference (printed)
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements-lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 normalizes it (``Pillow`` -> ``pillow``, ``pydicom_data`` -> ``pydicom-data``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path = LOCK) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a pip requirements lock (hash lines skipped)."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = PIN.match(line.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    """name -> version of every distribution the running Python sees."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def lock_differences(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """What differs: ``name: locked X, installed Y`` or ``name: locked X, not installed``."""
    out = []
    for name, version in sorted(lock.items()):
        if name not in have:
            out.append(f"{name}: locked {version}, not installed")
        elif have[name] != version:
            out.append(f"{name}: locked {version}, installed {have[name]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lock", default=str(LOCK), help="the lock file (default: requirements-lock.txt)")
    args = p.parse_args(argv)
    lock = read_lock(args.lock)
    if not lock:
        print(f"{args.lock}: no name==version lines", file=sys.stderr)
        return 1
    diffs = lock_differences(lock, installed())
    for d in diffs:
        print(d, file=sys.stderr)
    if diffs:
        print(f"{len(diffs)} package(s) differ from {args.lock}: run `make install`", file=sys.stderr)
        return 1
    print(f"the environment holds the {len(lock)} locked versions of {args.lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
