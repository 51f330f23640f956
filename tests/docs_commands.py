"""The shell blocks of README.md and docs/*.md, checked and run (tests/test_docs.py).

Every fenced ``bash``/``sh``/``shell`` block carries a marker on the line just above its opening fence:

* ``<!-- docs-test: run -->``: run for real by the tests, on synthetic data, in one working folder shared by all
  pages (in the order of :data:`PAGE_ORDER`, then the others alphabetically), with ``python`` the environment's
  interpreter and ``tools/``, ``datasets/``, ``configs/`` and ``benchmarks/`` those of this checkout. Every
  ``output/...`` path the block names must exist afterwards.
* ``<!-- docs-test: skip REASON-KIND: why -->`` with REASON-KIND one of :data:`SKIP_KINDS`: not run (real data,
  a GPU, the network, or too long for the suite), with the reason said.

Every block, run or not, is also *dry-parsed*: bash expands it (loops, braces, variables) with ``python`` and ``make``
replaced by recorders, and each recorded ``python tools/X.py ...``, ``python datasets/X.py ...`` or
``python -m MODULE ...`` command line is handed to that script's own argument parser, stopped right after parsing
(nothing runs): a renamed or removed flag, or a missing required argument, fails the test. A ``make TARGET`` must
name a target of the Makefile.

A ``text`` block marked ``<!-- docs-test: output -->`` is the pasted output of the run block before it: each of its
lines must appear in that block's output, in order (a line ``...`` stands for any number of lines).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell"}
SKIP_KINDS = ("real-data", "gpu", "network", "long")
#: pages whose run blocks make what later pages use (the synthetic data, a trained tiny model)
PAGE_ORDER = ("docs/synthetic.md", "docs/data-preparation.md", "docs/readers.md", "docs/training.md")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<what>run|skip|output)\b\s*(?P<rest>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None = None  # run | skip | output | None
    reason: str = ""

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/, in the order their run blocks execute."""
    pages = sorted((root / "docs").rglob("*.md"))
    rank = {p: i for i, p in enumerate(PAGE_ORDER)}
    pages.sort(key=lambda p: (rank.get(str(p.relative_to(root)), len(rank)), str(p)))
    return [root / "README.md", *pages]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` with the docs-test marker on the line above each (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group("fence"), m.group("lang").lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[:3]):
            body.append(lines[i])
            i += 1
        prev = lines[start - 1].strip() if start > 0 else ""
        mk = MARKER.match(prev)
        out.append(Block(path, start + 1, lang, "\n".join(body) + "\n",
                         mk.group("what") if mk else None, mk.group("rest") if mk else ""))
        i += 1
    return out


def marker_problems(block: Block) -> list[str]:
    """What is wrong with a block's marker: a shell block needs run or skip (with a known kind and a reason)."""
    if block.lang not in SHELL_LANGS:
        if block.marker in ("run", "skip"):
            return [f"{block.where}: a '{block.lang or 'plain'}' block cannot be run; mark only shell blocks"]
        return []
    if block.marker is None:
        return [f"{block.where}: shell block without a marker: add '<!-- docs-test: run -->' or "
                f"'<!-- docs-test: skip KIND: reason -->' (KIND one of {', '.join(SKIP_KINDS)}) on the line above"]
    if block.marker == "output":
        return [f"{block.where}: 'output' marks a text block, not a shell block"]
    if block.marker == "skip":
        kind, _, why = block.reason.partition(":")
        if kind.strip() not in SKIP_KINDS or not why.strip():
            return [f"{block.where}: skip needs 'KIND: reason' with KIND one of {', '.join(SKIP_KINDS)}, "
                    f"got {block.reason!r}"]
    return []


# ---------------------------------------------------------------------------------------------- dry parse

_RECORDERS = r"""
__rec() { local a; for a in "$@"; do printf '%s\037' "$a"; done; printf '\036'; } >> "$DOCS_RECORD"
python() { __rec python "$@"; }
python3() { __rec python "$@"; }
make() { __rec make "$@"; }
pip() { :; }
kaggle() { :; }
"""


def expanded_commands(block: Block) -> list[list[str]]:
    """The ``python``/``make`` command lines of a shell block, as bash expands them (nothing is run)."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record"
        record.touch()
        script = _RECORDERS + block.text
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], cwd=tmp, capture_output=True,
                              text=True, timeout=60, env={"PATH": os.environ.get("PATH", ""), "HOME": tmp,
                                                          "DOCS_RECORD": str(record)})
        if proc.returncode == 2 and "syntax error" in proc.stderr:
            raise ValueError(f"{block.where}: not valid bash: {proc.stderr.strip()}")
        raw = record.read_text()
    return [cmd.split("\037")[:-1] for cmd in raw.split("\036") if cmd]


class _Parsed(Exception):
    """Raised right after a script's parser accepted its arguments (so nothing else runs)."""


@contextlib.contextmanager
def _stop_after_parsing():
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        # unknown flags first (argparse would otherwise report a missing required one and not the renamed flag)
        required = [a for a in self._actions if a.required]
        for action in required:
            action.required = False
        try:
            _, extras = self.parse_known_args(args, namespace)
        finally:
            for action in required:
                action.required = True
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        original(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M)}


def _makefile_variables() -> set[str]:
    """The variables the Makefile assigns (``NAME ?= ...``, ``NAME := ...``): the ones ``make NAME=...`` can set."""
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z_]\w*)\s*[?:+]?=", text, re.M)}


def _unknown_config_keys(words: list[str]) -> list[str]:
    """``KEY VALUE`` overrides among ``words`` whose key the detx config (detectron2's + ``DETX.*``) lacks."""
    from detx.cli import CONFIG_KEY
    from detx.engine.config import get_detx_cfg

    cut = next((i for i, w in enumerate(words) if CONFIG_KEY.match(w)), len(words))
    keys, i = [], cut
    while i < len(words):
        if words[i].startswith("--"):  # detectron2's flags may follow the overrides (tools/train_net.py FLAGS)
            i += 1
            continue
        keys.append(words[i])
        i += 2
    if not keys:
        return []
    cfg = get_detx_cfg(None, [], freeze=False)
    unknown = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            if node is None or not hasattr(node, "keys") or part not in node:
                unknown.append(key)
                break
            node = node[part]
    return unknown


def check_command(argv: list[str]) -> str | None:
    """None when ``argv`` (``python tools/x.py ...``, ``python -m mod ...``, ``make target``) parses, else why not.

    ``KEY VALUE`` config overrides must name keys of the detx config. Other commands (``python -c``, a script
    outside the repository) are not checked."""
    if argv[0] == "make":
        targets = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
        unknown = [t for t in targets if t not in _makefile_targets()]
        if unknown:
            return f"make: no target {unknown} in the Makefile"
        names = [a.split("=", 1)[0] for a in argv[1:] if "=" in a and not a.startswith("-")]
        unset = [n for n in names if n not in _makefile_variables()]
        return f"make: the Makefile uses no variable {unset}" if unset else None
    args = argv[1:]
    if not args or args[0] in ("-c", "-"):
        return None
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
        name = f"python -m {module}"
    else:
        script = ROOT / args[0]
        if not script.is_file():
            if args[0].startswith(("tools/", "datasets/", "benchmarks/")):
                return f"no such script {args[0]}"
            return None
        rest = args[1:]
        run = lambda: runpy.run_path(str(script), run_name="__main__")  # noqa: E731
        name = args[0]
    old_argv, err = sys.argv, io.StringIO()
    sys.argv = [name, *rest]
    try:
        with _stop_after_parsing(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            run()
    except _Parsed:
        unknown = _unknown_config_keys(rest) if name in ("tools/train_net.py", "tools/predict.py",
                                                           "tools/export.py", "tools/explain.py") else []
        return f"{name}: unknown config key(s) {unknown}" if unknown else None
    except SystemExit as e:
        if e.code in (0, None):  # --help / --version
            return None
        return f"{name}: {err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else e}"
    finally:
        sys.argv = old_argv
    return f"{name}: ran without parsing any arguments (cannot be checked)"


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Runner:
    """Runs marked blocks in one working folder shared by every page (``output/`` lives there)."""

    workdir: Path
    done: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("tools", "datasets", "configs", "benchmarks", "notebooks", "Makefile"):
            link = self.workdir / name
            if not link.exists():
                link.symlink_to(ROOT / name)
        bindir = self.workdir / ".bin"
        bindir.mkdir(exist_ok=True)
        for name in ("python", "python3"):  # a wrapper, not a link: a venv's interpreter finds its venv by its path
            wrapper = bindir / name
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            wrapper.chmod(0o755)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.workdir / '.bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def run(self, block: Block, timeout: float = 900) -> str:
        """Run ``block`` with ``bash -e`` and return its output; a command line already run here is not repeated."""
        commands = [c for c in _logical_lines(block.text) if c not in self.done]
        if not commands:
            return ""
        script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], cwd=self.workdir, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise AssertionError(f"{block.where}: exit status {proc.returncode}\n{script}\n{output[-4000:]}")
        self.done.update(c for c in commands if not c.startswith(("for ", "if ", "while ")))
        missing = [p for p in named_outputs(block.text) if not (self.workdir / p).exists()]
        if missing:
            raise AssertionError(f"{block.where}: ran, but left no {missing}")
        return output


def _logical_lines(text: str) -> list[str]:
    """Commands of a block: continuation lines joined, compound statements (for/if/while ... done/fi) kept whole,
    comments and blank lines dropped."""
    out: list[str] = []
    current = ""
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        current = f"{current}\n{line}" if current else line
        if stripped.endswith("\\"):
            continue
        words = re.findall(r"[\w]+", re.sub(r"(['\"]).*?\1", "", stripped))
        depth += sum(w in ("for", "if", "while", "until", "case") for w in words[:1])
        depth -= sum(w in ("done", "fi", "esac") for w in words[:1] + words[-1:]) if depth else 0
        if depth <= 0:
            out.append(current)
            current, depth = "", 0
    if current:
        out.append(current)
    return out


def named_outputs(text: str) -> list[str]:
    """The ``--out``/``--classification-out``/``OUTPUT_DIR`` paths a block names under ``output/`` (literal ones)."""
    found = []
    for cmd in _logical_lines(text):
        try:
            words = shlex.split(cmd.replace("\\\n", " "), comments=True)
        except ValueError:
            continue
        for flag, value in zip(words, words[1:]):
            if flag in ("--out", "--classification-out", "OUTPUT_DIR") and value.startswith("output/") \
                    and not re.search(r"[$*{}]", value):
                found.append(value)
    return found


def output_matches(expected: str, actual: str) -> str | None:
    """None when every line of ``expected`` appears in ``actual`` in order (``...`` skips lines), else the first
    line that does not."""
    lines = [ln.rstrip() for ln in actual.splitlines()]
    pos = 0
    for want in (ln.rstrip() for ln in expected.splitlines()):
        if not want.strip() or want.strip() == "...":
            continue
        try:
            pos = lines.index(want, pos) + 1
        except ValueError:
            return want
    return None
