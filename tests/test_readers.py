"""Reader CSVs -> normalized table: each source on a small hand-written CSV, and every bad-row case."""

from __future__ import annotations

import numpy as np
import pytest

from detx.core.classes import VINDR_CXR_CLASSES
from detx.data.readers import (
    DataError,
    ProblemLog,
    check_box_bounds,
    read_physionet_image_labels,
    read_physionet_vindr_cxr,
    read_reader_csv,
    read_spinexr_csv,
    read_vinbigdata_csv,
    sniff_format,
)

KAGGLE = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
a,Aortic enlargement,0,R1,10,20,30,40
a,Cardiomegaly,3,R2,1,2,3,4
b,No finding,14,R1,,,,
b,No finding,14,R2,,,,
c,Nodule/Mass,8,R3,5,5,5,9
c,Nodule/Mass,8,R3,9,5,5,9
c,Nodule/Mass,8,R3,5,,7,9
c,Flying saucer,8,R3,5,5,7,9
c,Nodule/Mass,3,R3,5,5,7,9
c,nodule/mass ,8,R4,5,5,7,9
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_kaggle_reader_table_and_bad_rows(tmp_path):
    path = _write(tmp_path, "train.csv", KAGGLE)
    table, problems = read_vinbigdata_csv(path)
    assert table.attrs["dataset"] == "vindr-cxr" and table.attrs["classes"] == VINDR_CXR_CLASSES
    assert list(table["image_id"]) == ["a", "a", "b", "b", "c"]
    assert list(table["class_id"]) == [0, 3, 14, 14, 8]
    assert list(table["rad_id"]) == ["R1", "R2", "R1", "R2", "R4"]
    assert list(table["row"]) == [2, 3, 4, 5, 11]
    assert table.loc[0, ["x_min", "y_min", "x_max", "y_max"]].tolist() == [10, 20, 30, 40]
    assert table.loc[2, ["x_min", "y_min", "x_max", "y_max"]].isna().all()
    assert table.loc[4, "class_name"] == "Nodule/Mass"  # case and spacing tolerated
    assert (table["study_id"] == "").all()
    kinds = [(p.kind, p.where) for p in problems]
    assert kinds == [
        ("empty_box", "train.csv line 6"), ("inverted_box", "train.csv line 7"),
        ("missing_coords", "train.csv line 8"), ("unknown_class", "train.csv line 9"),
        ("unknown_class", "train.csv line 10"),
    ]
    assert all(p.image_id == "c" for p in problems)
    assert "Flying saucer" in problems[3].message


def test_strict_raises_at_first_problem(tmp_path):
    path = _write(tmp_path, "train.csv", KAGGLE)
    with pytest.raises(DataError, match="line 6.*zero width"):
        read_vinbigdata_csv(path, strict=True)


def test_physionet_reader_maps_to_kaggle_and_keeps_image_labels(tmp_path):
    ann = _write(tmp_path, "annotations_train.csv",
                 "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
                 "p1,R9,Rib fracture,1,1,5,5\n"
                 "p1,R10,Lung Opacity,2,2,6,6\n"
                 "p2,R9,No finding,,,,\n")
    labels = _write(tmp_path, "image_labels_train.csv",
                    "image_id,rad_id,Rib fracture,Lung Opacity,COPD,Other disease,No finding\n"
                    "p1,R9,1,0,0,1,0\n"
                    "p1,R10,0,1,1,0,0\n"
                    "p2,R9,0,0,0,0,1\n"
                    "p2,R10,0,0,0,2,1\n"
                    "p2,R11,0,,0,0,1\n")
    table, problems = read_physionet_vindr_cxr(ann, labels, kaggle_classes=True)
    assert list(table["class_name"]) == ["Other lesion", "Lung Opacity", "No finding"]
    assert list(table["class_id"]) == [9, 7, 14]
    per_image = table.attrs["image_labels"].set_index("image_id")
    assert per_image.loc["p1", "COPD"] == 1 and per_image.loc["p1", "Other diseases"] == 1
    assert per_image.loc["p1", "n_label_readers"] == 2
    assert per_image.loc["p2", "No finding"] == 1 and per_image.loc["p2", "n_label_readers"] == 2
    assert per_image.loc["p2", "Lung Opacity"] == 0  # an empty cell is "not marked"
    assert [p.kind for p in problems] == ["bad_label"] and "line 5" in problems[0].where

    # excluding R10 (prepare --exclude-readers): p1 loses R10's Lung Opacity and COPD calls
    without, _ = read_physionet_image_labels(labels, exclude_readers=["R10"])
    without = without.set_index("image_id")
    assert without.loc["p1", "COPD"] == 0 and without.loc["p1", "Lung Opacity"] == 0
    assert without.loc["p1", "Rib fracture"] == 1 and without.loc["p1", "n_label_readers"] == 1

    table22, _ = read_physionet_vindr_cxr(ann, kaggle_classes=False)
    assert table22.attrs["dataset"] == "vindr-cxr-physionet"
    assert list(table22["class_name"]) == ["Rib fracture", "Lung Opacity", "No finding"]
    assert list(table22["class_id"]) == [20, 11, 22]


def test_physionet_test_file_without_rad_id(tmp_path):
    ann = _write(tmp_path, "annotations_test.csv",
                 "image_id,class_name,x_min,y_min,x_max,y_max\nt1,Nodule/Mass,1,2,3,4\nt2,No finding,,,,\n")
    assert sniff_format(ann) == "physionet"
    table, problems = read_reader_csv(ann)
    assert not problems and list(table["rad_id"]) == ["", ""]
    labels, _ = read_physionet_image_labels(_write(tmp_path, "l.csv", "image_id,COPD,No finding\nt1,0,0\nt2,0,1\n"))
    assert labels.set_index("image_id").loc["t2", "No finding"] == 1


def test_spinexr_reader_tolerates_optional_columns(tmp_path):
    full = _write(tmp_path, "train.csv",
                  "image_id,study_id,series_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n"
                  "s1,st1,se1,R1,Osteophytes,1,2,3,4\n"
                  "s2,st1,se1,R1,No finding,,,,\n"
                  "s3,st2,se2,R1,Vertebral collapse,3,2,1,4\n")
    assert sniff_format(full) == "spinexr"
    table, problems = read_spinexr_csv(full)
    assert list(table["study_id"]) == ["st1", "st1"] and list(table["class_id"]) == [0, 7]
    assert [p.kind for p in problems] == ["inverted_box"]
    bare = _write(tmp_path, "bare.csv", "image_id,lesion_type,xmin,ymin,xmax,ymax\nq,Surgical implant,0,0,9,9\n")
    table, problems = read_reader_csv(bare)
    assert not problems and table.loc[0, "rad_id"] == "" and table.loc[0, "study_id"] == ""
    assert table.loc[0, "class_id"] == 1


def test_sniff_rejects_unknown_header(tmp_path):
    with pytest.raises(ValueError, match="cannot tell"):
        sniff_format(_write(tmp_path, "x.csv", "foo,bar\n1,2\n"))


def test_box_bounds_clip_slightly_out_and_drop_absurd(tmp_path):
    path = _write(tmp_path, "train.csv",
                  "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                  "a,ILD,5,R1,-2,10,50,60\n"      # 2 px left of a 100 px image: clipped
                  "a,ILD,5,R1,10,10,150,60\n"     # 50 px beyond the right edge: dropped
                  "a,ILD,5,R1,120,10,130,60\n"    # entirely outside: dropped
                  "a,ILD,5,R1,10,10,20,20\n"      # inside
                  "z,ILD,5,R1,-500,0,1,1\n")      # image without a known size: untouched
    table, _ = read_vinbigdata_csv(path)
    log = ProblemLog()
    out = check_box_bounds(table, {"a": (100, 80)}, log, tolerance=0.05)
    assert [p.kind for p in log.items] == ["clipped", "out_of_image", "out_of_image"]
    assert [p.where for p in log.items] == ["line 2", "line 3", "line 4"]
    assert out[["x_min", "y_min", "x_max", "y_max"]].to_numpy().tolist() == [
        [0, 10, 50, 60], [10, 10, 20, 20], [-500, 0, 1, 1]]
    strict = ProblemLog(strict=True)
    with pytest.raises(DataError, match="line 3"):
        check_box_bounds(table, {"a": (100, 80)}, strict)
    assert len(strict.items) == 1  # the clip warning was logged, not fatal
    assert np.isfinite(out.loc[0, "x_min"])
