"""Heatmaps of the image classifier with Captum (PyTorch's attribution library): Grad-CAM, DeepLIFT and
Integrated Gradients of one output (``abnormal`` or a class) on one image.

The image is read and resized as prediction does (:func:`detx.inference.predictor.load_image`, detectron2's
test resize), normalized as the model does, and explained without padding. A heatmap is returned at the model's
input resolution, raw: Grad-CAM's class-weighted activations upsampled, before its ReLU; DeepLIFT's and Integrated
Gradients' attributions summed over channels, against a mean-image baseline (zero after normalization). Its maximum
is where the method points (the pointing game's peak), also when no region has positive evidence, where the ReLU
of Grad-CAM would leave an all-zero map with no peak at all; overlays show the positive part. detectron2's ResNets use functional ReLUs, which DeepLIFT's rules do not rewrite: for them DeepLIFT falls
back to gradient x input through those activations; Grad-CAM and Integrated Gradients are exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import nn

from detx.inference.predictor import BatchedClassifier, inference_resize, model_input

METHODS: tuple[str, ...] = ("gradcam", "deeplift", "integrated-gradients")

__all__ = ["METHODS", "Explainer"]


class _Logits(nn.Module):
    """The classifier as a plain module from a normalized (1, 3, H, W) tensor to its logits (what Captum needs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits_from_tensor(x)


class Explainer(BatchedClassifier):
    """An image-classifier checkpoint that explains its outputs (see the module docstring)."""

    def __init__(self, cfg: CfgNode, weights: str | os.PathLike, method: str = "gradcam", ig_steps: int = 32):
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r}; expected one of {METHODS}")
        super().__init__(cfg, weights, amp=False)
        self.method = method
        self.ig_steps = int(ig_steps)
        self.net = _Logits(self.model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _layer(self) -> nn.Module:
        """The module whose output the classifier pools (Grad-CAM's layer)."""
        backbone = self.model.backbone
        if hasattr(backbone, self.model.in_feature):  # detectron2 ResNet: stages are attributes res2..res5
            return getattr(backbone, self.model.in_feature)
        if hasattr(backbone, "body"):  # DenseNetBackbone
            return backbone.body
        raise ValueError(f"cannot find the layer of {self.model.in_feature!r} in {type(backbone).__name__} for "
                         "Grad-CAM; use --method integrated-gradients")

    def _tensor(self, image: np.ndarray, fmt: str | None) -> torch.Tensor:
        resize = inference_resize(self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
        t = model_input(image, resize, self.input_format, fmt=fmt).to(self.device)
        return ((t - self.model.pixel_mean) / self.model.pixel_std)[None]

    def explain(self, image: np.ndarray, targets: Sequence[int], fmt: str | None = None
                ) -> tuple[list[np.ndarray], np.ndarray]:
        """Heatmaps of the output indices ``targets`` on one HWC uint8 image.

        Returns:
            ([(H, W) float32 raw heatmap per target], (1 + K,) probabilities of the image); H, W is the model's
            input size (the test resize of the image).
        """
        from captum.attr import DeepLift, IntegratedGradients, LayerAttribution, LayerGradCam

        x = self._tensor(image, fmt)
        with torch.no_grad():
            probs = torch.sigmoid(self.net(x))[0].float().cpu().numpy().astype(np.float64)
        maps = []
        for t in targets:
            if self.method == "gradcam":
                attr = LayerGradCam(self.net, self._layer()).attribute(x, target=int(t), relu_attributions=False)
                attr = LayerAttribution.interpolate(attr, tuple(x.shape[2:]), interpolate_mode="bilinear")
                heat = attr[0].sum(0)
            else:
                xr = x.clone().requires_grad_(True)
                algo = DeepLift(self.net) if self.method == "deeplift" else IntegratedGradients(self.net)
                kwargs = {"n_steps": self.ig_steps} if self.method == "integrated-gradients" else {}
                attr = algo.attribute(xr, baselines=torch.zeros_like(xr), target=int(t), **kwargs)
                heat = attr[0].sum(0)
            maps.append(heat.detach().float().cpu().numpy())
        return maps, probs
