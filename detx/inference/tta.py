"""Test-time augmentation views (horizontal flip, extra test scales) and the inverse box mapping.

A view transforms the model input; its detections are mapped back to the original image's pixels,
then the views are fused with WBF (:mod:`detx.inference.ensemble`). Scales need no inverse beyond
detectron2's own post-processing (which rescales boxes to the requested output size); a horizontal
flip maps ``x`` to ``W - x`` in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detx.core.errors import InputError

TTA_CHOICES = ("none", "hflip", "scale=<MIN_SIZE>")


@dataclass(frozen=True)
class TTAView:
    """One test-time view: a flip and a shortest-edge size (None: the config's INPUT.MIN_SIZE_TEST)."""

    hflip: bool = False
    min_size: int | None = None

    @property
    def name(self) -> str:
        parts = ["hflip" if self.hflip else "orig"]
        if self.min_size is not None:
            parts.append(f"s{self.min_size}")
        return "_".join(parts)


def parse_tta(spec: Sequence[str] | str | None) -> list[TTAView]:
    """Views from ``--tta`` tokens: ``hflip`` and ``scale=N`` (any number), or ``none``.

    The views are the product of {no flip, flip (with ``hflip``)} and {config size, each N}; the
    unflipped view at the config size always comes first.

    Examples:
        ``[]`` -> [orig]; ``["hflip"]`` -> [orig, hflip];
        ``["hflip", "scale=1280"]`` -> [orig, orig_s1280, hflip, hflip_s1280].
    """
    tokens = [spec] if isinstance(spec, str) else list(spec or [])
    tokens = [t for tok in tokens for t in tok.replace(",", " ").split()]
    hflip = False
    sizes: list[int | None] = [None]
    for t in tokens:
        if t == "none":
            continue
        if t == "hflip":
            hflip = True
        elif t.startswith("scale="):
            try:
                size = int(t.split("=", 1)[1])
            except ValueError:
                raise InputError(f"bad TTA scale {t!r}: expected scale=<integer shortest edge>") from None
            if size <= 0:
                raise InputError(f"bad TTA scale {t!r}: the size must be positive")
            if size not in sizes:
                sizes.append(size)
        else:
            raise InputError(f"unknown TTA {t!r}; expected one of {TTA_CHOICES}")
    return [TTAView(flip, size) for flip in ([False, True] if hflip else [False]) for size in sizes]


def hflip_image(image: torch.Tensor) -> torch.Tensor:
    """Mirror a CHW (or HW) image tensor left-right."""
    return torch.flip(image, dims=[-1])


def hflip_boxes(boxes: np.ndarray | torch.Tensor, width: float) -> np.ndarray | torch.Tensor:
    """Mirror xyxy boxes of an image ``width`` pixels wide (its own inverse)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, dtype=np.float64, copy=True)
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out
