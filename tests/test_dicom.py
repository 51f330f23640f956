"""DICOM decoding on generated files: LUTs, window, MONOCHROME1, RLE, 12/16 bit, resizing, PNG conversion."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from detx.data.dicom import (
    ConversionJournal,
    DicomError,
    convert_dicoms,
    load_dicom_image,
    resized_shape,
)
from detx.synthetic.generator import write_dicom

RAMP = np.array([[0, 100, 200, 300], [400, 500, 600, 700]], dtype=np.uint16)
WINDOW_PIXELS = np.array([[800, 900, 950], [1000, 1100, 1200]], dtype=np.uint16)


def _expected_minmax(v):
    v = v.astype(float)
    return np.rint(255 * (v - v.min()) / (v.max() - v.min())).astype(np.uint8)


@pytest.mark.parametrize("bits", [12, 16])
def test_full_range_scaling(tmp_path, bits):
    pixels = RAMP * (16 if bits == 16 else 1) + 7
    write_dicom(tmp_path / "a.dicom", pixels, bits_stored=bits)
    img, w, h = load_dicom_image(tmp_path / "a.dicom")
    assert (w, h) == (4, 2) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, _expected_minmax(pixels))
    assert img.min() == 0 and img.max() == 255
    img16, _, _ = load_dicom_image(tmp_path / "a.dicom", bit_depth=16)
    assert img16.dtype == np.uint16 and img16.max() == 65535
    np.testing.assert_array_equal(img16[0, :2], [0, round(65535 / 7)])


def test_monochrome1_is_inverted(tmp_path):
    write_dicom(tmp_path / "m1.dicom", RAMP, photometric="MONOCHROME1", bits_stored=12)
    img, _, _ = load_dicom_image(tmp_path / "m1.dicom")
    np.testing.assert_array_equal(img, 255 - _expected_minmax(RAMP))
    assert img[0, 0] == 255  # the smallest stored value is white in MONOCHROME1


def test_voi_window_applied(tmp_path):
    # center 1000.5, width 201: stored <= 900 -> black, > 1100 -> white, linear (x - 900) / 200 between
    write_dicom(tmp_path / "w.dicom", WINDOW_PIXELS, bits_stored=12, window=(1000.5, 201))
    img, _, _ = load_dicom_image(tmp_path / "w.dicom")
    np.testing.assert_array_equal(img, [[0, 0, 64], [128, 255, 255]])


def test_rescale_then_window_in_modality_units(tmp_path):
    # modality value = 2 * stored - 100; the window is in modality units: stored 500 -> 900 (black) ...
    stored = (WINDOW_PIXELS + 100) // 2
    write_dicom(tmp_path / "r.dicom", stored, bits_stored=12, rescale=(2, -100), window=(1000.5, 201))
    img, _, _ = load_dicom_image(tmp_path / "r.dicom")
    np.testing.assert_array_equal(img, [[0, 0, 64], [128, 255, 255]])


def test_rle_compressed_decodes_like_uncompressed(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(40, 30)).astype(np.uint16)
    write_dicom(tmp_path / "raw.dicom", pixels, bits_stored=12)
    write_dicom(tmp_path / "rle.dicom", pixels, bits_stored=12, compress="rle")
    assert pydicom.dcmread(tmp_path / "rle.dicom").file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    a, _, _ = load_dicom_image(tmp_path / "raw.dicom", 16)
    b, _, _ = load_dicom_image(tmp_path / "rle.dicom", 16)
    np.testing.assert_array_equal(a, b)


def test_jpeg2000_decodes_through_the_plugins(tmp_path):
    """Compressed transfer syntaxes go through pylibjpeg / gdcm (installed with detx)."""
    pytest.importorskip("openjpeg")
    pixels = np.random.default_rng(2).integers(0, 4096, size=(128, 96)).astype(np.uint16)
    write_dicom(tmp_path / "raw.dicom", pixels, bits_stored=12, photometric="MONOCHROME1")
    ds = pydicom.dcmread(tmp_path / "raw.dicom")
    ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(tmp_path / "j2k.dicom")
    for size in (None, 100):  # the full resolution level is needed (half of 128 is below 100): bit-identical
        a, _, _ = load_dicom_image(tmp_path / "raw.dicom", size)
        b, _, _ = load_dicom_image(tmp_path / "j2k.dicom", size)
        np.testing.assert_array_equal(a, b)
    # at 64 a reduced level is decoded (tests/test_dicom_j2k.py): same shape
    assert load_dicom_image(tmp_path / "j2k.dicom", 64)[0].shape == load_dicom_image(tmp_path / "raw.dicom", 64)[0].shape


def _reference(path, size):
    """The plain float pipeline: LUTs on the whole image, min-max, invert, float resize, round."""
    ds = pydicom.dcmread(path)
    f = np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), dtype=np.float64)
    f = (f - f.min()) / (f.max() - f.min())
    if ds.PhotometricInterpretation == "MONOCHROME1":
        f = 1 - f
    w, h = resized_shape(f.shape[1], f.shape[0], size)
    return np.rint(cv2.resize(f.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) * 255)


@pytest.mark.parametrize("kw", [
    {"bits_stored": 16},                                               # affine: resized before the LUT
    {"bits_stored": 12, "photometric": "MONOCHROME1", "rescale": (0.5, 10)},
    {"bits_stored": 14, "window": (6000, 4000)},                       # window clips inside: LUT first
    {"bits_stored": 16, "window": (30000, 20000), "compress": "rle"},
])
def test_matches_float_reference_within_one_level(tmp_path, kw):
    yy, xx = np.mgrid[0:210, 0:150]
    top = (1 << kw["bits_stored"]) - 1
    smooth = (np.sin(xx / 9.0) + np.cos(yy / 13.0) + 2) / 4
    noise = np.random.default_rng(1).random((210, 150)) * 0.05
    pixels = np.clip((smooth + noise) * top, 0, top).astype(np.uint16)
    write_dicom(tmp_path / "x.dicom", pixels, **kw)
    img, w, h = load_dicom_image(tmp_path / "x.dicom", 64)
    assert (w, h) == (150, 210) and img.shape == (64, 46)  # longest side 64, aspect kept
    assert np.abs(img.astype(float) - _reference(tmp_path / "x.dicom", 64)).max() <= 1


def test_undecodable_dicom_names_the_file(tmp_path):
    bad = tmp_path / "broken.dicom"
    bad.write_bytes(b"not a dicom at all" * 10)
    with pytest.raises(DicomError, match="broken.dicom"):
        load_dicom_image(bad, 64)
    truncated = tmp_path / "cut.dicom"
    write_dicom(tmp_path / "ok.dicom", RAMP, bits_stored=12)
    truncated.write_bytes((tmp_path / "ok.dicom").read_bytes()[:-6])
    with pytest.raises(DicomError, match="cut.dicom"):
        load_dicom_image(truncated, 64)


def test_convert_skips_done_work_and_runs_in_parallel(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(4):
        write_dicom(src / f"i{i}.dicom", rng.integers(0, 4096, size=(50 + 10 * i, 40)).astype(np.uint16),
                    bits_stored=12)
    (src / "bad.dicom").write_bytes(b"junk")
    jobs = [(p.stem, p, tmp_path / "png" / f"{p.stem}.png") for p in sorted(src.glob("*.dicom"))]
    journal = tmp_path / "png" / ".convert.jsonl"
    errors = []
    first = convert_dicoms(jobs, 32, workers=2, journal=journal, on_error=errors.append, progress=False)
    assert [e.image_id for e in errors] == ["bad"] and "bad.dicom" in first["bad"].error
    assert not (tmp_path / "png" / "bad.png").exists()
    assert (first["i3"].orig_width, first["i3"].orig_height, first["i3"].width, first["i3"].height) == (40, 80, 16, 32)
    png = cv2.imread(str(tmp_path / "png" / "i3.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, load_dicom_image(src / "i3.dicom", 32)[0])
    assert not any(r.skipped for r in first.values())

    with open(journal, "a") as f:
        f.write('{"image_id": "i0", "key"')  # a line cut by an interruption is ignored
    second = convert_dicoms(jobs, 32, workers=1, journal=journal, progress=False)
    assert all(second[f"i{i}"].skipped for i in range(4)) and second["bad"].error
    assert second["i3"].width == 16
    assert set(ConversionJournal(journal).entries) == {"i0", "i1", "i2", "i3"}

    third = convert_dicoms(jobs, 24, workers=1, journal=journal, progress=False)  # new size: redone
    assert not third["i3"].skipped and third["i3"].height == 24
    (tmp_path / "png" / "i1.png").unlink()  # a missing PNG is redone even with a journal entry
    fourth = convert_dicoms(jobs, 24, journal=journal, progress=False)
    assert not fourth["i1"].skipped and fourth["i2"].skipped


def test_strict_on_error_stops(tmp_path):
    (tmp_path / "bad.dicom").write_bytes(b"junk")
    write_dicom(tmp_path / "ok.dicom", RAMP, bits_stored=12)

    def stop(r):
        raise RuntimeError(r.error)

    jobs = [("bad", tmp_path / "bad.dicom", tmp_path / "bad.png"), ("ok", tmp_path / "ok.dicom", tmp_path / "o.png")]
    with pytest.raises(RuntimeError, match="bad.dicom"):
        convert_dicoms(jobs, 32, on_error=stop, progress=False)
    assert not (tmp_path / "o.png").exists()


def test_float_path_matches_table_path(tmp_path, monkeypatch):
    """The fallback for data a lookup table does not suit gives the table path's image."""
    import detx.data.dicom as dicom_mod

    yy, xx = np.mgrid[0:90, 0:70]
    pixels = ((np.sin(xx / 7.0) + 1.5) * (yy + 10) * 10).astype(np.uint16)
    write_dicom(tmp_path / "f.dicom", pixels, bits_stored=12, photometric="MONOCHROME1", window=(800, 900))
    table_img, _, _ = load_dicom_image(tmp_path / "f.dicom", 40)
    monkeypatch.setattr(dicom_mod, "MAX_TABLE", 0)
    float_img, _, _ = load_dicom_image(tmp_path / "f.dicom", 40)
    assert np.abs(table_img.astype(int) - float_img.astype(int)).max() <= 1


# ----------------------------------------------------------------------------------------- discovery
# PACS exports name files by SOP Instance UID without an extension, in nested folders.

UID_A = "1.2.840.113619.2.55.3.604688.12"
UID_B = "1.3.6.1.4.1.9590.100.1.2.1"


def _pacs_tree(root):
    """Two UID-named extension-less DICOMs in nested folders, a .dcm, an upper-case .DICOM, a duplicate id, and
    files that are not images (a text file without extension, a DICOMDIR index, a hidden file, a PNG)."""
    rng = np.random.default_rng(1)

    def px():
        return rng.integers(0, 4096, (40, 50)).astype(np.uint16)

    write_dicom(root / "PAT1" / "STUDY1" / UID_A, px())
    write_dicom(root / "PAT2" / "ST" / "SER" / UID_B, px())
    write_dicom(root / "flat.dcm", px())
    write_dicom(root / "UPPER.DICOM", px())
    write_dicom(root / "zz_copy" / "flat.dcm", px())  # the same id again: reported, the first kept
    (root / "notes").write_text("not an image")
    write_dicom(root / "DICOMDIR", px())
    write_dicom(root / ".hidden.dcm", px())
    (root / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    return root


def test_find_dicoms_uid_names_nested_and_duplicates(tmp_path):
    from detx.data.dicom import dicom_image_id, find_dicoms

    root = _pacs_tree(tmp_path / "export")
    found, dups = find_dicoms(root)
    assert sorted(found) == sorted([UID_A, UID_B, "flat", "UPPER"])  # full UIDs, dots kept
    assert found[UID_A] == root / "PAT1" / "STUDY1" / UID_A
    assert dups == [("flat", root / "flat.dcm", root / "zz_copy" / "flat.dcm")]
    assert dicom_image_id("a/b/x.y.dicom") == "x.y" and dicom_image_id("1.2.3.dcm") == "1.2.3"
    assert dicom_image_id("1.2.840.12") == "1.2.840.12" and dicom_image_id(".dcm") == ".dcm"
    with pytest.raises(FileNotFoundError, match="DICOM folder not found"):
        find_dicoms(tmp_path / "nope")
