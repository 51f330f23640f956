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


def test_lung_segmenter_trains_and_crops(prepared_lungs, lung_synthetic, tmp_path):
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
    # the trained segmenter crops a test set: after 3 iterations it may find no lung (score < 0.5): such an image
    # keeps the whole image, named as lungs_not_found; either way every image gets a crop inside it
    crop_out = tmp_path / "cropped"
    assert load_script("datasets/prepare_vindr_cxr.py").main([
        "--dicom-dir", str(lung_synthetic / "test"), "--out", str(crop_out), "--size", "64", "--workers", "1",
        "--no-report", "--crop", "lungs", "--lung-config", LUNGS_TINY, "--lung-weights",
        str(out / "model_final.pth")]) == 0
    meta = pd.read_csv(crop_out / "meta.csv", dtype={"image_id": str})
    assert len(meta) == 2
    assert ((meta["crop_x0"] >= 0) & (meta["crop_x1"] <= meta["orig_width"]) & (meta["crop_x0"] < meta["crop_x1"])
            & (meta["crop_y0"] >= 0) & (meta["crop_y1"] <= meta["orig_height"])).all()
    problems = pd.read_csv(crop_out / "problems.csv", dtype={"image_id": str})
    assert set(problems["kind"]) <= {"lungs_not_found"}
    whole = (meta["crop_x0"] == 0) & (meta["crop_y0"] == 0) & (meta["crop_x1"] == meta["orig_width"]) & (
        meta["crop_y1"] == meta["orig_height"])
    assert set(problems["image_id"]) <= set(meta.loc[whole, "image_id"])
    assert json.loads((crop_out / "summary.json").read_text())["skipped"] == 0  # a repair, not a skip


# ------------------------------------------------------------------------------------ --crop lungs


class _BoxesOnThePng:
    """A stand-in detector (the ``ImageModel`` interface of ``predict_all``) that "predicts" two boxes in the pixels
    of the PNG it is fed (the whole PNG, and :data:`INNER` x its size), scaled to the frame it is asked for, as
    detectron2's postprocessing does."""

    input_format = "BGR"

    def cache_key(self, view, dicom_size):
        return "stub"

    def batch_key(self, shape, view):
        return None

    def __call__(self, images, orig_sizes, view=None, fmt=None):
        from detx.core.predictions import Predictions

        out = []
        for img, (ow, oh) in zip(images, orig_sizes):
            h, w = img.shape[:2]
            b = _png_boxes(w, h) * np.array([ow / w, oh / h, ow / w, oh / h])
            out.append(Predictions(b, np.full(len(b), 0.9), np.zeros(len(b), np.int64)))
        return out


INNER = np.array([0.1, 0.2, 0.55, 0.9])


def _png_boxes(w: int, h: int) -> np.ndarray:
    return np.array([[0, 0, w, h], INNER * [w, h, w, h]], np.float64)


def _prepare_cxr(*args) -> int:
    return load_script("datasets/prepare_vindr_cxr.py").main([*map(str, args), "--workers", "1", "--no-report"])


def test_crop_lungs_round_trip_prepare_to_predict(lung_synthetic, tmp_path):
    from detx.core.crop import Crop, boxes_from_crop, crop_around
    from detx.core.prepared import load_prepared_coco
    from detx.data.dicom import load_dicom_image, resize_longest
    from detx.data.lung_masks import read_lung_mask
    from detx.inference.predictor import collect_inputs, predict_all

    out = tmp_path / "cropped"
    masks = lung_synthetic / LUNG_MASKS_DIR / "train"
    assert _prepare_cxr("--csv", lung_synthetic / "train.csv", "--dicom-dir", lung_synthetic / "train", "--out", out,
                        "--size", "64", "--folds", "0", "--crop", "lungs", "--lung-masks", masks,
                        "--crop-margin", "0.1") == 0
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    assert len(meta) == 10
    fused = pd.read_csv(out / "annotations" / "boxes_fused.csv", dtype={"image_id": str})
    fused = fused[fused["class_name"] != "No finding"]
    coco = load_prepared_coco(out / "annotations" / "all.json")
    for image_id, r in meta.iterrows():
        mask = read_lung_mask((masks / "left" / f"{image_id}.png", masks / "right" / f"{image_id}.png"))
        crop = crop_around(lung_box(mask), (r.orig_width, r.orig_height), margin=0.1)
        assert (r.crop_x0, r.crop_y0, r.crop_x1, r.crop_y1) == (crop.x0, crop.y0, crop.x1, crop.y1)
        # the PNG is the crop of the full-resolution decode, longest side 64
        full, _, _ = load_dicom_image(lung_synthetic / "train" / f"{image_id}.dicom")
        png = cv2.imread(str(out / "images" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, resize_longest(np.ascontiguousarray(crop.apply(full)), 64))
        assert (png.shape[1], png.shape[0]) == (r.width, r.height)
        # ground truth read back from the COCO file (PNG pixels of the crop) is the fused box in original pixels
        want = fused.loc[fused["image_id"] == image_id, ["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        got = coco.gt[image_id][0]
        np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])], atol=2e-3)
    inputs = collect_inputs(out / "annotations" / "all.json")
    assert all(im.crop is not None for im in inputs.images)
    run = predict_all([_BoxesOnThePng()], inputs.images, progress=False)
    (preds,) = run.sets
    for image_id, r in meta.iterrows():
        assert run.orig_sizes[image_id] == (r.orig_width, r.orig_height)
        crop = Crop(r.crop_x0, r.crop_y0, r.crop_x1, r.crop_y1, r.orig_width, r.orig_height, (r.width, r.height))
        got = preds[image_id].boxes
        # the whole crop comes back as the crop's rectangle in original pixels, the other box through the crop
        np.testing.assert_allclose(got[0], [crop.x0, crop.y0, crop.x1, crop.y1], atol=1e-6)
        np.testing.assert_allclose(got[1], boxes_from_crop(_png_boxes(r.width, r.height)[1:], crop)[0], atol=1e-6)
    # a PNG folder with its meta.csv reads the crops too
    assert collect_inputs(out / "images").images[0].crop is not None


def test_crop_lungs_names_boxes_leaving_the_crop_and_missing_masks(lung_synthetic, tmp_path):
    fused_plain = tmp_path / "plain"
    assert _prepare_cxr("--csv", lung_synthetic / "train.csv", "--dicom-dir", lung_synthetic / "train", "--out",
                        fused_plain, "--size", "64", "--folds", "0") == 0
    boxes = pd.read_csv(fused_plain / "annotations" / "boxes_fused.csv", dtype={"image_id": str})
    boxes = boxes[boxes["class_name"] != "No finding"]
    target = boxes["image_id"].iloc[0]
    b = boxes.iloc[0]
    # masks: the real ones, but the target image's lungs are a small square around one corner of its first box
    masks = tmp_path / "masks"
    shutil.copytree(lung_synthetic / LUNG_MASKS_DIR / "train", masks)
    for side in ("left", "right"):
        m = cv2.imread(str(masks / side / f"{target}.png"), 0) * 0
        x, y = int(b.x_min), int(b.y_min)
        m[y:y + 3, x:x + 3] = 255
        cv2.imwrite(str(masks / side / f"{target}.png"), m)
    missing = sorted(set(pd.read_csv(fused_plain / "meta.csv", dtype={"image_id": str})["image_id"]) - {target})[0]
    for side in ("left", "right"):
        (masks / side / f"{missing}.png").unlink()
    out = tmp_path / "cropped"
    assert _prepare_cxr("--csv", lung_synthetic / "train.csv", "--dicom-dir", lung_synthetic / "train", "--out", out,
                        "--size", "64", "--folds", "0", "--crop", "lungs", "--lung-masks", masks,
                        "--crop-margin", "0") == 0
    problems = pd.read_csv(out / "problems.csv", dtype={"image_id": str})
    kinds = dict(zip(zip(problems["kind"], problems["image_id"]), problems["message"]))
    assert ("missing_mask", missing) in kinds
    assert ("box_clipped_by_crop", target) in kinds
    assert "reaches outside its lung crop" in kinds[("box_clipped_by_crop", target)]
    n_target = int((boxes["image_id"] == target).sum())
    n_named = int((problems["image_id"] == target).sum())
    assert n_named == n_target  # every box of the target image is named (clipped or dropped), none silently
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 9 and summary["problems"]["missing_mask"] == 1
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    assert missing not in meta.index and target in meta.index
    assert _prepare_cxr("--csv", lung_synthetic / "train.csv", "--dicom-dir", lung_synthetic / "train", "--out",
                        tmp_path / "strict", "--size", "64", "--folds", "0", "--crop", "lungs", "--lung-masks", masks,
                        "--strict") == 1
    # --crop lungs needs one source of lung boxes
    assert _prepare_cxr("--dicom-dir", lung_synthetic / "test", "--out", tmp_path / "x", "--crop", "lungs") == 2
    assert _prepare_cxr("--dicom-dir", lung_synthetic / "test", "--out", tmp_path / "x", "--lung-masks", masks) == 2


def test_predict_cli_maps_boxes_on_crops_to_original_pixels(lung_synthetic, tiny_random_checkpoint, tmp_path):
    """tools/predict.py on a --crop lungs set writes what the same model predicts on the crop PNGs taken as whole
    images, shifted by each crop's corner: the submission is in original pixels (the submission rounds to 0.1 px)."""
    from detx.core.submission import read_submission

    out = tmp_path / "cropped"
    assert _prepare_cxr("--csv", lung_synthetic / "train.csv", "--dicom-dir", lung_synthetic / "train", "--out", out,
                        "--size", "64", "--folds", "0", "--crop", "lungs", "--lung-masks",
                        lung_synthetic / LUNG_MASKS_DIR / "train") == 0
    meta = pd.read_csv(out / "meta.csv", dtype={"image_id": str})
    # the same PNGs as whole images whose original size is the crop's extent (no crop columns)
    plain = tmp_path / "plain" / "images"
    shutil.copytree(out / "images", plain)
    whole = meta[["image_id"]].assign(orig_width=meta["crop_x1"] - meta["crop_x0"],
                                      orig_height=meta["crop_y1"] - meta["crop_y0"], width=meta["width"],
                                      height=meta["height"])
    whole.to_csv(plain.parent / "meta.csv", index=False)
    cfg, weights = tiny_random_checkpoint
    tool = load_script("tools/predict.py")

    def predict(argv):
        return tool.main(tool.parse_args(["--quiet", *argv]))
    common = ["--config-file", cfg, "--weights", str(weights), "--vis-dir", str(tmp_path / "vis"), "--vis-num", "2"]
    assert predict([*common, "--input", str(out / "annotations" / "all.json"), "--out", str(tmp_path / "a.csv"),
                    "MODEL.DEVICE", "cpu"]) == 0
    assert predict([*common, "--input", str(plain), "--out", str(tmp_path / "b.csv"), "MODEL.DEVICE", "cpu"]) == 0
    on_crops, as_whole = read_submission(tmp_path / "a.csv", num_classes=15), read_submission(tmp_path / "b.csv",
                                                                                                num_classes=15)
    n_boxes = 0
    for r in meta.itertuples():
        a, b = on_crops[r.image_id], as_whole[r.image_id]
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        finding = a.classes < 14
        shift = np.array([r.crop_x0, r.crop_y0, r.crop_x0, r.crop_y0], np.float64)
        np.testing.assert_allclose(a.boxes[finding], b.boxes[finding] + shift, atol=0.11)
        assert (a.boxes[finding] <= [r.orig_width, r.orig_height] * 2).all()
        n_boxes += int(finding.sum())
    assert n_boxes > 0
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
