"""VinBigDataEvaluator inside detectron2's inference_on_dataset, with a fake model and a registered dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.structures import Boxes, BoxMode, Instances

from detx.core.predictions import Predictions
from detx.core.submission import read_submission
from detx.evaluation.coco_map import coco_metrics
from detx.evaluation.evaluator import VinBigDataEvaluator

# PNG frame 200 x 100, original 400 x 200: everything scales by 2 to original pixels.
DICTS = [
    {"image_id": 1, "image_uid": "normal", "file_name": "normal.png", "width": 200, "height": 100,
     "orig_width": 400, "orig_height": 200, "annotations": []},
    {"image_id": 2, "image_uid": "sick_a", "file_name": "a.png", "width": 200, "height": 100,
     "orig_width": 400, "orig_height": 200,
     "annotations": [{"bbox": [10, 10, 40, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}]},
    {"image_id": 3, "image_uid": "sick_b", "file_name": "b.png", "width": 200, "height": 100,
     "orig_width": 400, "orig_height": 200,
     "annotations": [{"bbox": [100, 20, 150, 60], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1, "iscrowd": 0}]},
]
# per image: (boxes in the 200 x 100 frame, scores, classes)
OUTPUTS = {
    1: ([], [], []),
    2: ([[10, 10, 50, 50]], [0.9], [0]),
    # IoU 15/40 < 0.4 ranked first (FP), then the exact box (TP): AP 1/2
    3: ([[100, 20, 150, 35], [100, 20, 150, 60]], [0.7, 0.6], [1, 1]),
}


class FakeModel(torch.nn.Module):
    def forward(self, inputs):
        outs = []
        for inp in inputs:
            boxes, scores, classes = OUTPUTS[inp["image_id"]]
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
            outs.append({"instances": inst})
        return outs


@pytest.fixture
def dataset_name():
    name = "detx_test_evaluator_tiny"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in DICTS])
    MetadataCatalog.get(name).set(thing_classes=["Aortic enlargement", "Nodule/Mass"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _loader():
    return [[{"image_id": d["image_id"], "height": d["height"], "width": d["width"]}] for d in DICTS]


def test_evaluator_in_inference_on_dataset(dataset_name, tmp_path):
    ev = VinBigDataEvaluator(dataset_name, output_dir=str(tmp_path), distributed=True)
    results = inference_on_dataset(FakeModel(), _loader(), ev)
    vb = results["vinbigdata"]
    # class 0: 1.0; class 1: 0.5; No finding: the normal image has score 1 - 0 = 1 (TP, ranked first): 1.0
    assert vb["AP40-Aortic enlargement"] == pytest.approx(1.0)
    assert vb["AP40-Nodule/Mass"] == pytest.approx(0.5)
    assert vb["AP40-No finding"] == pytest.approx(1.0)
    assert vb["mAP40"] == pytest.approx(2.5 / 3)
    flat = flatten_results_dict(results)
    assert "vinbigdata/mAP40" in flat and "bbox/AP" in flat and "bbox/AP40" in flat
    assert all(isinstance(float(v), float) for v in flat.values())

    # COCO numbers equal coco_metrics on the same boxes in original pixels, in percent
    gt = {"1": (np.zeros((0, 4)), np.zeros(0, int)), "2": (np.array([[20, 20, 100, 100.0]]), np.array([0])),
          "3": (np.array([[200, 40, 300, 120.0]]), np.array([1]))}
    preds = {str(k): Predictions(np.asarray(b, float).reshape(-1, 4) * 2, s, c) for k, (b, s, c) in OUTPUTS.items()}
    ref = coco_metrics(gt, preds, num_classes=2)
    assert results["bbox"]["AP"] == pytest.approx(100 * ref["AP"])
    assert results["bbox"]["AP-Nodule/Mass"] == pytest.approx(100 * ref["AP_per_class"][1])
    assert results["bbox"]["AP40"] == pytest.approx(100 * ref["coco_mAP40"])

    # the written submission is in original pixels, with the image_uid names and the No-finding entry
    sub = read_submission(tmp_path / "vinbigdata_predictions.csv", image_ids=["normal", "sick_a", "sick_b"])
    assert sub["sick_a"].boxes[0].tolist() == [20, 20, 100, 100]
    assert sub["normal"].classes.tolist() == [2] and sub["normal"].scores.tolist() == [1.0]
    assert sub["sick_a"].scores[sub["sick_a"].classes == 2] == pytest.approx(0.1)


def test_evaluator_reset_and_no_predictions(dataset_name):
    ev = VinBigDataEvaluator(dataset_name, distributed=False)
    ev.reset()
    assert ev.evaluate() == {}
    # a second round after reset only sees its own images
    ev.process([{"image_id": 2, "height": 100, "width": 200}], FakeModel()([{"image_id": 2, "height": 100,
                                                                              "width": 200}]))
    r = ev.evaluate()
    assert r["vinbigdata"]["AP40-Aortic enlargement"] == 1.0
    assert np.isnan(r["vinbigdata"]["AP40-Nodule/Mass"]) and np.isnan(r["vinbigdata"]["AP40-No finding"])
    ev.reset()
    assert ev.evaluate() == {}


class OracleModel(torch.nn.Module):
    """Ground-truth boxes of the dataset dicts (PNG pixels) slightly jittered, scored above 3 random boxes per
    image: in the right frame every AP is 1, in a wrong one the boxes miss."""

    def __init__(self, dicts):
        super().__init__()
        self.dicts = {d["image_id"]: d for d in dicts}

    def forward(self, inputs):
        outs = []
        for inp in inputs:
            d = self.dicts[inp["image_id"]]
            rng = np.random.default_rng(int(inp["image_id"]))
            gt = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
            boxes = np.asarray(gt, float).reshape(-1, 4) + rng.normal(0, 0.5, (len(gt), 4))
            classes = [a["category_id"] for a in d["annotations"]]
            junk = rng.uniform(0, 60, (3, 2))
            boxes = np.vstack([boxes, np.hstack([junk, junk + 30])]) * (inp["height"] / d["height"])
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            scores = np.r_[rng.uniform(0.6, 1, len(gt)), rng.uniform(0.05, 0.5, 3)]
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.tensor([*classes, *rng.integers(0, 14, 3)], dtype=torch.int64)
            outs.append({"instances": inst})
        return outs


@pytest.mark.slow
def test_prepared_dataset_through_the_test_loader_agrees_with_the_cli(prepared_cxr_dir, tmp_path):
    """The trainer's test loader over a prepared split (PNG sizes differ from the originals per image): the
    evaluator's numbers equal tools/evaluate.py's on the submission it writes, against the same prepared
    JSON read back in original pixels."""
    from conftest import TINY_CONFIG

    from detx.engine.config import get_detx_cfg
    from detx.engine.datasets import register_prepared_dataset
    from detx.engine.trainer import Trainer
    from detx.workflows.evaluate import evaluate_files

    names = register_prepared_dataset(prepared_cxr_dir)
    name = next(n for n in names if n.endswith("val_fold0"))
    cfg = get_detx_cfg(TINY_CONFIG, ["MODEL.DEVICE", "cpu"])
    ev = VinBigDataEvaluator(name, output_dir=str(tmp_path), distributed=False)
    results = inference_on_dataset(OracleModel(DatasetCatalog.get(name)), Trainer.build_test_loader(cfg, name), ev)
    json_file = MetadataCatalog.get(name).json_file
    cli = evaluate_files(json_file, tmp_path / "vinbigdata_predictions.csv", strict=True).metrics
    assert cli["num_images"] == len(DatasetCatalog.get(name))
    assert cli["mAP40"] == pytest.approx(1.0)  # boxes in the right place, in original pixels
    assert results["vinbigdata"]["mAP40"] == pytest.approx(cli["mAP40"], abs=1e-6)
    for cls, ap in cli["AP_per_class"].items():
        ours = results["vinbigdata"][f"AP40-{cls}"]
        assert (np.isnan(ours) and ap is None) or ours == pytest.approx(ap, abs=1e-6)
    assert results["bbox"]["AP40"] == pytest.approx(100 * cli["coco_mAP40"], abs=1e-4)
    assert results["bbox"]["AP"] == pytest.approx(100 * cli["coco"]["AP"], abs=1e-4)
