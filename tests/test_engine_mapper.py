"""The albumentations mapper keeps image, boxes and masks aligned, drops boxes that leave, keeps negatives."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks, polygons_to_bitmask

from detx.engine.config import get_detx_cfg
from detx.engine.mapper import DetxDatasetMapper, build_albumentations, make_compose

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/quick_schedules/vindr_cxr_tiny.yaml")
W, H = 64, 48


@pytest.fixture
def image_dict(tmp_path):
    """A 64x48 image with two bright rectangles (values 200 and 120) and their annotations."""
    img = np.zeros((H, W), np.uint8)
    img[6:18, 4:14] = 200  # box A: x 4..14, y 6..18
    img[20:30, 50:60] = 120  # box B: x 50..60, y 20..30
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img)
    anns = [
        {"bbox": [4, 6, 10, 12], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3, "iscrowd": 0},
        {"bbox": [50, 20, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 5, "iscrowd": 0},
    ]
    return {"file_name": str(path), "height": H, "width": W, "image_id": 7, "annotations": anns}


def mapper(album, scale=1, mask_format="polygon"):
    resize = T.ResizeShortestEdge(H * scale, W * scale)
    return DetxDatasetMapper(True, augmentations=[resize], album=album, image_format="BGR", use_instance_mask=True,
                             instance_mask_format=mask_format, box_masks=True)


def mask_boxes(masks) -> np.ndarray:
    return masks.get_bounding_boxes().tensor.numpy()


def test_hflip_moves_image_boxes_and_masks_together(image_dict):
    out = mapper(make_compose([A.HorizontalFlip(p=1.0)]), scale=2)(image_dict)
    inst = out["instances"]
    # flipped: x -> 64 - x, then everything doubled by the resize
    expected = np.array([[50, 6, 60, 18], [4, 20, 14, 30]], np.float32) * 2
    np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), expected)
    assert inst.gt_classes.tolist() == [3, 5]
    assert isinstance(inst.gt_masks, PolygonMasks)
    np.testing.assert_allclose(mask_boxes(inst.gt_masks), expected)
    # the pixels moved with them: each rasterized mask covers its bright rectangle in the output image
    image = out["image"][0].numpy()
    for polys, value in zip(inst.gt_masks.polygons, (200, 120)):
        m = polygons_to_bitmask(polys, *image.shape)
        assert m.sum() == (20 * 24 if value == 200 else 20 * 20)
        assert np.median(image[m]) == value  # edges are blended by the bilinear resize
        assert (np.abs(image[m].astype(int) - value) <= 2).mean() > 0.75
        assert (np.abs(image.astype(int) - value) <= 2).sum() <= m.sum()


def test_rle_masks_follow_a_vertical_flip(image_dict):
    tri = np.zeros((H, W), np.uint8)
    cv2.fillPoly(tri, [np.array([[4, 6], [13, 6], [4, 17]])], 1)
    image_dict["annotations"][0]["segmentation"] = mask_util.encode(np.asfortranarray(tri))
    image_dict["annotations"][0]["segmentation"]["counts"] = image_dict["annotations"][0]["segmentation"][
        "counts"].decode()
    out = mapper(make_compose([A.VerticalFlip(p=1.0)]))(image_dict)
    inst = out["instances"]
    assert isinstance(inst.gt_masks, BitMasks)
    np.testing.assert_array_equal(inst.gt_masks.tensor[0].numpy(), np.flipud(tri).astype(bool))
    # the second annotation had no segmentation: its box mask is flipped with its box
    np.testing.assert_allclose(inst.gt_boxes.tensor[1].numpy(), [50, 48 - 30, 60, 48 - 20])
    np.testing.assert_allclose(mask_boxes(inst.gt_masks)[1], [50, 48 - 30, 60, 48 - 20])


def test_rotation_keeps_box_equal_to_mask_extent(image_dict):
    out = mapper(make_compose([A.Affine(rotate=(30, 30), p=1.0)], min_visibility=0.0))(image_dict)
    inst = out["instances"]
    assert len(inst) >= 1
    # a polygon may reach outside the image, where the box is clipped: compare inside the image
    inside = np.clip(mask_boxes(inst.gt_masks), 0, [W, H, W, H])
    np.testing.assert_allclose(inside, inst.gt_boxes.tensor.numpy(), atol=1e-3)


def test_box_leaving_the_image_is_dropped_with_its_mask(image_dict):
    shift = A.Affine(translate_px={"x": (32, 32), "y": (0, 0)}, p=1.0)
    out = mapper(make_compose([shift], min_visibility=0.3))(image_dict)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [3]  # box B (x 50..60) would be at 82..92, outside
    np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), [[36, 6, 46, 18]])
    assert len(inst.gt_masks) == 1
    np.testing.assert_allclose(mask_boxes(inst.gt_masks), [[36, 6, 46, 18]])


def test_normal_image_is_kept_as_a_negative(image_dict):
    image_dict["annotations"] = []
    out = mapper(make_compose([A.HorizontalFlip(p=1.0)]))(image_dict)
    assert len(out["instances"]) == 0
    assert tuple(out["image"].shape) == (3, H, W)


def test_test_mode_has_no_instances_and_is_resized(image_dict):
    cfg = get_detx_cfg(TINY, ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "200"])
    out = DetxDatasetMapper(cfg, is_train=False)(image_dict)
    assert "instances" not in out and "annotations" not in out
    assert tuple(out["image"].shape) == (3, 96, 128)


def test_build_albumentations_from_config():
    cfg = get_detx_cfg(TINY, ["DETX.AUG.CLAHE_PROB", "0.5", "DETX.AUG.VFLIP_PROB", "0.1"])
    names = [type(t).__name__ for t in build_albumentations(cfg).transforms]
    assert names == ["HorizontalFlip", "VerticalFlip", "Affine", "RandomBrightnessContrast", "CLAHE"]
    off = ["DETX.AUG.HFLIP_PROB", "0", "DETX.AUG.AFFINE_PROB", "0.0", "DETX.AUG.BRIGHTNESS_CONTRAST_PROB", "0"]
    assert build_albumentations(get_detx_cfg(TINY, off)) is None
    assert build_albumentations(get_detx_cfg(TINY, ["DETX.AUG.ENABLED", "False"])) is None


def test_augmentation_is_reproducible_from_numpy_seed(image_dict):
    cfg = get_detx_cfg(TINY, ["DETX.AUG.AFFINE_PROB", "1.0", "DETX.AUG.BRIGHTNESS_CONTRAST_PROB", "1.0"])
    outs = []
    for _ in range(2):
        np.random.seed(123)
        m = DetxDatasetMapper(cfg, is_train=True)
        outs.append([m(image_dict)["image"].numpy() for _ in range(3)])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs[0][0], outs[0][1])  # but differs from call to call
