"""The code before the real-scale rewrite (issue 24), extracted from git so a benchmark can run today's and the
previous implementation in the same run: ``with baseline_tree() as root: subprocess.run(..., env={"PYTHONPATH": root})``.
"""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: the last commit before JPEG 2000 reduced decoding and faster-coco-eval (main at the time)
BASELINE_COMMIT = "7a409c4"
REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def baseline_tree(commit: str = BASELINE_COMMIT) -> Iterator[Path]:
    """A temporary folder holding ``detx/`` and ``tools/`` as of ``commit`` (``git archive``)."""
    with tempfile.TemporaryDirectory(prefix="detx_baseline_") as tmp:
        tar = Path(tmp) / "tree.tar"
        with open(tar, "wb") as f:
            subprocess.run(["git", "-C", str(REPO), "archive", commit, "detx", "tools"], stdout=f, check=True)
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        yield Path(tmp)
