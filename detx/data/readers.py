"""Reader annotation CSVs of each supported source, turned into one normalized table.

The normalized table (a pandas DataFrame) has one row per box per reader:

==========  =====================================================================================
column      meaning
==========  =====================================================================================
image_id    the dataset's image id (str; the DICOM file name without extension)
rad_id      the reader ("R8", ...; "" when the source does not say, e.g. PhysioNet test consensus)
class_name  the canonical class name, or "No finding"
class_id    0-based index into the dataset's classes; ``len(classes)`` for "No finding"
x_min ...   x_min, y_min, x_max, y_max: float, original DICOM pixels; NaN on "No finding" rows
study_id    str, "" when unknown (only VinDr-SpineXR has studies)
row         the line of the source CSV the row came from (header = line 1); -1 for derived rows
==========  =====================================================================================

``table.attrs`` carries ``dataset`` (a key of :data:`detx.core.classes.DATASET_CLASSES`) and ``classes``.

Bad rows (unknown class name, a finding box with missing or non-numeric coordinates, an inverted or
empty box) are never returned: each becomes a :class:`Problem` naming the CSV line. In strict mode the
first problem raises :class:`DataError` instead. Coordinates outside the image can only be checked
once the image size is known: :func:`check_box_bounds`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from detx.core.classes import (
    GLOBAL_LABEL_ALIASES,
    NO_FINDING,
    PHYSIONET_TO_KAGGLE,
    SPINEXR_CLASSES,
    VINDR_CXR_CLASSES,
    VINDR_CXR_GLOBAL_LABELS,
    VINDR_CXR_LOCAL_LABELS,
)
from detx.core.errors import InputError, MissingFileError, StrictModeError
from detx.core.io import atomic_write_text

logger = logging.getLogger(__name__)

TABLE_COLUMNS: tuple[str, ...] = (
    "image_id", "rad_id", "class_name", "class_id", "x_min", "y_min", "x_max", "y_max", "study_id", "row",
)
BOX_COLUMNS: tuple[str, ...] = ("x_min", "y_min", "x_max", "y_max")
FORMATS: tuple[str, ...] = ("kaggle", "physionet", "spinexr")


class DataError(StrictModeError, ValueError):
    """A problem with the input data, raised in strict mode (the message names the file, row or image)."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class Problem:
    """One skipped (or, for ``kind == "clipped"``, repaired) piece of input.

    ``kind`` is one of: unknown_class, missing_coords, inverted_box, empty_box, missing_image_id,
    bad_label, clipped, out_of_image, missing_dicom, bad_dicom, no_csv_rows, no_valid_rows,
    duplicate_dicom.
    """

    kind: str
    where: str
    message: str
    image_id: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ProblemLog:
    """Collects problems; in strict mode the first one that is not a mere warning raises :class:`DataError`."""

    #: kinds that repair the input instead of dropping it: logged and counted, never fatal
    WARNING_KINDS = frozenset({"clipped"})

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.items: list[Problem] = []

    def add(self, kind: str, where: str, message: str, image_id: str = "") -> None:
        problem = Problem(kind, where, message, image_id)
        if self.strict and kind not in self.WARNING_KINDS:
            raise DataError(problem)
        logger.warning("%s", problem)
        self.items.append(problem)

    def extend(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.add(p.kind, p.where, p.message, p.image_id)

    def write_csv(self, path: str | os.PathLike) -> None:
        """``problems.csv``: one row per problem (``kind, where, message, image_id``), written atomically."""
        frame = pd.DataFrame([asdict(p) for p in self.items], columns=["kind", "where", "message", "image_id"])
        atomic_write_text(path, frame.to_csv(index=False))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.items:
            out[p.kind] = out.get(p.kind, 0) + 1
        return dict(sorted(out.items()))

    def __len__(self) -> int:
        return len(self.items)


def _key(name: str) -> str:
    """Case- and spacing-insensitive lookup key of a class name."""
    return re.sub(r"\s+", " ", str(name)).strip().lower()


def _class_lookup(classes: Iterable[str], aliases: dict[str, str] | None = None) -> dict[str, str]:
    lookup = {_key(c): c for c in classes}
    lookup[_key(NO_FINDING)] = NO_FINDING
    for alias, target in (aliases or {}).items():
        lookup[_key(alias)] = target
    return lookup


def _str_col(df: pd.DataFrame, name: str) -> pd.Series:
    if name not in df.columns:
        return pd.Series([""] * len(df), index=df.index, dtype=object)
    col = df[name]
    return col.where(col.notna(), "").astype(str).str.strip().astype(object)


def _read_csv(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"annotation CSV not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=True)
    df.columns = [c.strip() for c in df.columns]
    return df


def require_columns(df: pd.DataFrame, path: str | os.PathLike, what: str, required: Iterable[str]) -> None:
    """Stop on a CSV that lacks a column its format needs (a missing coordinate column would otherwise turn every
    box into a missing-coordinates problem and leave an all-normal dataset).

    Raises:
        InputError: naming the file, the missing columns and the columns it has.
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: a {what} file needs the column(s) {missing}, which it lacks; its columns are "
                         f"{list(df.columns)}")


def _normalize(
    df: pd.DataFrame,
    source: str,
    *,
    dataset: str,
    classes: tuple[str, ...],
    lookup: dict[str, str],
    class_col: str,
    coord_cols: tuple[str, str, str, str],
    log: ProblemLog,
    class_map: dict[str, str] | None = None,
    class_id_col: str | None = None,
) -> pd.DataFrame:
    """Validate rows of a source CSV and build the normalized table (bad rows become problems)."""
    index = {c: i for i, c in enumerate(classes)}
    nf_id = len(classes)
    n = len(df)
    image_ids = _str_col(df, "image_id").to_numpy(dtype=object)
    rad_ids = _str_col(df, "rad_id").to_numpy(dtype=object)
    study_ids = _str_col(df, "study_id").to_numpy(dtype=object)
    names = _str_col(df, class_col).to_numpy(dtype=object)
    given_ids = _str_col(df, class_id_col).to_numpy(dtype=object) if class_id_col else None
    coords = np.stack(
        [pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) if c in df.columns
         else np.full(n, np.nan) for c in coord_cols], axis=1,
    ) if n else np.zeros((0, 4))

    # every check as an array operation over the distinct values; only the rows that fail one are looked at one by one
    def canonical(raw: str) -> str | None:
        name = lookup.get(_key(raw))
        if name is not None and class_map is not None and name != NO_FINDING:
            name = class_map.get(name)
        return name

    uniq, inverse = np.unique(names.astype(str), return_inverse=True) if n else (np.zeros(0, str), np.zeros(0, int))
    canon = np.array([canonical(u) for u in uniq], dtype=object)
    canon_names = canon[inverse] if n else np.zeros(0, object)
    known = np.array([c is not None for c in canon], bool)[inverse] if n else np.zeros(0, bool)
    cid_of = np.array([-1 if c is None else nf_id if c == NO_FINDING else index[c] for c in canon], np.int64)
    cids = cid_of[inverse] if n else np.zeros(0, np.int64)
    is_nf = cids == nf_id
    suspect = (image_ids == "") | ~known
    if given_ids is not None:
        given = pd.to_numeric(pd.Series(given_ids), errors="coerce").to_numpy(dtype=float)
        suspect |= (given_ids != "") & ~(np.isfinite(given) & (np.trunc(given) == cids))
    with np.errstate(invalid="ignore"):
        bad_box = (np.isnan(coords).any(axis=1) | (coords[:, 2] <= coords[:, 0]) | (coords[:, 3] <= coords[:, 1]))
    suspect |= ~is_nf & bad_box
    ok = ~suspect
    for i in np.flatnonzero(suspect):
        where = f"{source} line {i + 2}"
        image_id = image_ids[i]
        if not image_id:
            log.add("missing_image_id", where, "row has no image_id")
            continue
        raw_name = names[i]
        name = canon_names[i]
        if name is None:
            log.add("unknown_class", where, f"image {image_id}: unknown class name {raw_name!r}", image_id)
            continue
        cid = int(cids[i])
        if given_ids is not None and given_ids[i] != "":
            try:
                given_i = int(float(given_ids[i]))
            except ValueError:
                given_i = None
            if given_i != cid:
                log.add("unknown_class", where, f"image {image_id}: class_id {given_ids[i]!r} does not match "
                        f"class name {raw_name!r} (expected {cid})", image_id)
                continue
        box = coords[i]
        if name == NO_FINDING:
            ok[i] = True
            continue
        if np.isnan(box).any():
            log.add("missing_coords", where, f"image {image_id}: {name} box has missing or non-numeric "
                    f"coordinates {[df[c].iat[i] if c in df.columns else None for c in coord_cols]}", image_id)
        elif box[2] < box[0] or box[3] < box[1]:
            log.add("inverted_box", where, f"image {image_id}: {name} box is inverted "
                    f"(x_min={box[0]:g}, y_min={box[1]:g}, x_max={box[2]:g}, y_max={box[3]:g})", image_id)
        elif box[2] == box[0] or box[3] == box[1]:
            log.add("empty_box", where, f"image {image_id}: {name} box has zero width or height "
                    f"(x_min={box[0]:g}, y_min={box[1]:g}, x_max={box[2]:g}, y_max={box[3]:g})", image_id)
        else:
            ok[i] = True
    boxes = np.where(is_nf[:, None], np.nan, coords)[ok]
    table = pd.DataFrame({"image_id": image_ids[ok], "rad_id": rad_ids[ok], "class_name": canon_names[ok],
                          "class_id": cids[ok], "x_min": boxes[:, 0], "y_min": boxes[:, 1], "x_max": boxes[:, 2],
                          "y_max": boxes[:, 3], "study_id": study_ids[ok], "row": np.flatnonzero(ok) + 2})
    return make_table(table, dataset=dataset, classes=classes)


def make_table(rows: Iterable[tuple] | pd.DataFrame = (), *, dataset: str, classes: tuple[str, ...]) -> pd.DataFrame:
    """A normalized table from row tuples in :data:`TABLE_COLUMNS` order (or a frame), with the right dtypes."""
    table = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=list(TABLE_COLUMNS))
    for c in ("image_id", "rad_id", "class_name", "study_id"):
        table[c] = table[c].astype(object) if len(table) else pd.Series([], dtype=object)
    table["class_id"] = table["class_id"].astype(np.int64)
    table["row"] = table["row"].astype(np.int64)
    for c in BOX_COLUMNS:
        table[c] = table[c].astype(float)
    table = table.reset_index(drop=True)
    table.attrs = {"dataset": dataset, "classes": tuple(classes)}
    return table


def read_vinbigdata_csv(path: str | os.PathLike, strict: bool = False) -> tuple[pd.DataFrame, list[Problem]]:
    """Kaggle VinBigData ``train.csv`` (image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max).

    ``class_id`` must agree with ``class_name`` (14 = "No finding").
    """
    log = ProblemLog(strict)
    df = _read_csv(path)
    require_columns(df, path, "Kaggle VinBigData", ("image_id", "class_name", *BOX_COLUMNS))
    table = _normalize(
        df, Path(path).name, dataset="vindr-cxr", classes=VINDR_CXR_CLASSES,
        lookup=_class_lookup(VINDR_CXR_CLASSES), class_col="class_name", coord_cols=BOX_COLUMNS,
        log=log, class_id_col="class_id" if "class_id" in df.columns else None,
    )
    return table, log.items


def read_physionet_vindr_cxr(
    annotations_csv: str | os.PathLike,
    image_labels_csv: str | os.PathLike | None = None,
    kaggle_classes: bool = True,
    strict: bool = False,
) -> tuple[pd.DataFrame, list[Problem]]:
    """PhysioNet VinDr-CXR 1.0.0 ``annotations_{train,test}.csv`` (the test file has no ``rad_id``).

    Args:
        annotations_csv: the box file (image_id, [rad_id,] class_name, x_min, y_min, x_max, y_max).
        image_labels_csv: optional ``image_labels_{train,test}.csv``; its per-image labels (see
            :func:`read_physionet_image_labels`) are attached as ``table.attrs["image_labels"]``.
        kaggle_classes: map the 22 local labels onto the Kaggle 14 (``PHYSIONET_TO_KAGGLE``; dataset
            "vindr-cxr"); else keep all 22 (dataset "vindr-cxr-physionet").
    """
    log = ProblemLog(strict)
    df = _read_csv(annotations_csv)
    require_columns(df, annotations_csv, "PhysioNet VinDr-CXR annotations", ("image_id", "class_name", *BOX_COLUMNS))
    if kaggle_classes:
        dataset, classes, class_map = "vindr-cxr", VINDR_CXR_CLASSES, PHYSIONET_TO_KAGGLE
    else:
        dataset, classes, class_map = "vindr-cxr-physionet", VINDR_CXR_LOCAL_LABELS, None
    table = _normalize(
        df, Path(annotations_csv).name, dataset=dataset, classes=classes,
        lookup=_class_lookup(VINDR_CXR_LOCAL_LABELS), class_col="class_name", coord_cols=BOX_COLUMNS,
        log=log, class_map=class_map,
    )
    if image_labels_csv is not None:
        labels, label_problems = read_physionet_image_labels(image_labels_csv, strict=strict)
        log.items.extend(label_problems)
        table.attrs["image_labels"] = labels
    return table, log.items


def read_physionet_image_labels(path: str | os.PathLike, strict: bool = False,
                                exclude_readers: Iterable[str] = ()) -> tuple[pd.DataFrame, list[Problem]]:
    """PhysioNet ``image_labels_{train,test}.csv`` aggregated to one row per image (the rows of the readers in
    ``exclude_readers`` left out first, as prepare's ``--exclude-readers`` does with the boxes).

    A label is 1 for an image when any of its readers marked it (the same "any reader" rule as
    :func:`detx.data.fusion.image_labels`). Columns: image_id, n_label_readers, then one int column per
    label in the file's order (names canonicalized: "Other disease" -> "Other diseases"). An empty cell
    counts as 0 (some releases leave them empty); a row with another value than 0/1 is skipped as a
    ``bad_label`` problem.
    """
    log = ProblemLog(strict)
    df = _read_csv(path)
    if "image_id" not in df.columns:
        raise InputError(f"{path}: no image_id column; columns are {list(df.columns)}")
    excluded = {str(r) for r in exclude_readers}
    if excluded and "rad_id" in df.columns:
        df = df[~_str_col(df, "rad_id").isin(excluded)].reset_index(drop=True)
    known = _class_lookup(VINDR_CXR_LOCAL_LABELS + VINDR_CXR_GLOBAL_LABELS, GLOBAL_LABEL_ALIASES)
    label_cols = [c for c in df.columns if c not in ("image_id", "rad_id")]
    rename = {c: known.get(_key(c), c) for c in label_cols}
    values = np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) for c in label_cols], axis=1) \
        if label_cols else np.zeros((len(df), 0))
    values = np.where(np.isnan(values) & df[label_cols].isna().to_numpy(), 0.0, values)  # empty cell = not marked
    ok = np.isin(values, (0.0, 1.0)).all(axis=1)
    image_ids = _str_col(df, "image_id")
    for i in np.flatnonzero(~ok | (image_ids == "").to_numpy()):
        log.add("bad_label", f"{Path(path).name} line {i + 2}",
                f"image {image_ids.iat[i] or '?'}: label values must be 0 or 1", image_ids.iat[i])
    keep = ok & (image_ids != "").to_numpy()
    frame = pd.DataFrame(values[keep].astype(np.int64), columns=[rename[c] for c in label_cols])
    frame.insert(0, "image_id", image_ids[keep].to_numpy())
    grouped = frame.groupby("image_id", sort=True)
    out = grouped.max()
    out.insert(0, "n_label_readers", grouped.size())
    return out.reset_index(), log.items


def read_spinexr_csv(path: str | os.PathLike, strict: bool = False,
                     require_study_id: bool = False) -> tuple[pd.DataFrame, list[Problem]]:
    """VinDr-SpineXR 1.0.0 ``annotations/{train,test}.csv``.

    Columns image_id, lesion_type and the box (xmin, ymin, xmax, ymax or x_min, ...) are required; series_id and
    rad_id are optional, and study_id too unless ``require_study_id`` (study-grouped folds need it).

    Raises:
        InputError: a missing required column, or a chest (VinDr-CXR) file, named with its columns.
    """
    log = ProblemLog(strict)
    df = _read_csv(path)
    if "lesion_type" not in df.columns and "class_id" in df.columns:
        raise InputError(f"{path} looks like a VinDr-CXR chest file (class_name, class_id columns), not "
                         f"VinDr-SpineXR annotations (lesion_type); its columns are {list(df.columns)}")
    coord_cols = ("xmin", "ymin", "xmax", "ymax") if "xmin" in df.columns else BOX_COLUMNS
    class_col = "lesion_type" if "lesion_type" in df.columns else "class_name"
    require_columns(df, path, "VinDr-SpineXR annotations", ("image_id", class_col, *coord_cols))
    if require_study_id and "study_id" not in df.columns:
        raise InputError(f"{path} has no study_id column, so folds cannot keep a study's images together (images "
                         "of one study would leak between train and val); add the column, or opt out with "
                         "--no-study-groups (prepare) to split image by image")
    table = _normalize(
        df, Path(path).name, dataset="spinexr", classes=SPINEXR_CLASSES,
        lookup=_class_lookup(SPINEXR_CLASSES), class_col=class_col, coord_cols=coord_cols, log=log,
    )
    return table, log.items


def sniff_format(path: str | os.PathLike) -> str:
    """Which reader CSV ``path`` is, from its header: "kaggle", "physionet" or "spinexr"."""
    cols = {c.strip() for c in pd.read_csv(path, nrows=0).columns}
    if "lesion_type" in cols:
        return "spinexr"
    if "class_name" in cols and "class_id" in cols:
        return "kaggle"
    if "class_name" in cols:
        return "physionet"
    raise InputError(f"{path}: cannot tell the annotation format from its columns {sorted(cols)}; expected "
                     "Kaggle train.csv, PhysioNet annotations_*.csv or VinDr-SpineXR annotations")


def read_reader_csv(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    image_labels_csv: str | os.PathLike | None = None,
    kaggle_classes: bool = True,
    strict: bool = False,
    require_study_id: bool = False,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read any supported reader CSV into the normalized table (``fmt="auto"`` sniffs the header;
    ``require_study_id`` applies to SpineXR files)."""
    fmt = sniff_format(path) if fmt == "auto" else fmt
    if fmt == "kaggle":
        return read_vinbigdata_csv(path, strict=strict)
    if fmt == "physionet":
        return read_physionet_vindr_cxr(path, image_labels_csv, kaggle_classes=kaggle_classes, strict=strict)
    if fmt == "spinexr":
        return read_spinexr_csv(path, strict=strict, require_study_id=require_study_id)
    raise InputError(f"unknown annotation format {fmt!r}; expected auto or one of {FORMATS}")


def check_box_bounds(
    table: pd.DataFrame,
    sizes: dict[str, tuple[int, int]],
    log: ProblemLog,
    tolerance: float = 0.05,
    source: str = "",
) -> pd.DataFrame:
    """Clip boxes slightly outside their image and drop absurd ones.

    A box is clipped to the image (a ``clipped`` warning) when every coordinate lies within
    ``tolerance`` times the image side outside it, and dropped (``out_of_image``) when a coordinate is
    farther out or nothing of it is left inside. Rows of images missing from ``sizes`` are kept as they are.

    Args:
        table: normalized table.
        sizes: image_id -> (width, height) in original pixels.
        log: where problems go (strict mode raises on a dropped box).
        tolerance: fraction of the image side a coordinate may lie outside it and still be clipped.
        source: the CSV's name, for the messages.
    """
    keep = np.ones(len(table), dtype=bool)
    out = table.copy()
    boxes = np.array(out[list(BOX_COLUMNS)].to_numpy(dtype=float), copy=True)
    for i, (image_id, name, line) in enumerate(zip(out["image_id"], out["class_name"], out["row"])):
        if image_id not in sizes or np.isnan(boxes[i]).any():
            continue
        w, h = sizes[image_id]
        x0, y0, x1, y1 = boxes[i]
        where = f"{source} line {line}".strip() if line >= 0 else f"image {image_id}"
        desc = f"image {image_id} ({w}x{h}): {name} box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
            continue
        tx, ty = tolerance * w, tolerance * h
        far = x0 < -tx or y0 < -ty or x1 > w + tx or y1 > h + ty
        c = np.array([min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h)])
        if far or c[2] <= c[0] or c[3] <= c[1]:
            log.add("out_of_image", where, f"{desc} lies outside the image; dropped", image_id)
            keep[i] = False
            continue
        log.add("clipped", where, f"{desc} is slightly outside the image; clipped", image_id)
        boxes[i] = c
    out[list(BOX_COLUMNS)] = boxes
    out = out[keep].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


# ------------------------------------------------------------------------------------------------ readers
# Who drew what: the reader ids of a table, excluding readers, and per-reader fusion weights.


def reader_sort_key(rad_id: str) -> list:
    """Natural order of reader ids: R2 before R10."""
    return list(_reader_sort_key(str(rad_id)))


@functools.lru_cache(maxsize=4096)
def _reader_sort_key(rad_id: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rad_id))


def reader_ids(table: pd.DataFrame) -> list[str]:
    """The known reader ids of a normalized table in natural order (rows with an unknown reader, ``""``, left out)."""
    return sorted({str(r) for r in table["rad_id"] if str(r)}, key=reader_sort_key)


def join_readers(rad_ids: Iterable[str]) -> str:
    """``"R1|R5|R9"``: distinct known reader ids in natural order, as meta.csv and the fused tables hold them."""
    return _join_readers(frozenset(str(r) for r in rad_ids))


@functools.lru_cache(maxsize=4096)
def _join_readers(rad_ids: frozenset) -> str:  # a fused table joins the same few panels tens of thousands of times
    return "|".join(sorted((r for r in rad_ids if r), key=_reader_sort_key))


def require_reader_ids(table: pd.DataFrame, source: str | os.PathLike, what: str) -> None:
    """Stop when a table says nothing about its readers (no ``rad_id`` column, or an empty one).

    Raises:
        InputError: naming the file and what needed the readers.
    """
    if not reader_ids(table):
        raise InputError(f"{source} has no reader ids (no rad_id column, or an empty one), so {what} is not "
                         "possible: it needs to know which radiologist drew each box. The PhysioNet VinDr-CXR test "
                         "annotations, for one, are a consensus without readers; use a file with rad_id "
                         "(Kaggle train.csv, PhysioNet annotations_train.csv, VinDr-SpineXR with rad_id)")


def boxes_without_reader(table: pd.DataFrame) -> dict[str, int]:
    """The finding boxes with no reader id (``rad_id`` column absent or empty) and the images holding them.

    Fusion needs reader ids: such boxes are kept unfused, as one reader's opinion (a consensus, like the PhysioNet
    test annotations), so a CSV without ``rad_id`` of several readers' boxes would keep every reader's box.
    Returns ``{"boxes": n, "images": m}`` (both 0 when every box has a reader).
    """
    finding = table[(table["class_name"] != NO_FINDING) & (table["rad_id"].astype(str) == "")]
    return {"boxes": len(finding), "images": int(finding["image_id"].nunique())}


def describe_boxes_without_reader(counts: dict[str, int], fusion: str) -> str:
    """The one line prepare and evaluate print when :func:`boxes_without_reader` found some ("" when none)."""
    if not counts.get("boxes") or fusion == "none":
        return ""
    return (f"fusion ({fusion}) needs reader ids: {counts['boxes']} box(es) on {counts['images']} image(s) have no "
            "rad_id, so each image's boxes were treated as one reader's (a consensus) and kept unfused; if several "
            "radiologists drew them, give a CSV with rad_id")


@dataclass(frozen=True)
class ExcludedReaders:
    """What :func:`exclude_readers` did: the readers removed, the ids asked for that the table lacks, and the
    images dropped because every row of theirs came from an excluded reader."""

    excluded: tuple[str, ...]
    unknown: tuple[str, ...]
    images_dropped: tuple[str, ...]


def exclude_readers(table: pd.DataFrame, rad_ids: Iterable[str]) -> tuple[pd.DataFrame, ExcludedReaders]:
    """Remove every row (boxes and "No finding" calls) of the readers ``rad_ids``.

    An image read only by excluded readers leaves the table (it is in ``images_dropped``); an image that keeps
    at least one other reader keeps that reader's rows, so a reader who called it normal keeps it normal. Ids
    the table does not have are logged as a warning naming them and returned in ``unknown``.
    """
    wanted = [str(r).strip() for r in rad_ids if str(r).strip()]
    present = set(reader_ids(table))
    unknown = tuple(sorted({r for r in wanted if r not in present}, key=reader_sort_key))
    excluded = tuple(sorted({r for r in wanted if r in present}, key=reader_sort_key))
    if unknown:
        logger.warning("--exclude-readers: %s not among the readers of this file (%s); nothing to exclude for "
                       "%s", ", ".join(unknown), ", ".join(sorted(present, key=reader_sort_key)) or "none",
                       "it" if len(unknown) == 1 else "them")
    drop = table["rad_id"].isin(excluded).to_numpy()
    before = set(table["image_id"])
    out = table[~drop].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    dropped = tuple(sorted(before - set(out["image_id"])))
    if excluded:
        logger.info("excluded readers %s: %d row(s) removed, %d image(s) read only by them dropped",
                    ", ".join(excluded), int(drop.sum()), len(dropped))
    return out, ExcludedReaders(excluded, unknown, dropped)


def read_reader_weights(path: str | os.PathLike, readers: Iterable[str]) -> dict[str, float]:
    """Per-reader fusion weights from a CSV ``rad_id,weight`` (a weight is a positive number).

    Args:
        path: the weights CSV.
        readers: the readers whose boxes will be fused: each needs a weight. Readers of the file that are not
            among them are ignored with a warning.

    Raises:
        InputError: a missing file or column, a duplicate reader, a weight that is not a positive number, or
            readers of ``readers`` missing from the file (named).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"reader weights CSV not found: {path}")
    df = _read_csv(path)
    require_columns(df, path, "reader weights (rad_id,weight)", ("rad_id", "weight"))
    ids = _str_col(df, "rad_id")
    values = pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=float)
    weights: dict[str, float] = {}
    for line, (rad, w) in enumerate(zip(ids, values), start=2):
        if not rad:
            raise InputError(f"{path} line {line}: empty rad_id")
        if rad in weights:
            raise InputError(f"{path} line {line}: reader {rad} appears twice")
        if not np.isfinite(w) or w <= 0:
            raise InputError(f"{path} line {line}: the weight of {rad} must be a positive number, got "
                             f"{df['weight'].iat[line - 2]!r} (to leave a reader out, use --exclude-readers)")
        weights[rad] = float(w)
    needed = sorted({str(r) for r in readers if str(r)}, key=reader_sort_key)
    missing = [r for r in needed if r not in weights]
    if missing:
        raise InputError(f"{path} has no weight for reader(s) {', '.join(missing)} (it lists "
                         f"{', '.join(sorted(weights, key=reader_sort_key)) or 'none'}); give every reader whose "
                         "boxes are fused a weight, or exclude the reader with --exclude-readers")
    extra = sorted(set(weights) - set(needed), key=reader_sort_key)
    if extra:
        logger.warning("%s: weight(s) for %s, who drew nothing that is fused here; ignored", path, ", ".join(extra))
    return {r: weights[r] for r in needed}


# ------------------------------------------------------------------------------------------------ panels
# Which set of readers read each image. On the Kaggle VinBigData train.csv every image has three readers and one
# fixed set, R8+R9+R10, read 5,501 of the 15,000 images; the 2nd place fine-tuned on the images it did not read.

#: separator of the readers in a panel's name ("R8+R9+R10")
PANEL_SEP = "+"


def panel_name(rad_ids: Iterable[str]) -> str:
    """``"R8+R9+R10"``: distinct known reader ids in natural order, joined by ``+``."""
    return PANEL_SEP.join(sorted({str(r).strip() for r in rad_ids if str(r).strip()}, key=reader_sort_key))


def parse_panel(spec: str) -> str:
    """A panel as the user wrote it (``R8+R9+R10``, ``R10+R8+R9``, ``R8,R9,R10``) in canonical form.

    Raises:
        InputError: an empty panel.
    """
    name = panel_name(re.split(r"[+,|\s]+", str(spec)))
    if not name:
        raise InputError(f"panel {spec!r} names no reader; write it as R8+R9+R10")
    return name


def image_panels(table: pd.DataFrame) -> pd.DataFrame:
    """One row per image (sorted by image_id): ``image_id``, ``panel`` (its readers, ``"R8+R9+R10"``; ``""`` when
    none is known), ``n_readers``, ``abnormal`` (some reader drew a box) and ``boxes`` (finding boxes, all readers).
    """
    codes, images = pd.factorize(table["image_id"].astype(str).to_numpy(), sort=True)
    rad = table["rad_id"].astype(str).to_numpy()
    ids = sorted(set(rad) - {""}, key=reader_sort_key)
    finding = (table["class_name"] != NO_FINDING).to_numpy()
    n_img = len(images)
    boxes = np.bincount(codes, weights=finding, minlength=n_img).astype(np.int64)
    # each image's reader set as a row of a boolean image x reader matrix, named once per distinct set
    rank = pd.Series(np.arange(len(ids)), index=ids, dtype=np.int64).reindex(rad).to_numpy()
    known = ~np.isnan(rank) if rank.dtype.kind == "f" else np.ones(len(rad), bool)
    read = np.zeros((n_img, len(ids)), bool)
    read[codes[known], rank[known].astype(np.int64)] = True
    sets, inverse = np.unique(read, axis=0, return_inverse=True)
    names = np.array([PANEL_SEP.join(ids[j] for j in np.flatnonzero(row)) for row in sets], dtype=object)
    out = pd.DataFrame({"image_id": np.asarray(images, dtype=object),
                        "panel": names[inverse.reshape(-1)] if n_img else np.zeros(0, object),
                        "n_readers": read.sum(axis=1).astype(np.int64), "boxes": boxes})
    out["abnormal"] = out["boxes"] > 0
    return out


def reader_panels(table: pd.DataFrame, per_image: pd.DataFrame | None = None) -> list[dict]:
    """Every set of readers that read images together, largest first (ties: by name): ``readers`` (ids),
    ``images``, ``abnormal_images``, ``abnormal_share`` and ``boxes_per_abnormal_image`` (the panel's finding boxes
    over its abnormal images and its readers: boxes one reader drew on an abnormal image, on average; None without
    an abnormal image). Images whose readers are unknown are left out."""
    per_image = image_panels(table) if per_image is None else per_image
    known = per_image[per_image["panel"] != ""]
    g = known.groupby("panel", sort=False).agg(images=("image_id", "size"), abnormal=("abnormal", "sum"),
                                                boxes=("boxes", "sum"), n_readers=("n_readers", "first"))
    g = g.reset_index().sort_values(["images", "panel"], ascending=[False, True], kind="stable")
    out = []
    for p in g.itertuples(index=False):
        ab = int(p.abnormal)
        out.append({"readers": p.panel.split(PANEL_SEP), "panel": p.panel, "images": int(p.images),
                    "abnormal_images": ab, "abnormal_share": ab / int(p.images),
                    "boxes": int(p.boxes),
                    "boxes_per_abnormal_image": int(p.boxes) / (ab * int(p.n_readers)) if ab else None})
    return out


@dataclass(frozen=True)
class PanelSelection:
    """What :func:`select_panels` did: the panels dropped or kept (canonical names), whether normal images were kept
    whatever their panel, and the images removed."""

    drop: tuple[str, ...]
    keep: tuple[str, ...]
    keep_normal: bool
    images_before: int
    images_dropped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"drop_panels": list(self.drop), "keep_panels": list(self.keep), "keep_normal": self.keep_normal,
                "images_before_panels": self.images_before, "images_dropped_panels": len(self.images_dropped)}


def select_panels(
    table: pd.DataFrame,
    drop: Iterable[str] = (),
    keep: Iterable[str] = (),
    keep_normal: bool = False,
    source: str | os.PathLike = "the annotations",
) -> tuple[pd.DataFrame, PanelSelection]:
    """Drop the images read by the panels ``drop``, or keep only those read by the panels ``keep`` (not both);
    with ``keep_normal`` an image every reader called normal stays whatever its panel. A panel is the exact set of
    an image's readers (``R8+R9+R10`` is not ``R8+R9``), in any order.

    Raises:
        InputError: both ``drop`` and ``keep``, a table without reader ids, or a panel the table does not have
            (named, with the panels it has).
    """
    drop = tuple(dict.fromkeys(parse_panel(p) for p in drop))
    keep = tuple(dict.fromkeys(parse_panel(p) for p in keep))
    if drop and keep:
        raise InputError("--drop-panels and --keep-panels exclude each other: give one of them")
    per_image = image_panels(table)
    if not drop and not keep:
        return table, PanelSelection((), (), keep_normal, len(per_image), ())
    require_reader_ids(table, source, "--drop-panels" if drop else "--keep-panels")
    have = set(per_image["panel"])
    missing = [p for p in (*drop, *keep) if p not in have]
    if missing:
        largest = ", ".join(f"{p['panel']} ({p['images']} images)" for p in reader_panels(table, per_image)[:5])
        raise InputError(f"{source}: no image was read by the panel(s) {', '.join(missing)} (a panel is the exact set "
                         f"of an image's readers); its largest panels are {largest}")
    chosen = per_image["panel"].isin(drop or keep).to_numpy()
    remove = chosen if drop else ~chosen
    if keep_normal:
        remove = remove & per_image["abnormal"].to_numpy()
    dropped = tuple(per_image.loc[remove, "image_id"])
    out = table[~table["image_id"].astype(str).isin(set(dropped)).to_numpy()].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    logger.info("panels: %s %s%s: %d of %d image(s) dropped", "dropped" if drop else "kept only",
                ", ".join(drop or keep), " (normal images kept)" if keep_normal else "", len(dropped), len(per_image))
    return out, PanelSelection(drop, keep, keep_normal, len(per_image), dropped)
