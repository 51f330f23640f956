"""Submission CSV: formatting, parsing, round trips and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from detx.core.predictions import Predictions
from detx.core.submission import (
    SubmissionError,
    format_prediction_string,
    parse_prediction_string,
    read_submission,
    write_submission,
)


def _pred():
    return Predictions(
        boxes=[[10.5, 20.0, 110.25, 220.0], [0, 0, 1, 1]],
        scores=[0.875, 0.125],
        classes=[3, 14],
    )


def test_format_exact_string():
    assert format_prediction_string(_pred()) == "3 0.875 10.5 20 110.25 220 14 0.125 0 0 1 1"
    assert format_prediction_string(Predictions()) == ""


def test_parse_format_round_trip():
    p = parse_prediction_string(format_prediction_string(_pred()), "img")
    np.testing.assert_array_equal(p.boxes, _pred().boxes)
    np.testing.assert_array_equal(p.scores, [0.875, 0.125])
    np.testing.assert_array_equal(p.classes, [3, 14])
    assert p.boxes.dtype == np.float64 and p.classes.dtype == np.int64


@pytest.mark.parametrize("text", ["", "   ", None, float("nan")])
def test_empty_prediction_string_is_no_predictions(text):
    p = parse_prediction_string(text, "img")
    assert len(p) == 0 and p.boxes.shape == (0, 4)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    subs = {}
    for i in range(5):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 2000, (n, 2))
        wh = rng.uniform(1, 500, (n, 2))
        subs[f"im{i}"] = Predictions(np.hstack([xy, xy + wh]).round(2), rng.uniform(0, 1, n).round(4),
                                     rng.integers(0, 15, n))
    path = tmp_path / "sub.csv"
    write_submission(path, subs)
    back = read_submission(path, image_ids=list(subs))
    assert list(back) == list(subs) and back.problems == []
    for k in subs:
        np.testing.assert_allclose(back[k].boxes, subs[k].boxes, rtol=1e-6)
        np.testing.assert_allclose(back[k].scores, subs[k].scores, rtol=1e-6)
        np.testing.assert_array_equal(back[k].classes, subs[k].classes)
    assert path.read_text().splitlines()[0] == "image_id,PredictionString"


BAD = [
    ("1 0.5 0 0 10", "not a multiple of 6"),
    ("1 0.5 0 0 10 abc", "non-numeric"),
    ("15 0.5 0 0 10 10", "class 15 outside 0-14"),
    ("-1 0.5 0 0 10 10", "class -1 outside"),
    ("1.5 0.5 0 0 10 10", "class 1.5 outside"),
    ("1 1.2 0 0 10 10", "confidence 1.2 outside [0, 1]"),
    ("1 -0.1 0 0 10 10", "confidence -0.1 outside"),
    ("1 0.5 10 0 5 10", "x_max 5 < x_min 10"),
    ("1 0.5 0 10 10 5", "y_max 5 < y_min 10"),
    ("1 nan 0 0 10 10", "non-finite"),
]


@pytest.mark.parametrize("text,msg", BAD)
def test_bad_entry_strict_names_image_and_problem(text, msg):
    with pytest.raises(SubmissionError, match="image abc123") as e:
        parse_prediction_string(text, "abc123")
    assert msg in str(e.value)


@pytest.mark.parametrize("text,msg", BAD)
def test_bad_entry_lenient_skips_only_that_entry(text, msg, caplog):
    good = "2 0.25 1 2 3 4"
    problems: list[str] = []
    p = parse_prediction_string(f"{good} {text}", "abc123", strict=False, problems=problems)
    assert len(problems) == 1 and msg in problems[0] and "abc123" in problems[0]
    assert "skipped" in caplog.text
    if "multiple of 6" in msg:  # misaligned: the whole string is dropped
        assert len(p) == 0
    else:
        assert len(p) == 1 and p.classes.tolist() == [2] and p.boxes.tolist() == [[1, 2, 3, 4]]


def test_num_classes_for_spinexr():
    assert parse_prediction_string("7 0.5 0 0 1 1", "x", num_classes=8).classes.tolist() == [7]
    with pytest.raises(SubmissionError, match="outside 0-7"):
        parse_prediction_string("8 0.5 0 0 1 1", "x", num_classes=8)


def _write(path, rows):
    path.write_text("image_id,PredictionString\n" + "".join(f"{a},{b}\n" for a, b in rows))


def test_missing_and_extra_images(tmp_path):
    path = tmp_path / "s.csv"
    _write(path, [("a", "14 1 0 0 1 1"), ("c", "")])
    with pytest.raises(SubmissionError, match="image b missing"):
        read_submission(path, image_ids=["a", "b"])
    with pytest.raises(SubmissionError, match="image c is not in the ground truth"):
        read_submission(path, image_ids=["a"])
    sub = read_submission(path, strict=False, image_ids=["a", "b"])
    assert sorted(sub) == ["a", "b"] and len(sub["b"]) == 0 and len(sub["a"]) == 1
    assert len(sub.problems) == 2
    assert any("b missing" in p for p in sub.problems) and any("c is not in" in p for p in sub.problems)


def test_duplicate_rows_and_bad_header(tmp_path):
    path = tmp_path / "s.csv"
    _write(path, [("a", "1 0.5 0 0 1 1"), ("a", "")])
    with pytest.raises(SubmissionError, match="image a: duplicate row"):
        read_submission(path)
    sub = read_submission(path, strict=False)
    assert len(sub["a"]) == 1 and len(sub.problems) == 1
    path.write_text("id,preds\nx,\n")
    with pytest.raises(SubmissionError, match="lacks image_id and PredictionString"):
        read_submission(path, strict=False)
    path.write_text("")
    with pytest.raises(SubmissionError, match="empty file"):
        read_submission(path)


def test_lenient_file_counts_each_problem(tmp_path):
    path = tmp_path / "s.csv"
    _write(path, [("a", "1 0.5 0 0 10 10 1 2 0 0 10 10 99 0.5 0 0 1 1"), ("b", "1 0.5 0 0")])
    sub = read_submission(path, strict=False)
    assert len(sub.problems) == 3
    assert len(sub["a"]) == 1 and len(sub["b"]) == 0
