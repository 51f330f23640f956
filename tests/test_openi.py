"""Open-i (Indiana University chest X-rays): the report parser and label rules on hand-made XMLs, and the whole
preparation on the real reports shipped in torchxrayvision with placeholder images named by the real image ids."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from detx.data.openi import (
    caption_view,
    finding_labels,
    is_normal,
    metadata_view,
    openi_image_stems,
    parse_openi_report,
    read_openi_reports,
)
from detx.synthetic.generator import write_dicom

prepare_openi = load_script("datasets/prepare_openi.py").main


def _xml(n: int, major: list[str], images: list[tuple[str, str]], findings: str = "Clear lungs.") -> str:
    mesh = "".join(f"<major>{m}</major>" for m in major)
    imgs = "".join(f'<parentImage id="{i}"><figureId>F1</figureId><caption>{c}</caption></parentImage>'
                   for i, c in images)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{n}"/><IUXRId id="{n}"/>'
            f'<MedlineCitation><Article><Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">Impression {n}.</AbstractText></Abstract></Article></MedlineCitation>'
            f"<MeSH>{mesh}</MeSH>{imgs}</eCitation>")


def _png(path: Path, h: int = 48, w: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w), 90, np.uint8)
    img[5:15, 5:15] = 240
    cv2.imwrite(str(path), img)


def test_report_parser_and_label_rules():
    rep = parse_openi_report(_xml(7, ["Opacity/lung/base/left/mild", "Pulmonary Atelectasis/base", "Nodule"],
                                  [("CXR7_IM-0001-1001", "PA chest"), ("CXR7_IM-0001-2001", "Lateral view")]), "7.xml")
    assert rep.study_id == "CXR7" and rep.findings == "Clear lungs." and rep.impression == "Impression 7."
    assert [i.image_id for i in rep.images] == ["CXR7_IM-0001-1001", "CXR7_IM-0001-2001"]
    assert not is_normal(rep)
    labels = finding_labels(rep)
    assert {k for k, v in labels.items() if v} == {"Lung Opacity", "Atelectasis", "Nodule/Mass"}
    assert is_normal(parse_openi_report(_xml(8, ["normal"], []))) is True
    assert is_normal(parse_openi_report(_xml(9, ["normal", "Cardiomegaly/mild"], []))) is False
    assert is_normal(parse_openi_report(_xml(10, ["No Indexing"], []))) is False
    # views: the caption only when it names one view; the DICOM header's View Position first
    assert [caption_view(c) for c in ("PA chest", "Lateral view", "Xray Chest PA and Lateral", "Chest", "AP portable")
            ] == ["PA", "LATERAL", "", "", "AP"]
    assert [metadata_view(v) for v in ("PA", "LL", "RL", "AP", "LATERAL", float("nan"), "XX")] == \
        ["PA", "LATERAL", "LATERAL", "AP", "LATERAL", "", ""]
    assert openi_image_stems("CXR1_1_IM-0001-3001") == ("CXR1_1_IM-0001-3001", "CXR1_IM-0001-3001",
                                                         "1_1_IM-0001-3001", "1_IM-0001-3001")
    assert openi_image_stems("CXR10_IM-0002-1001") == ("CXR10_IM-0002-1001", "10_IM-0002-1001")


def test_prepare_hand_made(tmp_path):
    rep = tmp_path / "reports" / "ecgen-radiology"
    rep.mkdir(parents=True)
    rep.joinpath("1.xml").write_text(_xml(1, ["normal"], [("CXR1_IM-0001-1001", "PA chest"),
                                                          ("CXR1_IM-0001-2001", "Lateral chest")]))
    rep.joinpath("2.xml").write_text(_xml(2, ["Cardiomegaly/mild"], [("CXR2_IM-0002-1001", "PA and lateral"),
                                                                     ("CXR2_IM-0002-9001", "PA and lateral")]))
    rep.joinpath("3.xml").write_text(_xml(3, ["Pleural Effusion/right"], []))  # no image
    rep.joinpath("4.xml").write_text("<eCitation><uId id='CXR4'/>")  # broken XML
    rep.joinpath("5.xml").write_text(_xml(5, ["Pneumothorax"], [("CXR5_IM-0005-1001", "PA")]))
    imgs = tmp_path / "images"
    _png(imgs / "CXR1_IM-0001-1001.png", 60, 50)
    _png(imgs / "sub" / "CXR1_IM-0001-2001.png")
    _png(imgs / "CXR2_IM-0002-1001.png")  # CXR2_IM-0002-9001 is missing
    # the DICOM release drops "CXR" from the names; a DICOM keeps its original size
    write_dicom(imgs / "5_IM-0005-1001.dcm", np.full((80, 64), 700, np.uint16), bits_stored=12)
    out = tmp_path / "out"
    args = ["--reports", str(tmp_path / "reports"), "--images", str(imgs), "--out", str(out), "--size", "32",
            "--folds", "2", "--workers", "1", "--quiet"]
    assert prepare_openi(args) == 0
    meta = pd.read_csv(out / "meta.csv")
    assert meta["image_id"].tolist() == ["CXR1_IM-0001-1001", "CXR1_IM-0001-2001", "CXR2_IM-0002-1001",
                                         "CXR5_IM-0005-1001"]
    assert meta["label"].tolist() == [0, 0, 1, 1]
    assert meta["view"].tolist() == ["PA", "LATERAL", "unknown", "PA"]
    dcm = meta.set_index("image_id").loc["CXR5_IM-0005-1001"]
    assert (dcm["orig_width"], dcm["orig_height"], dcm["width"], dcm["height"]) == (64, 80, 26, 32)
    assert meta.groupby("study_id")["fold"].nunique().max() == 1  # a study's images share a fold
    problems = pd.read_csv(out / "problems.csv")
    assert sorted(problems["kind"]) == ["bad_report", "missing_image", "no_images"]
    assert problems.loc[problems["kind"] == "missing_image", "image_id"].tolist() == ["CXR2_IM-0002-9001"]
    coco = json.loads((out / "annotations" / "all.json").read_text())
    assert coco["annotations"] == [] and len(coco["images"]) == 4
    by_uid = {im["image_uid"]: im for im in coco["images"]}
    assert by_uid["CXR2_IM-0002-1001"]["image_labels"]["Cardiomegaly"] == 1
    assert by_uid["CXR5_IM-0005-1001"]["image_labels"]["Pneumothorax"] == 1
    assert sum(by_uid["CXR1_IM-0001-1001"]["image_labels"].values()) == 0
    reports = pd.read_csv(out / "reports.csv")
    assert reports.set_index("study_id").loc["CXR2", ["images_listed", "images_found"]].tolist() == [2, 1]
    # rerun: the conversion journal skips what is done; --strict stops at the first problem with status 1
    assert prepare_openi(args) == 0
    assert json.loads((out / "summary.json").read_text())["images_already_done"] == 4
    assert prepare_openi([*args[:5], str(tmp_path / "strict"), *args[6:], "--strict"]) == 1
    assert prepare_openi(["--reports", str(tmp_path / "nowhere"), "--images", str(imgs), "--out",
                          str(tmp_path / "o2")]) == 2


@pytest.fixture(scope="module")
def openi_files():
    xrv = pytest.importorskip("torchxrayvision")
    data = Path(xrv.__file__).parent / "data"
    if not (data / "NLMCXR_reports.tgz").is_file():
        pytest.skip("this torchxrayvision ships no NLMCXR_reports.tgz")
    return data / "NLMCXR_reports.tgz", data / "nlmcxr_dicom_metadata.csv.gz"


def test_real_report_counts(openi_files):
    """The counts the Open-i paper and DESIGN quote, measured on the real reports."""
    reports, bad = read_openi_reports(openi_files[0])
    assert bad == []
    assert len(reports) == 3955
    assert sum(is_normal(r) for r in reports) == 1391
    assert sum(len(r.images) for r in reports) == 7470
    assert sum(bool(r.images) for r in reports) == 3851


def test_prepare_real_reports_placeholder_images(openi_files, tmp_path):
    tgz, metadata = openi_files
    reports, _ = read_openi_reports(tgz)
    ids = [i.image_id for r in reports for i in r.images][:240]
    for i in ids:
        _png(tmp_path / "png" / f"{i}.png", 24, 20)
    out = tmp_path / "out"
    assert prepare_openi(["--reports", str(tgz), "--images", str(tmp_path / "png"), "--metadata", str(metadata),
                          "--out", str(out), "--size", "32", "--folds", "3", "--workers", "1", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["reports"], summary["normal_reports"], summary["images_listed"]) == (3955, 1391, 7470)
    assert summary["images"] == 240
    # every missing image is named and counted, and so is every report without images
    assert summary["problems"] == {"missing_image": 7470 - 240, "no_images": 3955 - 3851}
    meta = pd.read_csv(out / "meta.csv")
    assert meta["image_id"].tolist() == ids
    table = pd.read_csv(metadata, usecols=["imageid", "View Position"]).set_index("imageid")["View Position"]
    want = [next((metadata_view(table[s]) for s in openi_image_stems(i) if s in table.index), "") or "unknown"
            for i in ids]
    # CXR1_1_IM-0001-3001 is CXR1_IM-0001-3001 in the header table (which calls both of study 1's images PA: the
    # header views are noisy, torchxrayvision warns too)
    assert ids[0] == "CXR1_1_IM-0001-3001" and meta["view_source"].iloc[0] == "metadata"
    got = [v if s == "metadata" else "unknown" for v, s in zip(meta["view"], meta["view_source"].fillna(""))]
    assert got == want
    assert meta.groupby("study_id")["fold"].nunique().max() == 1
    assert sorted(meta["fold"].unique()) == [0, 1, 2]
    labels = dict(zip(pd.read_csv(out / "reports.csv")["study_id"], pd.read_csv(out / "reports.csv")["label"]))
    assert (meta["label"] == meta["study_id"].map(labels)).all()
    assert prepare_openi(["--reports", str(tgz), "--images", str(tmp_path / "png"), "--out", str(tmp_path / "s"),
                          "--size", "32", "--workers", "1", "--quiet", "--strict"]) == 1


def test_openi_config_names_the_prepared_findings():
    from detx.data.openi import OPENI_FINDINGS
    from detx.engine.config import get_detx_cfg

    cfg = get_detx_cfg(str(Path(__file__).resolve().parents[1] / "configs/classification/openi_densenet121.yaml"))
    assert list(cfg.MODEL.CLASSIFIER.IMAGE_LABELS) == list(OPENI_FINDINGS)
    assert len(OPENI_FINDINGS) == cfg.MODEL.CLASSIFIER.NUM_CLASSES
