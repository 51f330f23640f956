"""The Indiana University chest X-ray collection (Open-i, ``NLMCXR``): its radiology-report XMLs, read into plain
records, and the label rules detx applies to them.

Each ``ecgen-radiology/<n>.xml`` is one study: ``uId id="CXR<n>"``, the report sections (``AbstractText`` with
``Label`` ``COMPARISON``, ``INDICATION``, ``FINDINGS``, ``IMPRESSION``), the MeSH terms the indexers gave it
(``MeSH/major``; ``MeSH/minor`` when present, and the ``MeSH/automatic`` terms of the text mining) and its images
(``parentImage id="CXR<n>_IM-...">`` with a ``caption``). A term reads ``Heading/qualifier/...``
(``Opacity/lung/base/left/mild``); its heading (the part before the first ``/``) is what the label rules match.

Label rules (stated once, here):

- **normal / abnormal**: a study is *normal* iff its MeSH major terms are exactly ``normal`` (one term,
  case-insensitive); every other study is abnormal, including the ones indexed ``No Indexing`` or
  ``Technical Quality of Image Unsatisfactory`` (their count is reported, see :func:`mesh_heading`).
- **findings** (multi-label): a finding is present iff one of its MeSH headings in :data:`OPENI_FINDINGS` is the
  heading of a major term (``Pulmonary Atelectasis/left/base`` -> Atelectasis).

The image files are named by the ``parentImage`` id: ``CXR1_1_IM-0001-3001.png`` in the PNG release, and
``1_IM-0001-3001.dcm`` (no ``CXR`` prefix) in the DICOM release; :func:`openi_image_stems` gives both.
"""

from __future__ import annotations

import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from detx.core.errors import InputError, MissingFileError

__all__ = ["OPENI_FINDINGS", "OpenIImage", "OpenIReport", "caption_view", "finding_labels", "is_normal",
           "mesh_heading", "metadata_view", "openi_image_stems", "parse_openi_report", "read_openi_reports"]

#: the findings detx labels from MeSH: finding -> the MeSH headings (lower case) that mark it. The chest findings of
#: ChestX-ray14 / torchxrayvision's Open-i set that Open-i indexes at least ~20 times.
OPENI_FINDINGS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("pulmonary atelectasis", "atelectases"),
    "Cardiomegaly": ("cardiomegaly",),
    "Calcified Granuloma": ("calcified granuloma",),
    "Consolidation": ("consolidation",),
    "Edema": ("pulmonary edema", "edema"),
    "Effusion": ("pleural effusion",),
    "Emphysema": ("emphysema", "pulmonary emphysema"),
    "Fracture": ("fractures, bone",),
    "Granuloma": ("granuloma", "granulomatous disease"),
    "Hernia": ("hernia, hiatal", "hernia, diaphragmatic"),
    "Infiltration": ("infiltrate",),
    "Lung Opacity": ("opacity", "airspace disease"),
    "Nodule/Mass": ("nodule", "mass"),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
}

_ID = re.compile(r"^CXR(\d+)")
_FIGURE = re.compile(r"^(CXR\d+)_\d+_IM")


@dataclass(frozen=True)
class OpenIImage:
    """One ``parentImage`` of a report."""

    image_id: str  # CXR1_1_IM-0001-3001
    caption: str = ""


@dataclass
class OpenIReport:
    """One Open-i report XML (one study)."""

    study_id: str  # the uId, CXR<n>
    source: str  # the XML's name, for messages
    sections: dict[str, str] = field(default_factory=dict)  # COMPARISON, INDICATION, FINDINGS, IMPRESSION
    mesh_major: list[str] = field(default_factory=list)
    mesh_minor: list[str] = field(default_factory=list)
    mesh_automatic: list[str] = field(default_factory=list)
    images: list[OpenIImage] = field(default_factory=list)

    @property
    def findings(self) -> str:
        return self.sections.get("FINDINGS", "")

    @property
    def impression(self) -> str:
        return self.sections.get("IMPRESSION", "")


def mesh_heading(term: str) -> str:
    """``Opacity/lung/base/left/mild`` -> ``opacity`` (lower case, stripped)."""
    return term.split("/", 1)[0].strip().lower()


def is_normal(report: OpenIReport) -> bool:
    """The label rule: normal iff the MeSH major terms are exactly ``normal``."""
    return [t.strip().lower() for t in report.mesh_major] == ["normal"]


def finding_labels(report: OpenIReport, findings: dict[str, tuple[str, ...]] | None = None) -> dict[str, int]:
    """finding -> 0/1 from the headings of the report's MeSH major terms (see the module docstring)."""
    findings = OPENI_FINDINGS if findings is None else findings
    heads = {mesh_heading(t) for t in report.mesh_major}
    return {name: int(any(h in heads for h in headings)) for name, headings in findings.items()}


def _text(node: ET.Element | None) -> str:
    return " ".join("".join(node.itertext()).split()) if node is not None else ""


def parse_openi_report(data: bytes | str, source: str = "<xml>") -> OpenIReport:
    """One report XML (its bytes or text) as an :class:`OpenIReport`.

    Raises:
        InputError: not XML, or no ``uId``/``IUXRId`` to name the study.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise InputError(f"{source}: not a readable report XML ({e})") from e
    uid = root.find("uId")
    study = uid.get("id", "") if uid is not None else ""
    if not study:
        iux = root.find("IUXRId")
        study = f"CXR{iux.get('id')}" if iux is not None and iux.get("id") else ""
    if not study:
        raise InputError(f"{source}: no <uId id=...> (nor <IUXRId>) names the study")
    rep = OpenIReport(study_id=study, source=source)
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        if label:
            rep.sections[label] = _text(node)
    for kind, out in (("major", rep.mesh_major), ("minor", rep.mesh_minor), ("automatic", rep.mesh_automatic)):
        out.extend(t for t in (_text(n) for n in root.findall(f"MeSH/{kind}")) if t)
    for img in root.findall("parentImage"):
        if img.get("id"):
            rep.images.append(OpenIImage(img.get("id", "").strip(), _text(img.find("caption"))))
    return rep


def _xml_sources(reports: Path) -> Iterator[tuple[str, bytes]]:
    if reports.is_file() and tarfile.is_tarfile(reports):
        with tarfile.open(reports) as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                if m.isfile() and m.name.lower().endswith(".xml") and not Path(m.name).name.startswith("."):
                    f = tar.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
        return
    if not reports.is_dir():
        raise MissingFileError(f"--reports {reports}: not a folder of report XMLs (nor a .tgz of them)")
    sub = reports / "ecgen-radiology"
    folder = sub if sub.is_dir() else reports
    for p in sorted(folder.rglob("*.xml")):
        if not p.name.startswith("."):
            yield str(p.relative_to(reports)), p.read_bytes()


def read_openi_reports(reports: str | os.PathLike) -> tuple[list[OpenIReport], list[tuple[str, str]]]:
    """All report XMLs of a folder (``ecgen-radiology/*.xml`` in it or below it) or of the release's ``.tgz``.

    Returns:
        (reports sorted by study number, [(xml name, why it was unreadable), ...]).

    Raises:
        MissingFileError: no such folder or archive; InputError: it holds no XML.
    """
    path = Path(reports)
    out, bad = [], []
    for name, data in _xml_sources(path):
        try:
            out.append(parse_openi_report(data, name))
        except InputError as e:
            bad.append((name, str(e)))
    if not out and not bad:
        raise InputError(f"--reports {path}: no report XML in it (expected ecgen-radiology/*.xml)")

    def key(r: OpenIReport) -> tuple[int, str]:
        m = _ID.match(r.study_id)
        return (int(m.group(1)) if m else 1 << 30, r.study_id)

    return sorted(out, key=key), bad


def openi_image_stems(image_id: str) -> tuple[str, ...]:
    """The names (without extension) an Open-i image goes by: the PNG release keeps the report's id
    (``CXR1_1_IM-0001-3001``), the DICOM release and its header table drop the figure number of the few ids that
    carry one (``CXR1_IM-0001-3001``, study 1 only in the real release) and the files drop ``CXR``
    (``1_IM-0001-3001.dcm``). The report's id comes first."""
    out = [image_id]
    short = _FIGURE.sub(r"\1_IM", image_id)
    out.append(short)
    for name in (image_id, short):
        if _ID.match(name):
            out.append(name[3:])
    return tuple(dict.fromkeys(out))


#: DICOM ``View Position`` values -> detx's view names
_VIEW_POSITIONS = {"PA": "PA", "AP": "AP", "LL": "LATERAL", "RL": "LATERAL", "LATERAL": "LATERAL",
                   "LARGE LATERAL": "LATERAL", "LAT": "LATERAL"}


def metadata_view(view_position: object) -> str:
    """A DICOM ``View Position`` as ``PA``, ``AP``, ``LATERAL``, or "" when empty or unknown."""
    if not isinstance(view_position, str):
        return ""
    return _VIEW_POSITIONS.get(view_position.strip().upper(), "")


def caption_view(caption: str) -> str:
    """The view a caption names when it names only one (``PA chest`` -> PA, ``Lateral view`` -> LATERAL); ""
    when it names both (most Open-i captions describe the study: ``Xray Chest PA and Lateral``) or none."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    frontal = {"pa", "ap", "frontal", "posteroanterior", "anteroposterior"} & words
    lateral = {"lateral", "lat"} & words
    if lateral and not frontal:
        return "LATERAL"
    if frontal and not lateral:
        return "AP" if words & {"ap", "anteroposterior"} and not words & {"pa", "posteroanterior"} else "PA"
    return ""
