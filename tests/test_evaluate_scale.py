"""The real-scale rewrite of ``tools/evaluate.py``'s path (faster-coco-eval, vectorized submission reading, fusion and
human baseline) gives the same metrics JSON as the code before it on a fixed medium case.

``tests/data/evaluate_medium_expected.json`` was written by ``tests/evaluate_case.py`` run on commit 7a409c4 (before
the rewrite, pycocotools' COCOeval). Numbers must agree to 1e-9 (the COCO ones to 1e-6, the faster-coco-eval bound);
everything else (counts, names, problem messages) exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detx.workflows.evaluate import evaluate_files
from evaluate_case import write_case  # tests/ is on sys.path (pytest prepend mode)

EXPECTED = Path(__file__).parent / "data" / "evaluate_medium_expected.json"


def _compare(got, want, path="", tol=1e-9):
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{path}: keys {list(got)} != {list(want)}"
        for k in want:
            _compare(got[k], want[k], f"{path}.{k}", 1e-6 if k == "coco" or k.startswith("coco_") else tol)
    elif isinstance(want, list):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{path}: length"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{path}[{i}]", tol)
    elif isinstance(want, float):
        assert got is not None and math.isclose(float(got), want, rel_tol=0, abs_tol=tol), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def test_metrics_json_equal_to_before(tmp_path):
    gt, sub = write_case(tmp_path)
    m = evaluate_files(gt, sub).metrics
    m["gt"] = m["pred"] = None
    m["problems"]["messages"] = [s.replace(str(tmp_path), "<dir>") for s in m["problems"]["messages"]]
    got = json.loads(json.dumps(m, default=float))  # the JSON the CLI writes (numpy scalars as numbers)
    want = json.loads(EXPECTED.read_text())
    assert want["human_baseline"]["n_readers"] == 8 and want["problems"]["submission"] == 8  # the case is rich
    _compare(got, want)


@pytest.mark.parametrize("fusion", ["none", "nms"])
def test_other_fusions_unchanged_vs_reference(tmp_path, fusion):
    """The other fusion methods: the human baseline equals the per-reader reference loop kept in the test."""
    from detx.data.readers import read_reader_csv
    from detx.evaluation.reader_agreement import human_baseline
    from reference_reader_scores import reference_human_baseline

    gt, _ = write_case(tmp_path, n_images=120, seed=3)
    table, _ = read_reader_csv(gt)
    got = human_baseline(table, fusion=fusion)
    want = reference_human_baseline(table, fusion=fusion)
    _compare(got, want)
