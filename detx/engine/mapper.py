"""Training mapper: albumentations on the full-size PNG, then detectron2's resize, with boxes and masks kept aligned.

Geometric transforms (flips, Affine shift-scale-rotate) move boxes through albumentations' bbox
pipeline, polygon masks as keypoints (exact under affine maps) and RLE/bitmask masks as masks, all
tagged with their annotation's index so the three stay paired. A box that keeps less than
``DETX.AUG.MIN_VISIBILITY`` of its area inside the image is dropped together with its mask; an
image left with no boxes (or a normal X-ray that had none) is kept as a negative.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks

from detx.core.prepared import PreparedDatasetError, image_level_targets
from detx.engine.config import is_classifier

logger = logging.getLogger(__name__)


def build_albumentations(cfg: CfgNode) -> A.Compose | None:
    """The ``DETX.AUG.*`` transforms as an albumentations Compose (None when all are off)."""
    aug = cfg.DETX.AUG
    if not aug.ENABLED:
        return None
    ts: list[A.BasicTransform] = []
    if aug.HFLIP_PROB > 0:
        ts.append(A.HorizontalFlip(p=aug.HFLIP_PROB))
    if aug.VFLIP_PROB > 0:
        ts.append(A.VerticalFlip(p=aug.VFLIP_PROB))
    if aug.AFFINE_PROB > 0:
        ts.append(A.Affine(
            scale=(1.0 - aug.SCALE_LIMIT, 1.0 + aug.SCALE_LIMIT),
            translate_percent=(-aug.SHIFT_LIMIT, aug.SHIFT_LIMIT),
            rotate=(-aug.ROTATE_LIMIT, aug.ROTATE_LIMIT),
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=aug.AFFINE_PROB))
    if aug.BRIGHTNESS_CONTRAST_PROB > 0:
        ts.append(A.RandomBrightnessContrast(brightness_limit=aug.BRIGHTNESS_LIMIT,
                                             contrast_limit=aug.CONTRAST_LIMIT,
                                             p=aug.BRIGHTNESS_CONTRAST_PROB))
    if aug.CLAHE_PROB > 0:
        grid = int(aug.CLAHE_TILE_GRID)
        ts.append(A.CLAHE(clip_limit=(1.0, float(aug.CLAHE_CLIP_LIMIT)), tile_grid_size=(grid, grid),
                          p=aug.CLAHE_PROB))
    if not ts:
        return None
    return make_compose(ts, min_visibility=aug.MIN_VISIBILITY)


def make_compose(transforms: list[A.BasicTransform], min_visibility: float = 0.3) -> A.Compose:
    """Wrap transforms with the bbox/keypoint settings :class:`DetxDatasetMapper` relies on."""
    return A.Compose(
        transforms,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["ann_idx"], min_visibility=min_visibility,
                                 clip=True, filter_invalid_bboxes=True),
        # polygon vertices may leave the image: they still define the mask inside the box
        keypoint_params=A.KeypointParams(format="xy", label_fields=["kp_ann", "kp_poly"],
                                         remove_invisible=False),
    )


def box_polygon(bbox_xyxy: list[float] | np.ndarray) -> list[list[float]]:
    """A box as a one-polygon COCO segmentation (the "box mask" of box-only datasets)."""
    x0, y0, x1, y1 = (float(v) for v in bbox_xyxy)
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


class DetxDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` with :func:`build_albumentations` applied before its augmentations (the
    resize), normal X-rays kept as negatives (with empty masks for Mask R-CNN), and an ``augment=False`` mode
    that keeps the annotations with only the deterministic test-size resize (the validation loss).
    """

    @configurable
    def __init__(self, is_train: bool, *, augmentations: list, album: A.Compose | None, image_format: str,
                 use_instance_mask: bool = False, instance_mask_format: str = "polygon",
                 box_masks: bool = False, keep_annotations: bool | None = None, image_targets: int | None = None,
                 label_names: list[str] | None = None, two_views: bool = False):
        """
        Args:
            is_train: training (annotations kept, random augmentation) or inference.
            augmentations: detectron2 augmentations after albumentations (the resize).
            album: albumentations from :func:`make_compose`, or None.
            image_format: detectron2 ``INPUT.FORMAT``.
            use_instance_mask: produce ``gt_masks`` (Mask R-CNN).
            instance_mask_format: "polygon" or "bitmask".
            box_masks: annotations without a segmentation get their box as polygon mask.
            keep_annotations: defaults to ``is_train``.
            image_targets: for the image classifier, its K finding classes: the output carries ``cls_targets``
                (:func:`detx.core.prepared.image_level_targets`) instead of instances; None for detectors.
            label_names: the image-level labels of the class outputs (``MODEL.CLASSIFIER.IMAGE_LABELS``).
            two_views: the classifier's contrastive stage: with augmentation on, the output also carries ``image2``,
                a second, independent draw of the augmentations of the same image.
        """
        super().__init__(is_train, augmentations=augmentations, image_format=image_format,
                         use_instance_mask=use_instance_mask, instance_mask_format=instance_mask_format)
        self.album = album
        self.box_masks = box_masks
        self.keep_annotations = is_train if keep_annotations is None else keep_annotations
        self.image_targets = image_targets
        self.label_names = label_names or None
        self.two_views = bool(two_views) and album is not None and image_targets is not None
        self._seeded_pid: int | None = None

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True, augment: bool | None = None) -> dict[str, Any]:
        """``augment`` defaults to ``is_train``; ``augment=False`` with ``is_train=True`` keeps annotations
        with only the deterministic test-size resize (validation loss)."""
        augment = is_train if augment is None else augment
        if augment:
            resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                          cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        else:
            resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        return {
            "is_train": is_train,
            "augmentations": [resize],
            "album": build_albumentations(cfg) if augment else None,
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "box_masks": cfg.DETX.BOX_MASKS,
            "image_targets": int(cfg.MODEL.CLASSIFIER.NUM_CLASSES) if is_classifier(cfg) else None,
            "label_names": list(cfg.MODEL.CLASSIFIER.IMAGE_LABELS),
            "two_views": is_classifier(cfg) and cfg.MODEL.CLASSIFIER.LOSS == "supcon" and augment,
        }

    def _seed_album(self) -> None:
        # albumentations keeps its own RNG, copied as-is into forked data-loader workers: reseed it once
        # per process from numpy's RNG, which detectron2 seeds per rank and per worker (SEED).
        pid = os.getpid()
        if self.album is not None and self._seeded_pid != pid:
            self.album.set_random_seed(int(np.random.randint(2**31 - 1)))
            self._seeded_pid = pid

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated or not an image at all
            raise PreparedDatasetError(
                f"cannot read training image {dataset_dict['file_name']}: {type(e).__name__}: {e}; run the "
                "preparation again (it converts damaged images again) or remove the image") from e
        if self.image_targets is not None:  # the classifier: image-level labels, read before any augmentation
            targets = image_level_targets(dataset_dict, self.image_targets, self.label_names) \
                if self.keep_annotations else None
            dataset_dict.pop("annotations", None)
        utils.check_image_size(dataset_dict, image)
        annos = dataset_dict.pop("annotations", []) if self.keep_annotations else []
        dataset_dict.pop("annotations", None)
        annos = [a for a in annos if a.get("iscrowd", 0) == 0]
        for a in annos:
            a["bbox"] = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            a["bbox_mode"] = BoxMode.XYXY_ABS
            if not self.use_instance_mask:
                a.pop("segmentation", None)
            elif not a.get("segmentation") and self.box_masks:
                a["segmentation"] = box_polygon(a["bbox"])

        raw = image if self.two_views else None
        if self.album is not None:
            self._seed_album()
            image, annos = self.apply_album(image, annos)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.image_targets is not None:
            if targets is not None:
                dataset_dict["cls_targets"] = torch.as_tensor(targets)
            if raw is not None:  # the second view: another draw of albumentations, then the same resize
                image2, _ = self.apply_album(raw, [])
                aug2 = T.AugInput(image2)
                self.augmentations(aug2)
                dataset_dict["image2"] = torch.as_tensor(np.ascontiguousarray(aug2.image.transpose(2, 0, 1)))
            return dataset_dict
        if not self.keep_annotations:
            return dataset_dict

        dataset_dict["annotations"] = annos
        self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _transform_annotations(self, dataset_dict: dict[str, Any], transforms: T.TransformList,
                               image_shape: tuple[int, int]) -> None:
        """detectron2's step, except that RLE or transformed bitmask segmentations switch to ``BitMasks`` and an
        image without annotations gets empty instances (with empty masks when masks are used)."""
        annos = [utils.transform_instance_annotations(a, transforms, image_shape)
                 for a in dataset_dict.pop("annotations")]
        mask_format = self.instance_mask_format
        if any(isinstance(a.get("segmentation"), (dict, np.ndarray)) for a in annos):
            mask_format = "bitmask"  # RLE or transformed bitmasks: BitMasks holds every kind
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=mask_format)
        if not annos:  # a normal image: keep it as a negative, with (empty) masks when masks are used
            instances = self._empty_instances(image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _empty_instances(self, image_shape: tuple[int, int]):
        inst = Instances(image_shape)
        inst.gt_boxes = Boxes(torch.zeros((0, 4), dtype=torch.float32))
        inst.gt_classes = torch.zeros((0,), dtype=torch.int64)
        if self.use_instance_mask:
            if self.instance_mask_format == "bitmask":
                inst.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
            else:
                inst.gt_masks = PolygonMasks([])
        return inst

    def apply_album(self, image: np.ndarray, annos: list[dict[str, Any]]
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Run the albumentations on an image and its XYXY_ABS annotations; returns the survivors."""
        h, w = image.shape[:2]
        bboxes, ann_idx = [], []
        for i, a in enumerate(annos):
            x0, y0, x1, y1 = np.clip(np.asarray(a["bbox"], dtype=np.float64), 0, [w, h, w, h])
            if x1 - x0 > 0 and y1 - y0 > 0:
                bboxes.append([x0, y0, x1, y1])
                ann_idx.append(i)
        keypoints, kp_ann, kp_poly = [], [], []
        masks, mask_ann = [], []
        for i in ann_idx:
            segm = annos[i].get("segmentation")
            if not segm:
                continue
            if isinstance(segm, list):
                for j, poly in enumerate(segm):
                    # continuous COCO coordinates -> albumentations' keypoint (pixel-centre) convention
                    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2) - 0.5
                    keypoints.extend(pts.tolist())
                    kp_ann.extend([i] * len(pts))
                    kp_poly.extend([j] * len(pts))
            else:
                masks.append(_decode_mask(segm, h, w))
                mask_ann.append(i)
        kwargs: dict[str, Any] = {"image": image, "bboxes": np.asarray(bboxes, dtype=np.float64).reshape(-1, 4),
                                  "ann_idx": ann_idx, "keypoints": np.asarray(keypoints).reshape(-1, 2),
                                  "kp_ann": kp_ann, "kp_poly": kp_poly}
        if masks:
            kwargs["masks"] = masks
        out = self.album(**kwargs)

        polys: dict[int, dict[int, list[float]]] = {}
        for (x, y), i, j in zip(np.asarray(out["keypoints"]).reshape(-1, 2), out["kp_ann"], out["kp_poly"]):
            polys.setdefault(int(i), {}).setdefault(int(j), []).extend([float(x) + 0.5, float(y) + 0.5])
        new_masks = dict(zip(mask_ann, out.get("masks", [])))
        kept = []
        for box, i in zip(np.asarray(out["bboxes"]).reshape(-1, 4), out["ann_idx"]):
            a = dict(annos[int(i)])
            a["bbox"] = [float(v) for v in box]
            a["bbox_mode"] = BoxMode.XYXY_ABS
            if int(i) in polys:
                a["segmentation"] = [polys[int(i)][j] for j in sorted(polys[int(i)])]
            elif int(i) in new_masks:  # back to RLE, which detectron2's annotation transform takes
                a["segmentation"] = mask_util.encode(np.asfortranarray(new_masks[int(i)], dtype=np.uint8))
            kept.append(a)
        return out["image"], kept


def _decode_mask(segm: dict | np.ndarray, h: int, w: int) -> np.ndarray:
    if isinstance(segm, np.ndarray):
        return segm.astype(np.uint8)
    if isinstance(segm.get("counts"), list):
        segm = mask_util.frPyObjects(segm, h, w)
    return mask_util.decode(segm).astype(np.uint8)
