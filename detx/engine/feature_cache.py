"""Frozen-feature training: the pooled backbone features of every image computed once and kept in a file, so that a
classifier head on a frozen backbone (``MODEL.CLASSIFIER.FREEZE_BACKBONE``) trains in seconds.

The file (``MODEL.CLASSIFIER.FEATURE_CACHE``) holds the features by image file name and the key they were computed
under, in three parts:

- ``weights``: SHA-256 of the backbone's state dict (every tensor's name, dtype, shape and bytes, buffers included);
- ``images``: SHA-256 of the sorted image files (path, size in bytes, modification time in ns);
- ``preprocessing``: SHA-256 of the config that decides the backbone's input and output (``INPUT.FORMAT``,
  ``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``, ``MODEL.PIXEL_MEAN/STD``, ``MODEL.BACKBONE.NAME``,
  ``MODEL.CLASSIFIER.IN_FEATURE``).

A missing file is computed and written (atomically); a file of the same key is reused; a file of another key (other
weights, images or preprocessing: it is stale) is refused with :class:`FeatureCacheError`, naming what changed,
before any training step, so nothing is trained on stale features. The features are those of the test-time resize
without augmentation: a head trained on them sees each image the same way every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode

from detx.core.errors import InputError
from detx.core.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["FeatureCacheError", "cache_key_parts", "compute_features", "load_or_build_features"]

#: the config keys whose values decide what the backbone sees and returns
PREPROCESSING_KEYS = ("INPUT.FORMAT", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "MODEL.PIXEL_MEAN",
                      "MODEL.PIXEL_STD", "MODEL.BACKBONE.NAME", "MODEL.CLASSIFIER.IN_FEATURE")
CACHE_VERSION = 1


class FeatureCacheError(InputError):
    """A feature cache computed from other weights, images or preprocessing than the run's (stale), or unreadable."""


def _sha(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _weights_chunks(state: dict[str, torch.Tensor]) -> Iterable[bytes]:
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        yield f"{name}|{t.dtype}|{tuple(t.shape)}|".encode()
        yield t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _cfg_value(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def cache_key_parts(backbone_state: dict[str, torch.Tensor], file_names: Iterable[str], cfg: CfgNode
                    ) -> dict[str, str]:
    """The three hashes that key a feature cache (see the module docstring).

    Raises:
        FeatureCacheError: an image file does not exist.
    """
    files = []
    for f in sorted(set(file_names)):
        try:
            st = os.stat(f)
        except OSError as e:
            raise FeatureCacheError(f"cannot key the feature cache: image {f} cannot be read ({e})") from e
        files.append(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    prep = json.dumps({k: _cfg_value(cfg, k) for k in PREPROCESSING_KEYS}, sort_keys=True)
    return {"weights": _sha(_weights_chunks(backbone_state)), "images": _sha(files),
            "preprocessing": _sha([prep.encode()])}


@torch.no_grad()
def compute_features(model: torch.nn.Module, dataset_dicts: list[dict[str, Any]],
                     load: Callable[[dict[str, Any]], dict[str, Any]], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Pooled features (``model.pooled_from_tensor``, padding masked) of every image, by file name; ``load`` maps a
    dataset dict to the model input (the test-time mapper). The model is in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    out: dict[str, torch.Tensor] = {}
    try:
        for i in range(0, len(dataset_dicts), batch_size):
            batch = [load(d) for d in dataset_dicts[i: i + batch_size]]
            images = model.preprocess_image(batch)
            pooled = model.pooled_from_tensor(images.tensor, images.image_sizes).float().cpu()
            for d, f in zip(dataset_dicts[i: i + batch_size], pooled):
                out[d["file_name"]] = f.clone()
    finally:
        model.train(was_training)
    return out


def load_or_build_features(path: str | os.PathLike, model: torch.nn.Module, dataset_dicts: list[dict[str, Any]],
                           load: Callable[[dict[str, Any]], dict[str, Any]], cfg: CfgNode
                           ) -> tuple[dict[str, torch.Tensor], bool]:
    """The features of ``dataset_dicts`` from the cache file ``path`` when its key matches, else computed and
    written there. Returns the features by file name and whether the file was reused.

    Raises:
        FeatureCacheError: ``path`` holds features of another key (stale: the parts that differ are named) or is not a
            feature cache.
    """
    path = Path(path)
    parts = cache_key_parts(model.backbone.state_dict(), (d["file_name"] for d in dataset_dicts), cfg)
    if path.exists():
        try:
            held = torch.load(path, map_location="cpu", weights_only=True)
            held_parts, feats = dict(held["key"]), dict(held["features"])
        except Exception as e:  # noqa: BLE001 - any unreadable file is not a cache
            raise FeatureCacheError(f"MODEL.CLASSIFIER.FEATURE_CACHE {path} is not a detx feature cache "
                                    f"({type(e).__name__}: {e}): delete it or choose another file") from e
        changed = [k for k in parts if held_parts.get(k) != parts[k]]
        if changed:
            what = {"weights": "other backbone weights (MODEL.WEIGHTS or the backbone's own weights)",
                    "images": "other image files (another dataset or fold, or images written again)",
                    "preprocessing": f"other preprocessing ({', '.join(PREPROCESSING_KEYS)})"}
            raise FeatureCacheError(
                f"MODEL.CLASSIFIER.FEATURE_CACHE {path} is stale: it was computed with "
                f"{'; '.join(what[k] for k in changed)}. Nothing was trained on it: delete it to compute the "
                "features again, or choose another file")
        logger.info("frozen features: reusing %s (%d images, key %s/%s/%s)", path, len(feats),
                    parts["weights"][:12], parts["images"][:12], parts["preprocessing"][:12])
        return feats, True
    feats = compute_features(model, dataset_dicts, load)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"version": CACHE_VERSION, "key": parts, "features": feats}, tmp)
    logger.info("frozen features: computed %d images -> %s", len(feats), path)
    return feats, False
