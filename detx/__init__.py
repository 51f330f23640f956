"""detx: Detectron2-based detection of abnormalities on chest and spine X-rays."""

__version__ = "0.1.0"
