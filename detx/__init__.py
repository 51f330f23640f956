"""detx: Detectron2-based detection of abnormalities on chest and spine X-rays.

``from detx import XrayPredictor`` (and ``predict_binary``, ``ImageAnswer``): the one-image API of
:mod:`detx.workflows.one_image`, imported on first use so that ``import detx`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"XrayPredictor": "detx.workflows.one_image", "predict_binary": "detx.workflows.one_image",
         "ImageAnswer": "detx.inference.answer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
