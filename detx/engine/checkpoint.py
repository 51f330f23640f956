"""The one check of a weights file: it exists, torch can read it, and it fits the config's model.

detectron2's checkpointer only warns on shape mismatches and leaves those layers random; training and
prediction call these checks first so that a wrong file stops with a message naming it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from detx.core.errors import InputError

__all__ = ["CheckpointError", "check_checkpoint", "check_weights_file", "classifier_init_state", "detector_kind",
           "read_state_dict", "state_num_classes"]

logger = logging.getLogger(__name__)


class CheckpointError(InputError):
    """A weights file that does not fit the config (missing, another class count, other shapes)."""


DETECTOR_PREFIXES = ("roi_heads.", "proposal_generator.", "head.cls_score.")


def _check_kind(model: torch.nn.Module, state: dict, path: Path) -> None:
    """A detector's weights given to the image classifier, or the reverse, named as such."""
    model_is_classifier = type(model).__name__ == "DetxClassifier"
    state_is_detector = any(k.startswith(DETECTOR_PREFIXES) for k in state)
    state_is_classifier = "head.weight" in state and not state_is_detector
    if model_is_classifier and state_is_detector:
        raise CheckpointError(f"weights file {path} is a detector's checkpoint, not an image classifier's: pass it "
                              "with --config-file/--weights")
    if not model_is_classifier and state_is_classifier:
        raise CheckpointError(f"weights file {path} is an image classifier's checkpoint, not a detector's: pass it "
                              "with --classifier-config/--classifier-weights")


def check_weights_file(path: str | os.PathLike, what: str = "weights file") -> None:
    """Exists, is readable, and starts like a PyTorch checkpoint (a zip archive, "PK") or a pickle (0x80;
    detectron2's model-zoo ``.pkl`` files too). ``what`` names the file in the message.

    Raises:
        CheckpointError: naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e}") from e
    if head not in (b"PK",) and head[:1] != b"\x80":
        raise CheckpointError(f"cannot read {what} {path}: it is not a PyTorch/pickle checkpoint")


def read_state_dict(path: str | os.PathLike) -> dict:
    """The model state dict of a checkpoint (``ckpt["model"]`` of a detectron2 checkpoint, or the dict itself).

    Raises:
        CheckpointError: missing, unreadable or without a state dict.
    """
    path = Path(path)
    check_weights_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling error means an unusable file
        raise CheckpointError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"weights file {path} holds no model state dict")
    return state


#: the class-logit layer of each detector family, as named in a state dict
_RETINANET_LOGITS = "head.cls_score.weight"
_RETINANET_DELTAS = "head.bbox_pred.weight"  # 4 outputs per anchor: the anchors per location of the checkpoint
_RCNN_LOGITS = "roi_heads.box_predictor.cls_score.weight"  # K + 1 outputs (background last)
_CASCADE_LOGITS = re.compile(r"roi_heads\.box_predictor\.(\d+)\.cls_score\.weight")  # one per stage, K + 1 each


def detector_kind(state: Mapping[str, object]) -> str | None:
    """The detector family a state dict belongs to, from its class-logit layers: ``"RetinaNet"``,
    ``"Cascade R-CNN"``, ``"Faster/Mask R-CNN"``, or None (none of them, e.g. a backbone alone)."""
    if _RETINANET_LOGITS in state:
        return "RetinaNet"
    if any(_CASCADE_LOGITS.fullmatch(k) for k in state):
        return "Cascade R-CNN"
    if _RCNN_LOGITS in state:
        return "Faster/Mask R-CNN"
    return None


def state_num_classes(state: Mapping[str, object]) -> int | None:
    """The number of finding classes a state dict was trained for, read from its class-logit layer: R-CNN
    ``cls_score`` has K + 1 outputs (every cascade stage alike); RetinaNet's ``head.cls_score`` has A x K, with A,
    the anchors per location, from ``head.bbox_pred`` (A x 4). None when the state dict has no known logit layer."""
    def rows(key: str) -> int:
        return int(tuple(state[key].shape)[0])  # type: ignore[attr-defined]

    kind = detector_kind(state)
    if kind == "RetinaNet":
        if _RETINANET_DELTAS not in state or rows(_RETINANET_DELTAS) % 4:
            return None
        anchors = rows(_RETINANET_DELTAS) // 4
        return rows(_RETINANET_LOGITS) // anchors if anchors and rows(_RETINANET_LOGITS) % anchors == 0 else None
    if kind == "Cascade R-CNN":
        return rows(min((k for k in state if _CASCADE_LOGITS.fullmatch(k)), key=str)) - 1
    if kind == "Faster/Mask R-CNN":
        return rows(_RCNN_LOGITS) - 1
    return None


def check_checkpoint(model: torch.nn.Module, path: str | os.PathLike, num_classes: int,
                     num_classes_key: str = "MODEL.ROI_HEADS.NUM_CLASSES") -> None:
    """Fail early on weights that cannot be this model's: a missing file, another detector (a RetinaNet checkpoint
    for a Faster R-CNN config, ...), another class count, other shapes, or parameters the file lacks.

    detectron2's checkpointer only warns on shape mismatches and missing parameters and leaves those layers random.
    A model-zoo ``.pkl`` (Caffe2 names, COCO heads) is only checked for being readable: detectron2 converts it and
    the mismatching heads are meant to start random.

    Args:
        model: the config's model (``build_model(cfg)``).
        num_classes, num_classes_key: the config's class count and the key that holds it
            (:func:`detx.engine.config.num_classes` / ``num_classes_key``), for the message.

    Raises:
        CheckpointError: naming the file, what it holds and what the config wants.
    """
    path = Path(path)
    if path.suffix == ".pkl":  # model-zoo (Caffe2-named) weights: detectron2 converts and checks them
        check_weights_file(path)
        return
    state = read_state_dict(path)
    _check_kind(model, state, path)
    if "head.weight" in state and num_classes_key == "MODEL.CLASSIFIER.NUM_CLASSES":
        trained = tuple(state["head.weight"].shape)[0] - 1
        if trained != num_classes:
            raise CheckpointError(f"weights file {path} is an image classifier of {trained} classes but the config "
                                  f"has {num_classes_key} {num_classes}")
    own = model.state_dict()
    held, built = detector_kind(state), detector_kind(own)
    if held is not None and built is not None and held != built:
        raise CheckpointError(
            f"weights file {path} holds a {held} but the config builds a {built}: use the config it was trained with "
            "(with several models, one --config-file per --weights, in the same order)")
    trained_for = state_num_classes(state)
    if trained_for is not None and trained_for != num_classes:
        raise CheckpointError(
            f"weights file {path} was trained for {trained_for} classes but the config has "
            f"{num_classes_key} {num_classes}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"weights file {path} does not fit the config's model: {len(wrong)} shape "
                              f"mismatch(es), e.g. {wrong[:3]}")
    if not any(k in own for k in state):
        raise CheckpointError(f"weights file {path} shares no parameter name with the config's model")
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(
            f"weights file {path} lacks {len(missing)} of the config's model parameters (e.g. {missing[:3]}): they "
            "would stay random; it was trained with another config (another head or backbone)")


#: where a detector with an FPN keeps the backbone that the classifier's backbone is (detectron2's naming)
FPN_BOTTOM_UP = "backbone.bottom_up."


def _prefix_groups(keys: list[str], depth: int = 2) -> str:
    groups: dict[str, int] = {}
    for k in keys:
        g = ".".join(k.split(".")[:depth])
        groups[g] = groups.get(g, 0) + 1
    return ", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items())) or "none"


def _module_of(key: str) -> str:
    """``backbone.res5.0.conv1.weight`` -> ``backbone.res5``: the backbone's top-level module (stem, stage)."""
    return ".".join(key.split(".")[:2])


def classifier_init_state(model: torch.nn.Module, path: str | os.PathLike, backbone_name: str = ""
                          ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The tensors of a checkpoint that initialise the image classifier ``model``, and a report of what is loaded.

    ``path`` may be an image classifier's checkpoint (stage 1 of the contrastive recipe, or any earlier run: its
    ``backbone.*``, and its head and projection where they fit) or a detx detector's (``model_final.pth`` /
    ``model_best.pth``): with an FPN its ``backbone.bottom_up.*`` is the classifier's ``backbone.*``; without one
    (C4) its ``backbone.*`` is. Every tensor of the classifier's backbone must come from the file with its shape, and
    the file's backbone must have no tensor the classifier's lacks (a ResNet-34 is not a ResNet-18) but for whole
    stages the classifier does not build (a classifier pooling ``res4`` has no ``res5``; they are reported as not
    loaded): anything else is another backbone family.

    Args:
        model: the classifier (``DetxClassifier``).
        path: the checkpoint.
        backbone_name: ``MODEL.BACKBONE.NAME``, for the message.

    Returns:
        ``(to_load, report)``: the tensors for ``model.load_state_dict(to_load, strict=False)``; ``report`` has
        ``source`` ([classifier] or [detector]), ``loaded``, ``not_loaded`` (the file's tensors left out) and
        ``left_at_init`` (the model's tensors the file does not give: a new head).

    Raises:
        CheckpointError: missing or unreadable file, no backbone in it, or another backbone family.
    """
    path = Path(path)
    state = read_state_dict(path)
    own = model.state_dict()
    if any(k.startswith(FPN_BOTTOM_UP) for k in state):
        source = "detector"
        mapped = {"backbone." + k[len(FPN_BOTTOM_UP):]: v for k, v in state.items() if k.startswith(FPN_BOTTOM_UP)}
        rest = [k for k in state if not k.startswith(FPN_BOTTOM_UP)]
    elif any(k.startswith("backbone.") for k in state):
        source = "detector" if detector_kind(state) else "classifier"
        if source == "detector":
            mapped = {k: v for k, v in state.items() if k.startswith("backbone.")}
        else:
            mapped = dict(state)
        rest = [k for k in state if k not in mapped]
    else:
        raise CheckpointError(f"weights file {path} holds no backbone (no backbone.* or {FPN_BOTTOM_UP}* tensors): "
                              "it is neither a detx classifier's nor a detx detector's checkpoint")
    theirs = {k: v for k, v in mapped.items() if k.startswith("backbone.")}
    ours = [k for k in own if k.startswith("backbone.")]
    # a classifier that pools an earlier stage (MODEL.CLASSIFIER.IN_FEATURE res4) builds its backbone only up to that
    # stage: the file's later stages, which the classifier has no module of at all, are left out (reported); a
    # tensor the classifier lacks inside a stage it has (a ResNet-34's res2.2) is another family
    our_modules = {_module_of(k) for k in ours}
    later = sorted(k for k in theirs if k not in own and _module_of(k) not in our_modules)
    theirs = {k: v for k, v in theirs.items() if k not in set(later)}
    missing = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in own]
    wrong = [f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}" for k in ours
             if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} of the config's {len(ours)} backbone tensors are not in it (e.g. "
                           f"{missing[:2]})")
        if extra:
            details.append(f"it has {len(extra)} backbone tensors the config's backbone lacks (e.g. {extra[:2]})")
        if wrong:
            details.append(f"{len(wrong)} have other shapes (e.g. {wrong[:2]})")
        raise CheckpointError(
            f"weights file {path} is a {source} checkpoint of another backbone family than the config's "
            f"({backbone_name or 'MODEL.BACKBONE'}): {'; '.join(details)}. Use a checkpoint trained with the same "
            "MODEL.BACKBONE.NAME and MODEL.RESNETS/DENSENET/VGG settings")
    to_load, skipped = {}, list(rest) + later
    for k, v in mapped.items():
        if k in later:
            continue
        if k in own and tuple(v.shape) == tuple(own[k].shape):
            to_load[k] = v
        else:
            skipped.append(k)
    left = [k for k in own if k not in to_load]
    report = {"source": [source], "loaded": sorted(to_load), "not_loaded": sorted(skipped), "left_at_init": left}
    logger.info("classifier initialised from the %s checkpoint %s: loaded %d tensors (%s); not loaded from the file: "
                "%s; left at their initialisation: %s", source, path, len(to_load), _prefix_groups(sorted(to_load), 1),
                _prefix_groups(skipped), _prefix_groups(left, 1))
    return to_load, report
