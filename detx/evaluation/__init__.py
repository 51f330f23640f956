"""detx.evaluation: the VinBigData challenge metric, COCO numbers, FROC, image-level metrics, the detectron2 evaluator.

``VinBigDataEvaluator`` is imported lazily so that the metric functions do not pull in detectron2.
"""

from detx.evaluation.vinbigdata import vinbigdata_map, voc_ap

__all__ = ["vinbigdata_map", "voc_ap", "VinBigDataEvaluator"]


def __getattr__(name: str):
    if name == "VinBigDataEvaluator":
        from detx.evaluation.evaluator import VinBigDataEvaluator

        return VinBigDataEvaluator
    raise AttributeError(f"module 'detx.evaluation' has no attribute {name!r}")
