"""tools/visualize.py: overlays of a submission against the fused ground truth or each reader, the worst N first."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from conftest import load_script

from detx.core.predictions import Predictions
from detx.core.submission import write_submission
from detx.evaluation.per_image import per_image_errors
from detx.synthetic import write_dicom

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
visualize_tool = load_script("tools/visualize.py")


def _visualize(*args) -> int:
    return visualize_tool.main(visualize_tool.get_parser().parse_args([str(a) for a in args]))


def test_per_image_error_counts_missed_boxes_and_false_positives():
    gt = {"a": (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([1, 2])),
          "b": (np.zeros((0, 4)), np.zeros(0, np.int64))}
    preds = {
        # one hit (IoU 0.81 > 0.4), the other box found with the wrong class: 1 missed, 1 false; 0.1 not counted
        "a": Predictions([[0, 0, 9, 9], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 1, 1]], [0.9, 0.8, 0.1, 0.7],
                         [1, 3, 1, 14]),
        "b": Predictions([[0, 0, 5, 5], [1, 1, 5, 5]], [0.5, 0.4], [0, 0]),  # two false on a normal image
    }
    errors = per_image_errors(gt, preds, ["a", "b", "c"], num_classes=14, score_thr=0.3, iou_thr=0.4)
    assert [(e.image_id, e.gt_boxes, e.pred_boxes, e.missed, e.false_positives, e.error) for e in errors] == [
        ("a", 2, 2, 1, 1, 2), ("b", 0, 2, 0, 2, 2), ("c", 0, 0, 0, 0, 0)]
    # a second prediction on a box already found is false (one prediction per box)
    twice = per_image_errors(gt, {"a": Predictions([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])}, ["a"], 14)
    assert (twice[0].missed, twice[0].false_positives) == (1, 1)


def _case(tmp_path: Path):
    d = tmp_path / "dicom"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        write_dicom(d / f"{name}.dicom", rng.integers(0, 4096, (80, 100)).astype(np.uint16), bits_stored=12)
    rows = ["a,Cardiomegaly,3,R1,20,30,60,70\n", "a,Cardiomegaly,3,R2,22,31,61,72\n",
            "b,Nodule/Mass,8,R1,70,10,90,30\n", "b,No finding,14,R2,,,,\n",
            "c,No finding,14,R1,,,,\n", "c,No finding,14,R2,,,,\n"]
    gt = tmp_path / "train.csv"
    gt.write_text(HEADER + "".join(rows))
    sub = tmp_path / "sub.csv"
    write_submission(sub, {
        "a": Predictions([[21, 30, 60, 71], [0, 0, 1, 1]], [0.9, 0.1], [3, 14]),  # found: error 0
        "b": Predictions([[0, 0, 1, 1]], [0.9], [14]),  # the nodule missed: error 1
        "c": Predictions([[5, 5, 30, 30], [40, 40, 60, 60], [1, 1, 9, 9]], [0.8, 0.6, 0.1], [0, 5, 0]),  # 2 false
    })
    return d, gt, sub


def test_visualize_the_worst_images_against_the_fused_ground_truth(tmp_path, capsys):
    d, gt, sub = _case(tmp_path)
    out = tmp_path / "vis"
    assert _visualize("--pred", sub, "--input", d, "--gt", gt, "--worst", 2, "--dicom-size", 64, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "2 overlay(s) against the fused ground truth" in printed
    assert "c: error 2 (0 of 0 GT missed, 2 of 2 predictions false)" in printed
    assert "b: error 1 (1 of 1 GT missed, 0 of 0 predictions false)" in printed
    assert sorted(p.name for p in out.glob("*.png")) == ["b.png", "c.png"]
    with open(out / "errors.csv", newline="") as f:
        assert [(r["image_id"], r["error"]) for r in csv.DictReader(f)] == [("c", "2"), ("b", "1"), ("a", "0")]


def test_visualize_named_images_with_each_reader_in_its_colour(tmp_path, capsys):
    from detx.viz.overlay import reader_colors

    d, gt, sub = _case(tmp_path)
    out = tmp_path / "vis"
    assert _visualize("--pred", sub, "--input", d, "--gt", gt, "--readers", "--image-ids", "a", "--dicom-size", 64,
                      "--out", out) == 0
    assert "1 overlay(s) against each reader's boxes" in capsys.readouterr().out
    img = cv2.imread(str(out / "a.png"))
    for rad, color in reader_colors(["R1", "R2"]).items():
        near = np.abs(img.astype(int) - np.array(color)).sum(axis=2) < 30
        assert near.sum() > 50, rad  # the reader's dashed box and its label
    # bad requests: an image the input lacks, --readers without reader ids
    assert _visualize("--pred", sub, "--input", d, "--gt", gt, "--image-ids", "zzz", "--out", tmp_path / "v2") == 2
    assert "--image-ids not among the input's labelled images: ['zzz']" in capsys.readouterr().err
    no_ids = tmp_path / "no_ids.csv"
    no_ids.write_text("image_id,class_name,class_id,x_min,y_min,x_max,y_max\na,Cardiomegaly,3,20,30,60,70\n"
                      "b,No finding,14,,,,\nc,No finding,14,,,,\n")
    assert _visualize("--pred", sub, "--input", d, "--gt", no_ids, "--readers", "--out", tmp_path / "v3") == 2
    assert "needs a reader CSV with rad_id" in capsys.readouterr().err
