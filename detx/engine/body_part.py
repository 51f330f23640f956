"""Body parts for MURA: a head beside P(abnormal) that says which of the seven upper-extremity parts a radiograph shows
(``MODEL.CLASSIFIER.BODY_PART_HEAD: "parts"``), or the MURA seed's 14-way model (``"joint"``: one softmax over
7 parts x {normal, abnormal}, for when the part is unknown; P(abnormal) is then its abnormal half's sum).

Targets come from each training image's ``body_part`` (``meta.csv`` / the COCO image entries of
``datasets/prepare_mura.py``). An image whose part is missing or not one of ``MODEL.CLASSIFIER.BODY_PARTS`` adds nothing
to the body-part loss (ignored, and named in the log with the count once per process).

At inference the model appends the part probabilities to ``cls_probs`` (``[abnormal, K classes, parts...]``): prediction,
the classification CSV (``p_part_<PART>`` columns) and the evaluator read them from there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn

from detx.evaluation.body_part import IGNORE, body_part_index

logger = logging.getLogger(__name__)

__all__ = ["BODY_PART_MODES", "PART_PROB_PREFIX", "BodyPartHead", "body_part_index", "body_part_names"]

BODY_PART_MODES = ("", "parts", "joint")


class BodyPartHead(nn.Module):
    """A linear layer over the pooled image feature: 7 part logits (``parts``) or 14 part x label logits (``joint``,
    index ``2 * part + label``)."""

    def __init__(self, in_channels: int, parts: Sequence[str], mode: str = "parts"):
        super().__init__()
        if mode not in ("parts", "joint"):
            raise ValueError(f"MODEL.CLASSIFIER.BODY_PART_HEAD {mode!r}: expected '', 'parts' or 'joint'")
        if not parts:
            raise ValueError("MODEL.CLASSIFIER.BODY_PARTS is empty")
        self.parts = tuple(parts)
        self.mode = mode
        self.layer = nn.Linear(in_channels, len(self.parts) * (2 if mode == "joint" else 1))
        self._warned: set[str] = set()

    def targets(self, batched_inputs: list[dict[str, Any]]) -> torch.Tensor:
        """Part indices (or joint ``2 * part + abnormal``), -100 where the part is unknown (logged once per value)."""
        out = []
        for x in batched_inputs:
            k = body_part_index(self.parts, x.get("body_part"))
            if k == IGNORE:
                name = str(x.get("body_part"))
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning("image %s: body part %r is not one of %s; it adds no body-part loss (further "
                                   "images of it are not named)", x.get("image_uid", x.get("image_id")), name,
                                   list(self.parts))
            elif self.mode == "joint":
                if "cls_targets" not in x:
                    raise ValueError("the joint body-part head needs cls_targets (the abnormal label)")
                k = 2 * k + int(float(x["cls_targets"][0]) > 0.5)
            out.append(k)
        return torch.as_tensor(out, dtype=torch.long)

    def loss(self, pooled: torch.Tensor, batched_inputs: list[dict[str, Any]]) -> torch.Tensor:
        target = self.targets(batched_inputs).to(pooled.device)
        logits = self.layer(pooled).float()
        if bool((target == IGNORE).all()):
            return logits.sum() * 0.0  # keeps the graph; no known part in this batch
        return F.cross_entropy(logits, target, ignore_index=IGNORE)

    def probabilities(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(part probabilities (N, parts), P(abnormal) (N,) in joint mode else None)."""
        p = torch.softmax(self.layer(pooled).float(), dim=1)
        if self.mode == "joint":
            joint = p.view(p.shape[0], len(self.parts), 2)
            return joint.sum(dim=2), joint[:, :, 1].sum(dim=1)
        return p, None


#: the prefix of a body-part probability's name among a classifier's outputs (exported metadata ``prob_names``)
PART_PROB_PREFIX = "body_part:"


def body_part_names(cfg: CfgNode) -> list[str]:
    """The body parts whose probabilities follow P(abnormal) and the class probabilities in ``cls_probs``, in order
    (``MODEL.CLASSIFIER.BODY_PARTS`` when ``MODEL.CLASSIFIER.BODY_PART_HEAD`` is set; else none)."""
    if not str(cfg.MODEL.CLASSIFIER.get("BODY_PART_HEAD", "")).strip():
        return []
    return [str(p) for p in cfg.MODEL.CLASSIFIER.BODY_PARTS]
