"""`make install` fails loudly with the reason, and is a no-op once up to date."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_install(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["bash", "tools/install.sh"], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


def test_missing_python_is_named(tmp_path):
    proc = run_install(tmp_path, PYTHON="/nonexistent/python3")
    assert proc.returncode != 0
    assert "find python3" in proc.stderr and "/nonexistent/python3" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_unreachable_registry_stops_before_installing(tmp_path):
    proc = run_install(
        tmp_path,
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_EXTRA_INDEX_URL="",
        PIP_FIND_LINKS="",
        PIP_NO_INDEX="",
        PIP_RETRIES="0",
        PIP_DEFAULT_TIMEOUT="2",
    )
    assert proc.returncode != 0
    assert "reach the package registry" in proc.stderr and "PyPI" in proc.stderr
    assert not (tmp_path / "venv" / ".installed").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_second_install_is_a_noop():
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("not installed through make install")
    proc = subprocess.run(["make", "-q", "install"], cwd=ROOT)
    assert proc.returncode == 0, "make install would run again although nothing changed"


def test_ci_runs_make_test_only():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert "make test" in lines
    assert "set -euo pipefail" in lines
    assert not any("|| true" in ln for ln in lines)
