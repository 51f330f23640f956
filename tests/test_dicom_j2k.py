"""JPEG 2000 DICOMs decoded at a reduced resolution level: the level choice, the output shape, bit-identity where
the full level is needed, and a bounded difference from the full decode elsewhere (synthetic and real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import detx.data.dicom as dicom
from detx.data.dicom import j2k_reduce_level, load_dicom_image
from detx.synthetic.generator import write_dicom


@pytest.mark.parametrize("w,h,size,levels,expect", [
    (2400, 2850, 1024, 5, 1),  # Kaggle-like: 1200 x 1425 >= 1024, 600 x 713 is not
    (1841, 1955, 1024, 5, 0),  # pydicom-data's RG1: half is 978 < 1024
    (1841, 1955, 512, 5, 1),
    (1760, 1760, 256, 5, 2),  # 440 >= 256, 220 is not
    (640, 520, 160, 5, 2),  # ceil(640 / 4) = 160 exactly
    (641, 520, 160, 5, 2),  # ceil(641 / 4) = 161
    (4096, 4096, 64, 2, 2),  # capped by the codestream's decomposition levels
    (2400, 2850, None, 5, 0),
])
def test_reduce_level(w, h, size, levels, expect):
    assert j2k_reduce_level(w, h, size, levels) == expect


def _chest_like(h=520, w=640, seed=0):
    """A smooth 12-bit image with edges (a bright disk, a dark band, noise), stored MONOCHROME1 (high = dark)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 1500 + 800 * np.sin(x / 37.0) * np.cos(y / 53.0)
    img += 1200 * (((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (h * 0.2) ** 2)
    img[:, : w // 10] = 200
    img += rng.normal(0, 30, img.shape)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("j2k")
    px = _chest_like()
    kw = {"photometric": "MONOCHROME1", "bits_stored": 12, "window": (2000, 3600)}
    return write_dicom(d / "a_j2k.dcm", px, compress="j2k", **kw), write_dicom(d / "a_raw.dcm", px, **kw)


def _full_decode(monkeypatch, path, size):
    with monkeypatch.context() as m:
        m.setattr(dicom, "_reduced_j2k_pixels", lambda ds, size: None)
        return load_dicom_image(path, size)[0]


def test_full_level_needed_is_bit_identical(pair):
    j2k, raw = pair
    for size in (None, 400, 640, 1000):  # 640 / 2 = 320 < 400: the full level
        a, w, h = load_dicom_image(j2k, size)
        b, _, _ = load_dicom_image(raw, size)
        assert (w, h) == (640, 520)
        np.testing.assert_array_equal(a, b)


def test_reduced_level_same_shape_bounded_difference(pair, monkeypatch):
    j2k, raw = pair
    calls = []
    orig = dicom._reduced_j2k_pixels
    monkeypatch.setattr(dicom, "_reduced_j2k_pixels", lambda ds, size: calls.append(out := orig(ds, size)) or out)
    # measured (docs/data-preparation.md): the level itself as output (160) differs most, at the disk's edge (the
    # wavelet's low-pass rings where area averaging does not) and by the full-range scaling (the reduced level's
    # extremes are less extreme); a level resized further (300, the Kaggle case at --size 1024) differs less
    for size, level_shape, max_d, mean_d in ((160, (130, 160), 80, 2.6), (300, (260, 320), 48, 1.2)):
        a, _, _ = load_dicom_image(j2k, size)
        assert calls[-1] is not None and calls[-1].shape == level_shape  # decoded at the reduced level
        b, _, _ = load_dicom_image(raw, size)
        assert a.shape == b.shape == dicom.resized_shape(640, 520, size)[::-1]
        d = np.abs(a.astype(int) - b.astype(int))
        assert d.mean() < mean_d and d.max() <= max_d, (size, d.max(), d.mean())
    # 16-bit output too
    a16 = load_dicom_image(j2k, 160, bit_depth=16)[0]
    b16 = load_dicom_image(raw, 160, bit_depth=16)[0]
    assert a16.dtype == np.uint16 and np.abs(a16.astype(int) - b16.astype(int)).mean() < 2.6 * 257


def test_reduce_failure_falls_back_to_full_decode(pair, monkeypatch):
    j2k, raw = pair

    def broken(*args, **kwargs):
        raise OSError("broken data stream")

    monkeypatch.setattr(dicom.Image, "open", broken)
    np.testing.assert_array_equal(load_dicom_image(j2k, 160)[0], load_dicom_image(raw, 160)[0])


def _pydicom_data(name):
    pydicom_data = pytest.importorskip("pydicom.data")
    try:
        return Path(pydicom_data.get_testdata_file(name, download=False))
    except (TypeError, ValueError, OSError):
        pytest.skip(f"pydicom-data's {name} is not installed")


@pytest.mark.parametrize("name,size", [("RG1_J2KR.dcm", 512), ("RG1_J2KI.dcm", 512), ("RG3_J2KR.dcm", 512)])
def test_real_jpeg2000_radiographs(name, size, monkeypatch):
    """pydicom-data's real computed radiographs (RG1: chest PA, MONOCHROME1, 15-bit; RG3: lower leg)."""
    path = _pydicom_data(name)
    if path is None or not path.exists():
        pytest.skip(f"{name} not found")
    a, w, h = load_dicom_image(path, size)
    b = _full_decode(monkeypatch, path, size)
    assert a.shape == b.shape
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.mean() < 1.0 and d.max() <= 40, (d.max(), d.mean())  # measured: max 13-33, mean 0.34-0.49
    full = load_dicom_image(path, 1024)[0]  # RG1: half is 978 < 1024: the full level, bit-identical
    if max(w, h) // 2 < 1024:
        np.testing.assert_array_equal(full, _full_decode(monkeypatch, path, 1024))
