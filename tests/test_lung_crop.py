"""Lung fields, the part without a segmenter: the crop round trip (boxes to the crop and back to original pixels), the
lung box of real lung masks (torchxrayvision's v7labs masks), and the public mask layouts with bad pairs named."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from detx.core.crop import Crop, boxes_from_crop, boxes_to_crop, crop_around
from detx.data.lung_masks import lung_box, read_lung_pairs
from detx.data.readers import DataError


def test_crop_round_trip_by_hand_and_random():
    crop = Crop(10, 20, 110, 220, 200, 300, out_size=(50, 100))  # 100 x 200 kept, resized by 0.5
    inside, outside = boxes_to_crop([[20, 40, 60, 140]], crop)
    np.testing.assert_allclose(inside, [[5, 10, 25, 60]])
    assert not outside.any()
    np.testing.assert_allclose(boxes_from_crop(inside, crop), [[20, 40, 60, 140]])
    # a box reaching outside the crop is clipped and flagged, never silently moved
    clipped, outside = boxes_to_crop([[0, 40, 60, 140], [15, 25, 30, 30]], crop)
    assert outside.tolist() == [True, False]
    np.testing.assert_allclose(clipped[0], [0, 10, 25, 60])
    rng = np.random.default_rng(0)
    for out_size in (None, (37, 91), (512, 512)):
        c = Crop(13, 7, 181, 263, 200, 300, out_size)
        x0 = rng.uniform(13, 150, 50)
        y0 = rng.uniform(7, 200, 50)
        b = np.stack([x0, y0, x0 + rng.uniform(0, 181 - x0), y0 + rng.uniform(0, 263 - y0)], axis=1)
        there, out = boxes_to_crop(b, c)
        assert not out.any()
        np.testing.assert_allclose(boxes_from_crop(there, c), b, rtol=0, atol=1e-9)
    # widening by a margin, clipped to the image
    assert crop_around((50, 60, 150, 260), (200, 300), margin=0.1) == Crop(40, 40, 160, 280, 200, 300)
    assert crop_around((5, 5, 195, 295), (200, 300), margin=0.1) == Crop(0, 0, 200, 300, 200, 300)
    with pytest.raises(ValueError, match="outside"):
        Crop(0, 0, 201, 10, 200, 300)


def test_lung_box_of_real_masks():
    xrv = pytest.importorskip("torchxrayvision")
    path = Path(xrv.__file__).parent / "data" / "semantic_masks_v7labs_lungs.zip"
    if not path.is_file():
        pytest.skip("no v7labs lung masks in this torchxrayvision")
    checked = 0
    with zipfile.ZipFile(path) as z:
        for name in sorted(n for n in z.namelist() if not n.endswith("/"))[:40]:
            mask = cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_GRAYSCALE) > 127
            box = lung_box(mask)
            if box is None:
                assert not mask.any()
                continue
            h, w = mask.shape
            crop = crop_around(box, (w, h), margin=0.05)
            kept = crop.apply(mask)
            assert kept.sum() == mask.sum()  # the crop keeps every lung pixel
            ys, xs = np.nonzero(mask)
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # the lung box itself, mapped to the crop (resized to 224 x 224) and back, is where it was
            there, out = boxes_to_crop([box], Crop(crop.x0, crop.y0, crop.x1, crop.y1, w, h, (224, 224)))
            assert not out.any()
            np.testing.assert_allclose(boxes_from_crop(there, Crop(crop.x0, crop.y0, crop.x1, crop.y1, w, h,
                                                                   (224, 224))), [box], atol=1e-9)
            checked += 1
    assert checked >= 20


def _png(path: Path, shape=(40, 30), box=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros(shape, np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = 255
    cv2.imwrite(str(path), img)


def test_montgomery_layout_names_bad_pairs(tmp_path):
    root = tmp_path / "MontgomerySet"
    for stem in ("MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0", "MCUCXR_0004_0"):
        _png(root / "CXR_png" / f"{stem}.png")
    _png(root / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png", box=(2, 5, 12, 35))
    _png(root / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png", box=(16, 5, 27, 33))
    _png(root / "ManualMask" / "leftMask" / "MCUCXR_0002_1.png", shape=(20, 15), box=(1, 1, 5, 5))  # other size
    _png(root / "ManualMask" / "rightMask" / "MCUCXR_0002_1.png", shape=(20, 15), box=(8, 1, 12, 5))
    _png(root / "ManualMask" / "leftMask" / "MCUCXR_0003_0.png", box=(2, 5, 12, 35))  # no right mask
    _png(root / "ManualMask" / "leftMask" / "MCUCXR_0004_0.png")  # empty masks
    _png(root / "ManualMask" / "rightMask" / "MCUCXR_0004_0.png")
    pairs, log = read_lung_pairs("montgomery", root)
    assert [p.image_id for p in pairs] == ["MCUCXR_0001_0"]
    assert len(pairs[0].masks) == 2
    assert {(p.kind, p.image_id) for p in log.items} == {("mask_size", "MCUCXR_0002_1"),
                                                         ("missing_mask", "MCUCXR_0003_0"),
                                                         ("empty_mask", "MCUCXR_0004_0")}
    from detx.data.lung_masks import read_lung_mask

    assert lung_box(read_lung_mask(pairs[0].masks)) == (2, 5, 27, 35)
    with pytest.raises(DataError, match="MCUCXR_0002_1"):
        read_lung_pairs("montgomery", root, strict=True)
    # the generic layout: one combined mask per image, named <id>_mask.png (Shenzhen's public masks)
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "masks" / "a_mask.png", box=(3, 3, 20, 30))
    pairs, log = read_lung_pairs("folders", tmp_path / "imgs", tmp_path / "masks")
    assert [p.image_id for p in pairs] == ["a"] and len(log) == 0
