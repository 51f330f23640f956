"""The real-scale rewrite of ``tools/evaluate.py``'s path (faster-coco-eval, vectorized submission and reader-CSV
reading, FROC reusing the challenge metric's matching) gives the same metrics JSON as the code before it on a fixed medium case.

``tests/data/evaluate_medium_expected.json`` was written by ``tests/evaluate_case.py`` run on commit 7a409c4 (before
the rewrite, pycocotools' COCOeval). Numbers must agree to 1e-9 (the COCO ones to 1e-6, the faster-coco-eval bound);
everything else (counts, names, problem messages) exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from evaluate_case import write_case  # tests/ is on sys.path (pytest prepend mode)

from detx.data.readers import read_reader_csv
from detx.evaluation.reader_agreement import reader_agreement
from detx.workflows.evaluate import evaluate_files

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
    # two keys issue 25 added after the file was written (7a409c4), with what they must be on this case: every box
    # has its reader, and the boxes are in the ground truth's frame
    assert got.pop("gt_boxes_without_reader") == {"boxes": 0, "images": 0, "note": None}
    assert got.pop("frame_warning") is None
    # issue 24 added the pooled human baseline (the one tools/readers.py reports) beside the old mean over readers
    pooled = {k: got["human_baseline"].pop(k) for k in ("mAP40", "images", "cases", "rule")}
    table, _ = read_reader_csv(gt, strict=False)
    readers = reader_agreement(table, source=str(gt)).baseline
    assert pooled["rule"] == readers["rule"] and pooled["images"] == readers["images"] > 0
    assert pooled["cases"] == readers["cases"] and pooled["mAP40"] == pytest.approx(readers["mAP40"], abs=1e-12)
    _compare(got, want)


def _random_gt_preds(seed, n_images=40, k=5):
    import numpy as np

    from detx.core.predictions import Predictions

    rng = np.random.default_rng(seed)
    gt, preds = {}, {}
    for i in range(n_images):
        m = int(rng.integers(0, 4)) if rng.random() < 0.5 else 0
        xy = rng.uniform(0, 200, (m, 2))
        gb = np.hstack([xy, xy + rng.uniform(10, 80, (m, 2))])
        gc = rng.integers(0, k - 1, m)  # class k - 1 never has ground truth
        gt[f"i{i}"] = (gb, gc)
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 200, (n, 2))
        b = np.hstack([xy, xy + rng.uniform(10, 80, (n, 2))])
        c = rng.integers(0, k + 1, n)  # k = No finding
        j = min(m, n)
        b[:j] = gb[:j] + rng.normal(0, 3, (j, 4))
        c[:j] = gc[:j]
        preds[f"i{i}"] = Predictions(b, np.round(rng.uniform(0, 1, n), 1), c)
    return gt, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_froc_from_the_challenge_matching_equals_froc(seed):
    import numpy as np

    from detx.evaluation.froc import froc, froc_from_vinbigdata
    from detx.evaluation.vinbigdata import vinbigdata_map

    gt, preds = _random_gt_preds(seed)
    want = froc(gt, preds, num_classes=5)
    got = froc_from_vinbigdata(vinbigdata_map(gt, preds, num_classes=5), num_classes=5, num_images=len(gt))
    assert got["sensitivity"] == want["sensitivity"] and got["mean"] == want["mean"]
    assert got["num_lesions"] == want["num_lesions"] > 0
    np.testing.assert_array_equal(got["curve"]["fp_per_image"], want["curve"]["fp_per_image"])
    np.testing.assert_array_equal(got["curve"]["sensitivity"], want["curve"]["sensitivity"])


def test_prediction_string_fast_path_equals_entry_loop():
    """A valid string goes through the one-pass numpy check; the same entries followed by a bad one go through the
    entry loop, which skips only the bad one: both give the same predictions."""
    import numpy as np

    from detx.core.submission import parse_prediction_string

    rng = np.random.default_rng(0)
    n = 50
    xy = rng.uniform(0, 2000, (n, 2))
    vals = np.column_stack([rng.integers(0, 15, n), rng.uniform(0, 1, n), xy, xy + rng.uniform(0, 300, (n, 2))])
    vals[3, 1], vals[4, 1] = 0.0, 1.0  # the confidence bounds are valid
    vals[5, 4] = vals[5, 2]  # an empty box (x_max == x_min) is valid
    text = " ".join(f"{int(v[0])} " + " ".join(f"{x:.6g}" for x in v[1:]) for v in vals)
    fast = parse_prediction_string(text, "a")
    problems: list[str] = []
    slow = parse_prediction_string(text + " 3 0.5 nan 0 1 1", "a", strict=False, problems=problems)
    assert len(problems) == 1 and "non-finite" in problems[0]
    for attr in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(getattr(fast, attr), getattr(slow, attr))
        assert getattr(fast, attr).dtype == getattr(slow, attr).dtype
    assert len(fast) == n
    for bad in ("15 0.5 0 0 1 1", "1.5 0.5 0 0 1 1", "1 1.01 0 0 1 1", "1 0.5 0 0 1 x", "1 -0.1 0 0 1 1",
                "1 0.5 0 2 1 1"):
        problems = []
        out = parse_prediction_string(text + " " + bad, "a", strict=False, problems=problems)
        assert len(out) == n and len(problems) == 1, bad


def test_prediction_string_unusual_numbers_read_as_python_float_does():
    """Text beyond plain decimals takes the entry loop (Python's float), as before the fast path."""
    from detx.core.submission import parse_prediction_string

    problems: list[str] = []
    out = parse_prediction_string("1_0 0.5 0 0 1 1 0x1 0.5 0 0 1 1 2 5e-1 1E1 0 2e1 1", "a", strict=False,
                                  problems=problems)
    assert out.classes.tolist() == [10, 2] and out.boxes.tolist() == [[0, 0, 1, 1], [10, 0, 20, 1]]
    assert len(problems) == 1 and "non-numeric" in problems[0]
