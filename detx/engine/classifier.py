"""The image-level classifier as a detectron2 model: ``DetxClassifier`` in ``META_ARCH_REGISTRY`` and torchvision's
DenseNets in ``BACKBONE_REGISTRY``.

``DetxClassifier`` takes any backbone ``build_backbone(cfg)`` builds (detectron2's ResNets, which load the
model-zoo ImageNet weights, or :func:`build_densenet_backbone`, the CheXNet / MURA / VinDr-SpineXR architecture),
averages ``MODEL.CLASSIFIER.IN_FEATURE`` over each image's own area (the padding of a batch is masked out, so a
batched image scores like a single one) and applies one linear layer with a sigmoid per output:

- output 0: P(abnormal);
- outputs 1..K (``MODEL.CLASSIFIER.NUM_CLASSES`` = K > 0): P(class k present), multi-label.

Training takes ``cls_targets`` (the mapper reads them from the prepared dataset:
:func:`detx.core.prepared.image_level_targets`) and returns ``{"loss_cls": BCE}`` with optional positive-class
weights (``MODEL.CLASSIFIER.POS_WEIGHT``); inference returns ``[{"cls_probs": (1 + K,) tensor}, ...]``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from detx.engine.config import CLASSIFIER_ARCH

logger = logging.getLogger(__name__)

__all__ = ["DetxClassifier", "DenseNetBackbone", "build_densenet_backbone", "output_names"]

DENSENETS = {121: torchvision.models.densenet121, 169: torchvision.models.densenet169,
             201: torchvision.models.densenet201}


def output_names(class_names: list[str] | tuple[str, ...], num_classes: int) -> list[str]:
    """Names of the classifier's outputs: ``abnormal``, then the first ``num_classes`` class names."""
    return ["abnormal", *list(class_names)[:num_classes]]


@META_ARCH_REGISTRY.register()  # under its class name, CLASSIFIER_ARCH
class DetxClassifier(nn.Module):
    """A backbone, masked global average pooling and a linear multi-label head (see the module docstring)."""

    @configurable
    def __init__(self, *, backbone: Backbone, in_feature: str, num_outputs: int, pixel_mean: list[float],
                 pixel_std: list[float], pos_weight: list[float] | None = None, dropout: float = 0.0,
                 head: nn.Module | None = None, body_part_head: nn.Module | None = None):
        """
        Args:
            backbone: a detectron2 backbone.
            in_feature: the backbone output that is pooled.
            num_outputs: 1 (normal/abnormal) or 1 + K (and K classes).
            pixel_mean, pixel_std: input normalization (``MODEL.PIXEL_MEAN/STD``).
            pos_weight: BCE positive-class weight per output (None: 1).
            dropout: dropout before the linear layer.
            head: the pooled feature -> logits module (default one linear layer; ``MODEL.CLASSIFIER.HEAD "mlgcn"``:
                :class:`detx.engine.mlgcn.MLGCNHead`).
            body_part_head: ``MODEL.CLASSIFIER.BODY_PART_HEAD`` (:class:`detx.engine.body_part.BodyPartHead`): the
                body-part loss in training, the part probabilities appended to ``cls_probs`` at inference.
        """
        super().__init__()
        shapes = backbone.output_shape()
        if in_feature not in shapes:
            raise ValueError(f"MODEL.CLASSIFIER.IN_FEATURE {in_feature!r} is not a backbone output "
                             f"({sorted(shapes)})")
        self.backbone = backbone
        self.in_feature = in_feature
        self.stride = int(shapes[in_feature].stride or 1)
        self.num_outputs = int(num_outputs)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = head if head is not None else nn.Linear(int(shapes[in_feature].channels), self.num_outputs)
        self.body_part_head = body_part_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if pos_weight:
            if len(pos_weight) != self.num_outputs:
                raise ValueError(f"MODEL.CLASSIFIER.POS_WEIGHT has {len(pos_weight)} values for {self.num_outputs} "
                                 "outputs (abnormal first, then the classes)")
            self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float32), False)
        else:
            self.pos_weight = None

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "head": _build_head(cfg, backbone),
            "body_part_head": _build_body_part_head(cfg, backbone),
            "in_feature": cfg.MODEL.CLASSIFIER.IN_FEATURE,
            "num_outputs": 1 + int(cfg.MODEL.CLASSIFIER.NUM_CLASSES),
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "pos_weight": list(cfg.MODEL.CLASSIFIER.POS_WEIGHT) or None,
            "dropout": float(cfg.MODEL.CLASSIFIER.DROPOUT),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def features(self, tensor: torch.Tensor) -> torch.Tensor:
        """The pooled feature map of a normalized, padded batch (what attribution methods look at)."""
        return self.backbone(tensor)[self.in_feature]

    def logits_from_tensor(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None
                           ) -> torch.Tensor:
        """(N, outputs) logits of a normalized batch; ``image_sizes`` (h, w) mask each image's padding."""
        return self.head(self.dropout(self.pooled_from_tensor(tensor, image_sizes)))

    def pooled_from_tensor(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None
                           ) -> torch.Tensor:
        """(N, channels) pooled features of a normalized batch, each image's padding masked out."""
        fmap = self.features(tensor)
        if image_sizes is None:
            pooled = fmap.mean(dim=(2, 3))
        else:
            mask = torch.zeros(fmap.shape[0], 1, *fmap.shape[2:], device=fmap.device, dtype=fmap.dtype)
            for i, (h, w) in enumerate(image_sizes):
                # ceil(h / stride) written for positive numbers only: ONNX's integer Div truncates, so the usual
                # -(-h // stride) would cover one cell less in an exported graph
                mask[i, :, : (h + self.stride - 1) // self.stride, : (w + self.stride - 1) // self.stride] = 1
            pooled = (fmap * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp(min=1)
        return pooled

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        images = self.preprocess_image(batched_inputs)
        pooled = self.pooled_from_tensor(images.tensor, images.image_sizes)
        logits = self.head(self.dropout(pooled))
        if self.training:
            if any("cls_targets" not in x for x in batched_inputs):
                raise ValueError("training DetxClassifier needs 'cls_targets' in every input (image-level labels)")
            targets = torch.stack([torch.as_tensor(x["cls_targets"], dtype=torch.float32) for x in batched_inputs])
            targets = targets.to(logits.device)
            if targets.shape != logits.shape:
                raise ValueError(f"cls_targets of shape {tuple(targets.shape[1:])} for {self.num_outputs} outputs")
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=self.pos_weight)
            if self.body_part_head is not None:
                return {"loss_cls": loss, "loss_body_part": self.body_part_head.loss(pooled, batched_inputs)}
            return {"loss_cls": loss}
        probs = torch.sigmoid(logits.float())
        if self.body_part_head is not None:  # [abnormal, classes, parts] (detx/engine/body_part.py)
            parts, p_abnormal = self.body_part_head.probabilities(pooled)
            if p_abnormal is not None:
                probs = torch.cat([p_abnormal[:, None], probs[:, 1:]], dim=1)
            probs = torch.cat([probs, parts], dim=1)
        return [{"cls_probs": p} for p in probs]


def _build_head(cfg: CfgNode, backbone: Backbone) -> nn.Module | None:
    """``MODEL.CLASSIFIER.HEAD``: ``"linear"`` (None: the default layer) or ``"mlgcn"`` (label-graph head)."""
    kind = str(cfg.MODEL.CLASSIFIER.HEAD).lower()
    if kind == "linear":
        return None
    if kind == "mlgcn":
        from detx.engine.mlgcn import build_mlgcn_head

        channels = int(backbone.output_shape()[cfg.MODEL.CLASSIFIER.IN_FEATURE].channels)
        return build_mlgcn_head(cfg, channels, 1 + int(cfg.MODEL.CLASSIFIER.NUM_CLASSES))
    raise ValueError(f"MODEL.CLASSIFIER.HEAD {cfg.MODEL.CLASSIFIER.HEAD!r}: expected 'linear' or 'mlgcn'")


def _build_body_part_head(cfg: CfgNode, backbone: Backbone) -> nn.Module | None:
    """``MODEL.CLASSIFIER.BODY_PART_HEAD``: "" (none), ``"parts"`` (7-way) or ``"joint"`` (14-way)."""
    mode = str(cfg.MODEL.CLASSIFIER.BODY_PART_HEAD).lower()
    if not mode:
        return None
    from detx.engine.body_part import BodyPartHead

    channels = int(backbone.output_shape()[cfg.MODEL.CLASSIFIER.IN_FEATURE].channels)
    return BodyPartHead(channels, list(cfg.MODEL.CLASSIFIER.BODY_PARTS), mode)


class DenseNetBackbone(Backbone):
    """torchvision's DenseNet ``features`` as a detectron2 backbone with one output, ``"dense"`` (stride 32),
    after the final batch norm and ReLU (as torchvision's classifier sees it)."""

    def __init__(self, depth: int = 121, weights: str = ""):
        super().__init__()
        if depth not in DENSENETS:
            raise ValueError(f"MODEL.DENSENET.DEPTH {depth} is not one of {sorted(DENSENETS)}")
        net = DENSENETS[depth](weights=None)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            own = _torchvision_keys({k: v for k, v in state.items() if k.startswith("features.")})
            net.load_state_dict({**net.state_dict(), **own}, strict=True)
            logger.info("DenseNet-%d ImageNet weights from %s (%d tensors)", depth, weights, len(own))
        self.body = net.features
        self._channels = net.classifier.in_features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"dense": F.relu(self.body(x))}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"dense": ShapeSpec(channels=self._channels, stride=32)}


def _torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old torchvision DenseNet files name layers ``norm.1``; today's modules say ``norm1``."""
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.\w+)$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


@BACKBONE_REGISTRY.register()
def build_densenet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> DenseNetBackbone:
    """``MODEL.BACKBONE.NAME: build_densenet_backbone``: DenseNet-``MODEL.DENSENET.DEPTH`` (121/169/201), ImageNet
    weights from ``MODEL.DENSENET.WEIGHTS`` (a torchvision state dict the user downloaded; "" = random init)."""
    if input_shape.channels != 3:
        raise ValueError(f"DenseNet backbones take 3-channel input, got {input_shape.channels}")
    return DenseNetBackbone(int(cfg.MODEL.DENSENET.DEPTH), str(cfg.MODEL.DENSENET.WEIGHTS))


assert DetxClassifier.__name__ == CLASSIFIER_ARCH  # the registry name that configs and is_classifier() use
