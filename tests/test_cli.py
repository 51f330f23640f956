"""One error base class, one mapping to exit statuses, --version on every script."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import detx
from detx.cli import exits, run
from detx.core.errors import DetxError, InputError, StrictModeError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["tools/train_net.py", "tools/predict.py", "tools/evaluate.py", "tools/fit_classifier.py", "tools/readers.py",
           "tools/export.py", "tools/tune.py", "tools/body_parts.py", "datasets/prepare_openi.py",
           "datasets/prepare_vindr_cxr.py", "datasets/prepare_spinexr.py", "datasets/prepare_lung_masks.py"]


def test_every_detx_exception_derives_from_the_one_base():
    classes = []
    for mod in pkgutil.walk_packages(detx.__path__, "detx."):
        if mod.name.endswith("__main__"):
            continue
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                classes.append(obj)
    names = {c.__name__ for c in classes}
    assert {"DataError", "SubmissionError", "DicomError", "PreparedDatasetError", "ConfigKeyError",
            "TrainingSetupError", "CheckpointError", "PredictionInputError", "UnreadableImageError",
            "DemoError"} <= names
    assert [c.__name__ for c in classes if not issubclass(c, DetxError)] == []


@pytest.mark.parametrize("error, status, prefix", [
    (InputError("bad --size"), 2, "error: bad --size"),
    (StrictModeError("line 7: inverted box"), 1, "error (--strict): line 7: inverted box"),
    (FileNotFoundError(2, "No such file", "x.csv"), 2, "error: [Errno 2] No such file: 'x.csv'"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_run_maps_errors_to_one_line_and_a_status(error, status, prefix, capsys):
    def main():
        raise error

    assert run(main) == status
    err = capsys.readouterr().err
    assert err.strip() == prefix and "Traceback" not in err


def test_library_errors_keep_their_exit_status():
    from detx.core.submission import SubmissionError, read_submission
    from detx.data.readers import DataError, Problem
    from detx.inference.predictor import UnreadableImageError

    assert DataError(Problem("inverted_box", "train.csv line 7", "x")).exit_status == 1
    assert UnreadableImageError("image a: broken").exit_status == 1
    assert SubmissionError("no header").exit_status == 2
    assert SubmissionError("image a: entry 1", strict_only=True).exit_status == 1

    @exits
    def read(path):
        read_submission(path)

    assert read(ROOT / "README.md") == 2  # not a submission: bad input, not a strict stop


def test_a_bug_is_not_hidden_as_bad_input():
    @exits
    def main():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        main()


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_version(script):
    proc = subprocess.run([sys.executable, script, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"detx {detx.__version__}" in proc.stdout
