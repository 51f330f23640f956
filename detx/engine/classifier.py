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

Training recipes (docs/classifiers.md):

- ``MODEL.CLASSIFIER.LOSS supcon``: stage 1, the supervised contrastive loss (:func:`supcon_loss`) over two augmented
  views per image (the mapper's ``image2``) on a projection head (``proj``); the linear head learns beside it from
  detached features. Inference adds ``"embedding"`` (the normalized projection) for the k-NN metric.
- ``MODEL.CLASSIFIER.FREEZE_BACKBONE``: the backbone keeps its loaded weights and batch-norm statistics; with a
  feature cache (:mod:`detx.engine.feature_cache`) the head trains on pooled features computed once.
- The head (``MODEL.CLASSIFIER.HEAD``: ``linear``, ``mlgcn`` or a name in :data:`CLS_HEAD_REGISTRY`) maps pooled
  ``(N, C)`` features to ``(N, outputs)`` logits.
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
from detectron2.utils.registry import Registry
from torch import nn

from detx.engine.config import CLASSIFIER_ARCH

logger = logging.getLogger(__name__)

__all__ = ["CLS_HEAD_REGISTRY", "DetxClassifier", "DenseNetBackbone", "VGGBackbone", "build_cls_head",
           "build_densenet_backbone", "build_vgg_backbone", "output_names", "supcon_loss"]

CLS_HEAD_REGISTRY = Registry("CLS_HEAD")
CLS_HEAD_REGISTRY.__doc__ = """Heads of the image classifier: ``fn(cfg, in_channels, num_outputs) -> nn.Module`` mapping pooled
``(N, in_channels)`` features to ``(N, num_outputs)`` logits; chosen by name in ``MODEL.CLASSIFIER.HEAD``."""

LOSSES = ("bce", "supcon")
POOLS = ("avg", "max", "lse")


@CLS_HEAD_REGISTRY.register()
def LinearHead(cfg: CfgNode | None, in_channels: int, num_outputs: int) -> nn.Module:  # noqa: N802 - registry name
    """One linear layer (its parameters are ``head.weight``/``head.bias`` in a checkpoint)."""
    return nn.Linear(in_channels, num_outputs)


def build_cls_head(cfg: CfgNode, in_channels: int, num_outputs: int) -> nn.Module:
    """``MODEL.CLASSIFIER.HEAD``: ``"linear"`` (:func:`LinearHead`, the default), ``"mlgcn"`` (the label-graph head,
    :mod:`detx.engine.mlgcn`) or the name of any other head registered in :data:`CLS_HEAD_REGISTRY`."""
    name = str(cfg.MODEL.CLASSIFIER.HEAD)
    if name.lower() == "linear":
        return LinearHead(cfg, in_channels, num_outputs)
    if name.lower() == "mlgcn":
        from detx.engine.mlgcn import build_mlgcn_head

        return build_mlgcn_head(cfg, in_channels, num_outputs)
    if name in CLS_HEAD_REGISTRY:
        return CLS_HEAD_REGISTRY.get(name)(cfg, in_channels, num_outputs)
    raise ValueError(f"MODEL.CLASSIFIER.HEAD {name!r}: expected 'linear', 'mlgcn' or a head registered in "
                     f"CLS_HEAD_REGISTRY ({sorted(k for k, _ in CLS_HEAD_REGISTRY)})")


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The supervised contrastive loss (Khosla et al. 2020, "L_out") of two views per image.

    The 2N embeddings (normalized here) are anchors in turn; the positives of an anchor are every other embedding of
    the same label (its own other view included), the denominator every other embedding:
    ``L = mean_i -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t))``.

    Args:
        z1, z2: (N, D) embeddings of the first and second view of the same N images.
        labels: (N,) labels (equal values are positives).
        temperature: ``t``.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    y = torch.cat([labels, labels]).reshape(-1)
    n = z.shape[0]
    sim = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1) / pos.sum(1).clamp(min=1)
    return per_anchor.mean()

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
                 head: nn.Module | None = None, body_part_head: nn.Module | None = None, loss: str = "bce",
                 temperature: float = 0.1, proj_hidden: int = 256, proj_dim: int = 128,
                 freeze_backbone: bool = False, pool: str = "avg", lse_r: float = 5.0):
        """
        Args:
            backbone: a detectron2 backbone.
            in_feature: the backbone output that is pooled.
            num_outputs: 1 (normal/abnormal) or 1 + K (and K classes).
            pixel_mean, pixel_std: input normalization (``MODEL.PIXEL_MEAN/STD``).
            pos_weight: BCE positive-class weight per output (None: 1).
            dropout: dropout before the linear layer.
            head: the pooled feature -> logits module (None: one linear layer; ``MODEL.CLASSIFIER.HEAD``,
                :func:`build_cls_head`).
            body_part_head: ``MODEL.CLASSIFIER.BODY_PART_HEAD`` (:class:`detx.engine.body_part.BodyPartHead`): the
                body-part loss in training, the part probabilities appended to ``cls_probs`` at inference.
            loss: "bce" or "supcon" (stage 1: SupCon on a projection head plus the head on detached features).
            temperature: SupCon's temperature.
            proj_hidden: width of SupCon's projection head.
            proj_dim: SupCon's embedding size.
            freeze_backbone: keep the backbone's parameters and batch-norm statistics as loaded.
            pool: "avg" (average the features, then the head) or "max" / "lse" (the linear head at every cell of
                the feature map, a class activation map, pooled by its maximum or by log-sum-exp).
            lse_r: log-sum-exp's sharpness r in ``(1/r) log mean exp(r s)``.
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
        channels = int(shapes[in_feature].channels)
        self.head = head if head is not None else nn.Linear(channels, self.num_outputs)
        self.body_part_head = body_part_head
        if pool not in POOLS:
            raise ValueError(f"MODEL.CLASSIFIER.POOL {pool!r} is not one of {POOLS}")
        if pool != "avg" and not isinstance(self.head, nn.Linear):
            raise ValueError(f"MODEL.CLASSIFIER.POOL {pool!r} applies the head at every cell of the feature map: it "
                             f"needs the linear head (MODEL.CLASSIFIER.HEAD 'linear'), not {type(self.head).__name__}")
        if not lse_r > 0:
            raise ValueError(f"MODEL.CLASSIFIER.LSE_R must be > 0, got {lse_r}")
        if pool != "avg" and loss == "supcon":
            raise ValueError(f"MODEL.CLASSIFIER.POOL {pool!r} is for the classification loss; SupCon's stage 1 "
                             "learns on average-pooled features (use POOL 'avg' there, any POOL in stage 2)")
        self.pool = pool
        self.lse_r = float(lse_r)
        if loss not in LOSSES:
            raise ValueError(f"MODEL.CLASSIFIER.LOSS {loss!r} is not one of {LOSSES}")
        self.loss = loss
        self.temperature = float(temperature)
        if loss == "supcon":
            self.proj = nn.Sequential(nn.Linear(channels, proj_hidden), nn.ReLU(inplace=True),
                                      nn.Linear(proj_hidden, proj_dim))
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            for q in self.backbone.parameters():
                q.requires_grad_(False)
        #: pooled features by image file name (detx.engine.feature_cache), used instead of the backbone when set
        self.feature_cache: dict[str, torch.Tensor] | None = None
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
        in_feature = cfg.MODEL.CLASSIFIER.IN_FEATURE
        shapes = backbone.output_shape()
        num_outputs = 1 + int(cfg.MODEL.CLASSIFIER.NUM_CLASSES)
        head = build_cls_head(cfg, int(shapes[in_feature].channels), num_outputs) if in_feature in shapes else None
        return {
            "backbone": backbone,
            "body_part_head": _build_body_part_head(cfg, backbone),
            "in_feature": in_feature,
            "num_outputs": num_outputs,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "pos_weight": list(cfg.MODEL.CLASSIFIER.POS_WEIGHT) or None,
            "dropout": float(cfg.MODEL.CLASSIFIER.DROPOUT),
            "head": head,
            "loss": str(cfg.MODEL.CLASSIFIER.LOSS),
            "temperature": float(cfg.MODEL.CLASSIFIER.TEMPERATURE),
            "proj_hidden": int(cfg.MODEL.CLASSIFIER.PROJ_HIDDEN),
            "proj_dim": int(cfg.MODEL.CLASSIFIER.PROJ_DIM),
            "freeze_backbone": bool(cfg.MODEL.CLASSIFIER.FREEZE_BACKBONE),
            "pool": str(cfg.MODEL.CLASSIFIER.POOL).lower(),
            "lse_r": float(cfg.MODEL.CLASSIFIER.LSE_R),
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

    def train(self, mode: bool = True) -> DetxClassifier:
        """A frozen backbone stays in eval mode (its batch-norm statistics do not move)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def _feature_map(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]] | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The feature map of a normalized batch and the (N, 1, h, w) mask of each image's own cells (None: all)."""
        if self.freeze_backbone and self.training:
            with torch.no_grad():
                fmap = self.features(tensor)
        else:
            fmap = self.features(tensor)
        if image_sizes is None:
            return fmap, None
        mask = torch.zeros(fmap.shape[0], 1, *fmap.shape[2:], device=fmap.device, dtype=fmap.dtype)
        for i, (h, w) in enumerate(image_sizes):
            # ceil(h / stride) written for positive numbers only: ONNX's integer Div truncates, so the usual
            # -(-h // stride) would cover one cell less in an exported graph
            mask[i, :, : (h + self.stride - 1) // self.stride, : (w + self.stride - 1) // self.stride] = 1
        return fmap, mask

    @staticmethod
    def _average(fmap: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return fmap.mean(dim=(2, 3))
        return (fmap * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp(min=1)

    def pooled_from_tensor(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None
                           ) -> torch.Tensor:
        """(N, C) features of a normalized batch, averaged over each image's own area (``image_sizes`` (h, w) mask
        its padding; None: the whole map)."""
        return self._average(*self._feature_map(tensor, image_sizes))

    def activation_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """The linear head applied at every cell of a (N, C, h, w) feature map: (N, outputs, h, w) logits, the class
        activation map (Zhou et al. 2016) that ``MODEL.CLASSIFIER.POOL`` max / lse pools."""
        return F.conv2d(self.dropout(fmap), self.head.weight[:, :, None, None], self.head.bias)

    def _logits(self, fmap: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pool == "avg":
            return self.head(self.dropout(self._average(fmap, mask)))
        cam = self.activation_map(fmap).float().flatten(2)  # (N, O, hw)
        if mask is not None:
            keep = mask.flatten(2) > 0  # (N, 1, hw)
            cam = cam.masked_fill(~keep, float("-inf"))
            count = keep.sum(2).to(cam.dtype)  # (N, 1)
        else:
            count = torch.full((cam.shape[0], 1), float(cam.shape[2]), device=cam.device)
        if self.pool == "max":
            return cam.amax(dim=2)
        r = self.lse_r  # (1/r) log((1/n) sum exp(r s)), stable through logsumexp
        return (torch.logsumexp(r * cam, dim=2) - torch.log(count)) / r

    def logits_from_tensor(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None
                           ) -> torch.Tensor:
        """(N, outputs) logits of a normalized batch; ``image_sizes`` (h, w) mask each image's padding."""
        return self._logits(*self._feature_map(tensor, image_sizes))

    def _pooled_and_logits(self, batched_inputs: list[dict[str, Any]], key: str = "image"
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (N, C) average-pooled features and the (N, outputs) logits of a batch (the feature cache holds the
        pooled features of a frozen backbone: with it, ``MODEL.CLASSIFIER.POOL`` must be avg)."""
        cache = self.feature_cache
        if cache is not None and key == "image" and all(x.get("file_name") in cache for x in batched_inputs):
            if self.pool != "avg":
                raise ValueError(f"MODEL.CLASSIFIER.FEATURE_CACHE holds average-pooled features; POOL {self.pool!r} "
                                 "needs the feature maps")
            pooled = torch.stack([cache[x["file_name"]] for x in batched_inputs]).to(self.device)
            return pooled, self.head(self.dropout(pooled))
        images = self.preprocess_image([{"image": x[key]} for x in batched_inputs])
        fmap, mask = self._feature_map(images.tensor, images.image_sizes)
        return self._average(fmap, mask), self._logits(fmap, mask)

    def _pooled(self, batched_inputs: list[dict[str, Any]], key: str = "image") -> torch.Tensor:
        return self._pooled_and_logits(batched_inputs, key)[0]

    def _targets(self, batched_inputs: list[dict[str, Any]]) -> torch.Tensor:
        if any("cls_targets" not in x for x in batched_inputs):
            raise ValueError("training DetxClassifier needs 'cls_targets' in every input (image-level labels)")
        targets = torch.stack([torch.as_tensor(x["cls_targets"], dtype=torch.float32) for x in batched_inputs])
        if targets.shape[1:] != (self.num_outputs,):
            raise ValueError(f"cls_targets of shape {tuple(targets.shape[1:])} for {self.num_outputs} outputs")
        return targets.to(self.device)

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        pooled, logits = self._pooled_and_logits(batched_inputs)
        if self.training:
            targets = self._targets(batched_inputs)
            if self.loss == "supcon":
                # the second view: the mapper's image2 (a second DETX.AUG draw); without augmentation, the image
                pooled2 = self._pooled(batched_inputs, "image2") if all("image2" in x for x in batched_inputs) \
                    else pooled
                loss = supcon_loss(self.proj(pooled), self.proj(pooled2), targets[:, 0], self.temperature)
                probe = self.head(self.dropout(pooled.detach()))
                return {"loss_supcon": loss,
                        "loss_cls": F.binary_cross_entropy_with_logits(probe.float(), targets,
                                                                       pos_weight=self.pos_weight)}
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
        if self.loss == "supcon":
            emb = F.normalize(self.proj(pooled).float(), dim=1)
            return [{"cls_probs": p, "embedding": e} for p, e in zip(probs, emb)]
        return [{"cls_probs": p} for p in probs]


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


VGGS = {11: "vgg11", 13: "vgg13", 16: "vgg16", 19: "vgg19"}


class VGGBackbone(Backbone):
    """torchvision's VGG ``features`` (the convolutional part, five max-pools) as a detectron2 backbone with one
    output, ``"vgg"`` (512 channels, stride 32): the transfer-learning backbone of the VGG16 + DeepLIFT localizer."""

    def __init__(self, depth: int = 16, bn: bool = False, weights: str = ""):
        super().__init__()
        if depth not in VGGS:
            raise ValueError(f"MODEL.VGG.DEPTH {depth} is not one of {sorted(VGGS)}")
        net = getattr(torchvision.models, VGGS[depth] + ("_bn" if bn else ""))(weights=None)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            own = {k: v for k, v in state.items() if k.startswith("features.")}
            missing = [k for k in net.state_dict() if k.startswith("features.") and k not in own]
            if missing:
                raise ValueError(f"MODEL.VGG.WEIGHTS {weights} is not a torchvision VGG-{depth}"
                                 f"{'-BN' if bn else ''} state dict: it lacks {missing[:3]}")
            net.load_state_dict({**net.state_dict(), **own}, strict=True)
            logger.info("VGG-%d ImageNet weights from %s (%d tensors)", depth, weights, len(own))
        self.body = net.features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"vgg": self.body(x)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"vgg": ShapeSpec(channels=512, stride=32)}

    @property
    def size_divisibility(self) -> int:
        return 32


@BACKBONE_REGISTRY.register()
def build_vgg_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> VGGBackbone:
    """``MODEL.BACKBONE.NAME: build_vgg_backbone``: VGG-``MODEL.VGG.DEPTH`` (11/13/16/19, ``MODEL.VGG.BN`` for the
    batch-norm variant), ImageNet weights from ``MODEL.VGG.WEIGHTS`` (a torchvision state dict; "" = random init)."""
    if input_shape.channels != 3:
        raise ValueError(f"VGG backbones take 3-channel input, got {input_shape.channels}")
    return VGGBackbone(int(cfg.MODEL.VGG.DEPTH), bool(cfg.MODEL.VGG.BN), str(cfg.MODEL.VGG.WEIGHTS))


assert DetxClassifier.__name__ == CLASSIFIER_ARCH  # the registry name that configs and is_classifier() use
