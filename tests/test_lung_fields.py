"""Lung fields end to end: the synthetic generator's lung masks, the lung-mask converter
(datasets/prepare_lung_masks.py), the lung segmenter config, ``--crop lungs`` in preparation and the way back of a
prediction on a crop to original pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detx.data.lung_masks import lung_box, read_lung_pairs
from detx.synthetic.generator import LUNG_MASKS_DIR, generate_dataset


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("profile", ["classic", "vinbigdata"])
def test_generator_writes_lung_masks_and_the_same_other_files(tmp_path, profile):
    kw = {"n_train": 3, "n_test": 1, "min_size": 64, "max_size": 96, "seed": 3, "progress": False, "profile": profile,
          "normal_fraction": 0.5}
    generate_dataset(tmp_path / "plain", **kw)
    generate_dataset(tmp_path / "masks", lung_masks=True, **kw)
    plain, masks = _snapshot(tmp_path / "plain"), _snapshot(tmp_path / "masks")
    assert {k: v for k, v in masks.items() if not k.startswith(LUNG_MASKS_DIR)} == plain
    for split in ("train", "test"):
        pairs, log = read_lung_pairs("folders", tmp_path / "masks" / split, tmp_path / "masks" / LUNG_MASKS_DIR / split,
                                     strict=True)
        assert len(pairs) == kw["n_train" if split == "train" else "n_test"] and not log.counts()
        for p in pairs:
            left, right = (cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in p.masks)
            assert left.shape == (p.height, p.width) and set(np.unique(left)) == {0, 255}
            assert not (left & right).any()
            # the patient's right lung is on the image's left
            assert lung_box(right)[2] <= p.width / 2 + 1 and lung_box(left)[0] >= p.width / 2 - 1
            # both lungs are large: each at least 8% of the image
            assert (left > 0).mean() > 0.08 and (right > 0).mean() > 0.08


def test_generator_refuses_lung_masks_without_pixels(tmp_path):
    with pytest.raises(ValueError, match="lung_masks"):
        generate_dataset(tmp_path, dataset="spinexr", n_train=1, n_test=1, min_size=64, max_size=64,
                         progress=False, lung_masks=True)
