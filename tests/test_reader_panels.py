"""Reader panels (issue 19): which set of readers read each image, the panels of a CSV, and prepare's
--drop-panels / --keep-panels / --keep-normal against hand counts; the same on the real Kaggle VinBigData
train.csv that ships in the torchxrayvision wheel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_script, vinbigdata_csv

from detx.core.errors import InputError
from detx.data.readers import image_panels, parse_panel, read_reader_csv, reader_panels, select_panels
from detx.synthetic.generator import write_dicom

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
# Six 100x80 images. Panel R8+R9+R10 reads a1 (abnormal), a2 (normal), a3 (abnormal); panel R1+R11+R12 reads
# b1 (abnormal) and b2 (normal); panel R2+R13 (two readers) reads c1 (normal).
PANELS_CSV = HEADER + (
    "a1,Cardiomegaly,3,R8,10,10,50,50\n" "a1,Cardiomegaly,3,R9,12,10,52,50\n" "a1,Cardiomegaly,3,R10,10,12,50,52\n"
    "a1,Nodule/Mass,8,R9,60,60,70,70\n"
    "a2,No finding,14,R10,,,,\n" "a2,No finding,14,R8,,,,\n" "a2,No finding,14,R9,,,,\n"
    "a3,Aortic enlargement,0,R8,5,5,25,25\n" "a3,Aortic enlargement,0,R9,5,5,25,25\n" "a3,No finding,14,R10,,,,\n"
    "b1,Nodule/Mass,8,R1,20,20,40,40\n" "b1,Nodule/Mass,8,R11,20,21,40,41\n" "b1,Nodule/Mass,8,R12,21,20,41,40\n"
    "b2,No finding,14,R1,,,,\n" "b2,No finding,14,R11,,,,\n" "b2,No finding,14,R12,,,,\n"
    "c1,No finding,14,R2,,,,\n" "c1,No finding,14,R13,,,,\n"
)


@pytest.fixture
def panels_csv(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(PANELS_CSV)
    return p


def test_parse_panel_canonical_form():
    assert parse_panel("R10+R8+R9") == parse_panel("R8, R9,R10") == parse_panel("R8|R9|R10") == "R8+R9+R10"
    with pytest.raises(InputError, match="names no reader"):
        parse_panel(" + ")


def test_panels_of_a_hand_built_csv(panels_csv):
    table, _ = read_reader_csv(panels_csv)
    per_image = image_panels(table).set_index("image_id")
    assert per_image["panel"].to_dict() == {"a1": "R8+R9+R10", "a2": "R8+R9+R10", "a3": "R8+R9+R10",
                                            "b1": "R1+R11+R12", "b2": "R1+R11+R12", "c1": "R2+R13"}
    assert per_image["boxes"].to_dict() == {"a1": 4, "a2": 0, "a3": 2, "b1": 3, "b2": 0, "c1": 0}
    panels = reader_panels(table)
    assert [p["readers"] for p in panels] == [["R8", "R9", "R10"], ["R1", "R11", "R12"], ["R2", "R13"]]
    assert [p["images"] for p in panels] == [3, 2, 1]
    assert [p["abnormal_share"] for p in panels] == pytest.approx([2 / 3, 1 / 2, 0])
    # boxes per abnormal image per reader: R8+R9+R10 drew 6 boxes on 2 abnormal images, 3 readers -> 1; b: 3 / 3
    assert [p["boxes_per_abnormal_image"] for p in panels] == [1.0, 1.0, None]


@pytest.mark.parametrize("args,images", [
    (["--drop-panels", "R8+R9+R10"], {"b1", "b2", "c1"}),
    (["--drop-panels", "R10+R9+R8", "--keep-normal"], {"a2", "b1", "b2", "c1"}),
    (["--keep-panels", "R1+R11+R12"], {"b1", "b2"}),
    (["--keep-panels", "R1+R11+R12", "--keep-normal"], {"a2", "b1", "b2", "c1"}),
    (["--drop-panels", "R8+R9+R10", "R2+R13"], {"b1", "b2"}),
])
def test_prepare_drops_and_keeps_panels(panels_csv, tmp_path, capsys, args, images):
    d = tmp_path / "dicom"
    rng = np.random.default_rng(0)
    for name in ("a1", "a2", "a3", "b1", "b2", "c1"):
        write_dicom(d / f"{name}.dicom", rng.integers(0, 4096, (80, 100)).astype(np.uint16), bits_stored=12)
    out = tmp_path / "out"
    main = load_script("datasets/prepare_vindr_cxr.py").main
    assert main(["--csv", str(panels_csv), "--dicom-dir", str(d), "--out", str(out), "--size", "100", "--folds", "0",
                 "--workers", "1", "--no-report", *args]) == 0
    meta = pd.read_csv(out / "meta.csv")
    assert set(meta["image_id"]) == images
    assert {p.stem for p in (out / "images").glob("*.png")} == images
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(images) and summary["problems"] == {}  # a dropped image is no problem
    r = summary["readers"]
    assert r["images_dropped_panels"] == 6 - len(images) and r["images_before_panels"] == 6
    assert r["keep_normal"] == ("--keep-normal" in args)
    key = "drop_panels" if "--drop-panels" in args else "keep_panels"
    assert r[key] == summary["settings"][key] == [parse_panel(a) for a in args[1:] if a.startswith("R")]
    assert "image(s) dropped" in capsys.readouterr().out


def _written(out: Path) -> list[str]:
    """What a run left in ``out`` besides the CLI's lock file."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != ".detx.lock") if out.exists() else []


def test_prepare_panel_bad_input(panels_csv, tmp_path, capsys):
    d = tmp_path / "dicom"
    write_dicom(d / "a1.dicom", np.zeros((80, 100), np.uint16), bits_stored=12)
    main = load_script("datasets/prepare_vindr_cxr.py").main
    base = ["--csv", str(panels_csv), "--dicom-dir", str(d), "--size", "100", "--folds", "0", "--workers", "1",
            "--no-report"]
    out = tmp_path / "out"
    # a panel the CSV does not have (R8+R9 is not R8+R9+R10): named, exit 2, nothing written
    assert main([*base, "--out", str(out), "--drop-panels", "R9+R8"]) == 2
    err = capsys.readouterr().err
    assert "R8+R9" in err and "R8+R9+R10 (3 images)" in err and str(panels_csv) in err
    assert _written(out) == []
    assert main([*base, "--out", str(out), "--drop-panels", "R2+R13", "--keep-panels", "R1+R11+R12"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--keep-normal"]) == 2
    assert "--keep-normal needs" in capsys.readouterr().err
    no_rad = tmp_path / "no_rad.csv"
    pd.read_csv(panels_csv).drop(columns="rad_id").to_csv(no_rad, index=False)
    assert main([*base[:0], "--csv", str(no_rad), *base[2:], "--out", str(out), "--drop-panels", "R2+R13"]) == 2
    assert "no reader ids" in capsys.readouterr().err
    assert _written(out) == []


def test_real_vinbigdata_panels_and_the_second_place_set():
    table, problems = read_reader_csv(vinbigdata_csv())
    assert problems == [] and len(table) == 67914
    panels = reader_panels(table)
    top = panels[0]
    assert top["readers"] == ["R8", "R9", "R10"] and top["images"] == 5501
    assert round(top["abnormal_share"], 2) == 0.75 and top["abnormal_images"] == 4146
    assert sum(p["images"] for p in panels) == 15000
    # hand count with plain pandas: the trio's images, and which of them some reader drew a box on
    raw = pd.read_csv(vinbigdata_csv())
    readers = raw.groupby("image_id")["rad_id"].agg(lambda s: frozenset(s))
    trio = set(readers.index[readers == frozenset({"R8", "R9", "R10"})])
    abnormal = set(raw.loc[raw["class_name"] != "No finding", "image_id"])
    assert len(trio) == 5501 and len(trio & abnormal) == 4146
    kept, sel = select_panels(table, drop=["R8+R9+R10"])
    assert set(kept["image_id"]) == set(readers.index) - trio and len(sel.images_dropped) == 5501
    kept, sel = select_panels(table, drop=["R10+R9+R8"], keep_normal=True)
    assert set(kept["image_id"]) == (set(readers.index) - trio) | (trio - abnormal)
    assert kept["image_id"].nunique() == 15000 - 4146 and len(sel.images_dropped) == 4146
