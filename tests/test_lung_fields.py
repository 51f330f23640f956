"""Lung fields end to end: the synthetic generator's lung masks, the lung-mask converter
(datasets/prepare_lung_masks.py), the lung segmenter config, ``--crop lungs`` in preparation and the way back of a
prediction on a crop to original pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import load_script, run_train_net

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


# ------------------------------------------------------------------------------------ the lung-mask converter

ROOT = Path(__file__).resolve().parent.parent
LUNGS_TINY = str(ROOT / "configs/quick_schedules/lungs_mask_tiny.yaml")


@pytest.fixture(scope="module")
def lung_synthetic(tmp_path_factory):
    """A synthetic VinBigData-layout set (classic profile, 10 train + 2 test images of 96-128 px) with its lung
    masks."""
    out = tmp_path_factory.mktemp("lung_synthetic")
    generate_dataset(out, n_train=10, n_test=2, seed=1, min_size=96, max_size=128, progress=False, lung_masks=True)
    return out


def _prepare_lungs(*args) -> int:
    return load_script("datasets/prepare_lung_masks.py").main([*map(str, args), "--workers", "1", "--quiet"])


@pytest.fixture(scope="module")
def prepared_lungs(lung_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared_lungs")
    assert _prepare_lungs("--layout", "folders", "--images", lung_synthetic / "train", "--masks",
                          lung_synthetic / LUNG_MASKS_DIR / "train", "--out", out, "--size", "96", "--folds", "2") == 0
    return out


def test_prepared_lung_masks_are_the_masks(prepared_lungs, lung_synthetic):
    from pycocotools import mask as mask_util

    coco = json.loads((prepared_lungs / "annotations" / "all.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["left lung", "right lung"]
    assert coco["info"]["dataset"] == "lungs" and len(coco["images"]) == 10
    assert len(coco["annotations"]) == 20
    meta = pd.read_csv(prepared_lungs / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    assert sorted(meta["fold"].unique()) == [0, 1]
    by_id = {im["id"]: im for im in coco["images"]}
    for a in coco["annotations"]:
        im = by_id[a["image_id"]]
        side = ("left", "right")[a["category_id"]]
        full = cv2.imread(str(lung_synthetic / LUNG_MASKS_DIR / "train" / side / f"{im['image_uid']}.png"), 0) > 0
        small = cv2.resize(full.astype(np.float32), (im["width"], im["height"]), interpolation=cv2.INTER_AREA) >= 0.5
        rles = mask_util.frPyObjects(a["segmentation"], im["height"], im["width"])
        drawn = mask_util.decode(mask_util.merge(rles)).astype(bool)
        iou = (drawn & small).sum() / (drawn | small).sum()
        assert iou > 0.85, (im["image_uid"], side, iou)
        # the box is the mask's box in PNG pixels
        x0, y0, x1, y1 = lung_box(full)
        sx, sy = im["width"] / im["orig_width"], im["height"] / im["orig_height"]
        np.testing.assert_allclose(a["bbox"], [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy], atol=1e-3)


def test_lung_mask_converter_names_bad_pairs(tmp_path, lung_synthetic):
    images, masks = tmp_path / "images", tmp_path / "masks"
    ids = sorted(p.stem for p in (lung_synthetic / "train").glob("*.dicom"))[:4]
    images.mkdir()
    for i in ids:
        shutil.copy(lung_synthetic / "train" / f"{i}.dicom", images / f"{i}.dicom")
    for side in ("left", "right"):
        (masks / side).mkdir(parents=True)
        for i in ids[1:]:
            shutil.copy(lung_synthetic / LUNG_MASKS_DIR / "train" / side / f"{i}.png", masks / side / f"{i}.png")
    # ids[0]: no mask; ids[1]: a mask of another size
    small = cv2.imread(str(masks / "left" / f"{ids[1]}.png"), 0)[:50, :40]
    cv2.imwrite(str(masks / "left" / f"{ids[1]}.png"), small)
    cv2.imwrite(str(masks / "right" / f"{ids[1]}.png"), small)
    out = tmp_path / "out"
    assert _prepare_lungs("--layout", "folders", "--images", images, "--masks", masks, "--out", out, "--folds", "0",
                          "--size", "64") == 0
    problems = pd.read_csv(out / "problems.csv")
    assert sorted(zip(problems["kind"], problems["image_id"])) == sorted([("missing_mask", ids[0]),
                                                                          ("mask_size", ids[1])])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["skipped"] == 2
    assert _prepare_lungs("--layout", "folders", "--images", images, "--masks", masks, "--out", tmp_path / "o2",
                          "--strict") == 1
    assert _prepare_lungs("--layout", "folders", "--images", images, "--out", tmp_path / "o3") == 2  # no --masks


# ------------------------------------------------------------------------------------ the segmenter


def test_lung_segmenter_trains_on_the_prepared_masks(prepared_lungs, tmp_path):
    out = tmp_path / "train"
    run_train_net("--config-file", LUNGS_TINY, "DETX.DATA_ROOT", prepared_lungs, "OUTPUT_DIR", out, "MODEL.DEVICE",
                  "cpu", "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "2",
                  "DETX.VAL_PERIOD", "3", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96")
    assert (out / "model_final.pth").is_file()
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"segm/AP", "bbox/AP", "vinbigdata/mAP40", "val_total_loss"} <= keys
    cfg = (out / "config.yaml").read_text()
    assert "NUM_CLASSES: 2" in cfg and "HFLIP_PROB: 0.0" in cfg
