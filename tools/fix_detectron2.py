#!/usr/bin/env python
"""Make an installed detectron2's ``model_zoo`` independent of ``pkg_resources`` (run by tools/install.sh).

detectron2's ``model_zoo.py`` (upstream and the pure-Python ``sal-detectron2`` build alike) starts with
``import pkg_resources``, only to call ``pkg_resources.resource_filename`` on its own shipped configs. setuptools
81+ no longer ships ``pkg_resources``, so ``from detectron2 import model_zoo`` fails with ``ModuleNotFoundError``.
This script replaces that one import line in the installed file with a module-local stand-in that answers the
same call from the standard library (``importlib.resources``). Nothing outside detectron2 sees it: no global
``pkg_resources`` module is created (other packages probe for the real one and must keep their fallbacks), and no
setuptools version is pinned (the fix holds for every setuptools, past and future). Running it again does nothing.

    python tools/fix_detectron2.py [--path .../detectron2/model_zoo/model_zoo.py]

Exit status: 0 fixed or nothing to fix, 1 the file uses pkg_resources in a way the stand-in does not cover.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

IMPORT_LINE = re.compile(r"^import pkg_resources[ \t]*$", re.MULTILINE)
USES = re.compile(r"\bpkg_resources\.(\w+)")
MARKER = "# detx (tools/fix_detectron2.py)"
STAND_IN = f'''\
class pkg_resources:  {MARKER}: setuptools >= 81 has no pkg_resources; this answers the one call made here
    @staticmethod
    def resource_filename(package: str, resource: str) -> str:
        import importlib.resources

        return str(importlib.resources.files(package).joinpath(resource))'''


class FixError(RuntimeError):
    """The file uses ``pkg_resources`` beyond ``resource_filename``: the stand-in would not cover it."""


def model_zoo_file() -> Path:
    """``detectron2/model_zoo/model_zoo.py`` of the detectron2 this interpreter finds (without importing it)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise FixError("detectron2 is not installed for this interpreter")
    return Path(list(spec.submodule_search_locations)[0]) / "model_zoo" / "model_zoo.py"


def fix_source(text: str) -> str:
    """The module text with ``import pkg_resources`` replaced by the stand-in (unchanged when there is none).

    Raises:
        FixError: the module calls something of ``pkg_resources`` other than ``resource_filename``.
    """
    if not IMPORT_LINE.search(text):
        return text
    other = sorted(set(USES.findall(text)) - {"resource_filename"})
    if other:
        raise FixError(f"detectron2's model_zoo uses pkg_resources.{', pkg_resources.'.join(other)}, which the "
                       "stand-in does not provide")
    return IMPORT_LINE.sub(lambda _: STAND_IN, text, count=1)


def fix_model_zoo(path: str | Path | None = None) -> bool:
    """Fix the installed ``model_zoo.py`` in place; True when it was changed, False when nothing was needed."""
    path = Path(path) if path is not None else model_zoo_file()
    text = path.read_text(encoding="utf-8")
    new = fix_source(text)
    if new == text:
        return False
    tmp = path.with_name(path.name + ".detx-tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)
    for cached in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
        cached.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default=None, help="the model_zoo.py to fix (default: the installed detectron2's)")
    args = p.parse_args(argv)
    try:
        path = Path(args.path) if args.path else model_zoo_file()
        changed = fix_model_zoo(path)
    except (FixError, OSError) as e:
        print(f"fix_detectron2: {e}", file=sys.stderr)
        return 1
    print(f"detectron2 model_zoo: {'pkg_resources replaced in' if changed else 'nothing to fix in'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
