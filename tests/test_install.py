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


# ------------------------------------------------------------------------------------------------ the lock

def _check_lock():
    from conftest import load_script

    return load_script("tools/check_lock.py")


def test_lock_pins_every_dependency_with_hashes():
    """The lock holds exact versions with hashes, the hand-chosen pins of constraints.txt among them, and every
    package setup.py names (install_requires and [dev])."""
    import re

    check = _check_lock()
    lock_text = (ROOT / "requirements-lock.txt").read_text()
    pins = check.read_lock(ROOT / "requirements-lock.txt")
    assert len(pins) > 100
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock_text.split("\n", 2)[2])
    assert all("--hash=sha256:" in b for b in blocks if "==" in b.split("\n")[0])
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if m:
            assert pins[check.canonical(m.group(1))] == m.group(2), line
    setup_text = (ROOT / "setup.py").read_text()
    named = re.findall(r'^\s+"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?(?:[<>=!~][^"]*)?",', setup_text, flags=re.M)
    assert {"torch", "opencv-python-headless", "pytest", "torchxrayvision"} <= set(named)
    missing = [n for n in named if check.canonical(n) not in pins]
    assert not missing, f"in setup.py but not in the lock (run make lock): {missing}"
    assert {"torchxrayvision", "pydicom-data", "faster-coco-eval"} <= set(pins)


def test_lock_differences_hand_computed():
    check = _check_lock()
    assert check.canonical("Pillow") == "pillow" and check.canonical("pydicom_data") == "pydicom-data"
    lock = {"numpy": "2.2.6", "torch": "2.14.1", "pillow": "12.0.0"}
    have = {"numpy": "2.4.6", "torch": "2.14.1", "extra-thing": "1.0"}
    assert check.lock_differences(lock, have) == ["numpy: locked 2.2.6, installed 2.4.6",
                                                  "pillow: locked 12.0.0, not installed"]
    assert check.lock_differences(lock, {**have, "numpy": "2.2.6", "pillow": "12.0.0"}) == []


def test_installed_versions_equal_the_lock():
    """The environment the tests run in is the locked one (make install installs and checks it)."""
    import sys

    proc = subprocess.run([sys.executable, "tools/check_lock.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_lock_for_another_python_is_refused_with_the_way_out(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# uv pip compile setup.py --python-version 3.99 -o lock.txt\nsix==1.0 \\\n    --hash=sha256:00\n")
    proc = run_install(tmp_path, LOCK=str(lock))
    assert proc.returncode != 0
    assert "match the lock's Python" in proc.stderr and "Python 3.99" in proc.stderr and "make lock" in proc.stderr
    assert not (tmp_path / "venv").exists()
