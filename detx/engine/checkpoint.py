"""The one check of a weights file: it exists, torch can read it, and it fits the config's model.

detectron2's checkpointer only warns on shape mismatches and leaves those layers random; training and
prediction call these checks first so that a wrong file stops with a message naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from detx.core.errors import InputError

__all__ = ["CheckpointError", "check_checkpoint", "check_weights_file", "read_state_dict"]


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


def check_checkpoint(model: torch.nn.Module, path: str | os.PathLike, num_classes: int,
                     num_classes_key: str = "MODEL.ROI_HEADS.NUM_CLASSES") -> None:
    """Fail early on weights that cannot be this model's: missing file, another class count, other shapes.

    detectron2's checkpointer only warns on shape mismatches and leaves those layers random.
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
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if cls_key in state and tuple(state[cls_key].shape)[0] != num_classes + 1:
        raise CheckpointError(
            f"weights file {path} was trained for {tuple(state[cls_key].shape)[0] - 1} classes but the config has "
            f"{num_classes_key} {num_classes}")
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"weights file {path} does not fit the config's model: {len(wrong)} shape "
                              f"mismatch(es), e.g. {wrong[:3]}")
    if not any(k in own for k in state):
        raise CheckpointError(f"weights file {path} shares no parameter name with the config's model")
