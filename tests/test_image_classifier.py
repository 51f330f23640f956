"""The image-level CNN classifier: model, evaluator, training, prediction, score scaling, evaluation of its CSV,
heatmaps and the pointing game, and its bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLS_TINY_CONFIG, TINY_CONFIG, TRAINED_CLS_OPTS, load_script, run_train_net
from sklearn.metrics import f1_score, recall_score, roc_auc_score

from detx.core.predictions import Predictions
from detx.core.submission import read_submission
from detx.evaluation.image_level import bootstrap_ci, classification_metrics
from detx.evaluation.pointing_game import Peak, pointing_game

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    return load_script(f"tools/{name}.py")


predict_tool, evaluate_tool, explain_tool = _tool("predict"), _tool("evaluate"), _tool("explain")


def _predict(*args) -> int:
    return predict_tool.main(predict_tool.parse_args(["--quiet", *[str(a) for a in args]]))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metric_rows(path: Path, key: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if key in r]


# ----------------------------------------------------------------------------------------- metrics

def test_classification_metrics_equal_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (80, 3))
    p = np.clip(0.4 * y + rng.random((80, 3)) * 0.7, 0, 1)
    m = classification_metrics(y, p, ["abnormal", "A", "B"], threshold=0.5, n_boot=100)
    pred = (p[:, 0] >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert m["f1"] == pytest.approx(f1_score(y[:, 0], pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y[:, 0], pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y[:, 0], 1 - pred))
    assert m["auc_per_class"] == pytest.approx({"A": roc_auc_score(y[:, 1], p[:, 1]), "B": roc_auc_score(y[:, 2], p[:, 2])})
    assert m["auc_macro"] == pytest.approx(np.mean(list(m["auc_per_class"].values())))
    lo, hi = m["ci"]["auc"]
    assert lo < m["auc"] < hi
    # the Youden threshold maximizes sensitivity + specificity - 1 over the data's own scores
    best = max(np.mean(p[y[:, 0] == 1, 0] >= t) + np.mean(p[y[:, 0] == 0, 0] < t) for t in p[:, 0])
    yj = classification_metrics(y, p, ["abnormal", "A", "B"], n_boot=0)
    assert yj["sensitivity"] + yj["specificity"] == pytest.approx(best)


def test_bootstrap_ci_is_deterministic_and_hand_checkable():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9])  # perfectly separated: every resample with both classes has AUC 1
    ci = bootstrap_ci(y, s, threshold=0.5, n_boot=200, seed=1)
    assert ci["auc"] == (1.0, 1.0) and ci["sensitivity"] == (1.0, 1.0) and ci["specificity"] == (1.0, 1.0)
    assert bootstrap_ci(y, s, 0.5, 50, seed=7) == bootstrap_ci(y, s, 0.5, 50, seed=7)


# ----------------------------------------------------------------------------------------- model

def test_model_loss_and_batched_equals_masked_single():
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    cfg = get_detx_cfg(CLS_TINY_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "FrozenBN"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model).__name__ == "DetxClassifier" and model.num_outputs == 15
    a = {"image": torch.rand(3, 64, 48) * 255, "cls_targets": torch.zeros(15)}
    b = {"image": torch.rand(3, 40, 64) * 255, "cls_targets": torch.ones(15)}
    model.train()
    loss = model([a, b])["loss_cls"]
    with torch.no_grad():
        logits = model.logits_from_tensor(model.preprocess_image([a, b]).tensor,
                                          model.preprocess_image([a, b]).image_sizes)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.stack([a["cls_targets"],
                                                                                          b["cls_targets"]]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    model.eval()
    with torch.no_grad():
        both = model([a, b])
        images = model.preprocess_image([a, b])
        fmap = model.features(images.tensor)  # (2, C, 2, 2) for a padded 64x64 batch at stride 32
        # b is 40x64: its own area is ceil(40/32) x ceil(64/32) = 2 x 2 cells; a is 64x48: 2 x 2 as well, but with
        # a 48 px wide image in a 64 px batch only... the mask follows the image sizes exactly:
        own_b = fmap[1, :, :2, :2].mean(dim=(1, 2))
        own_a = fmap[0, :, :2, :2].mean(dim=(1, 2))
        expected = torch.sigmoid(model.head(torch.stack([own_a, own_b])))
    assert both[0]["cls_probs"].shape == (15,)
    torch.testing.assert_close(torch.stack([both[0]["cls_probs"], both[1]["cls_probs"]]), expected)
    # a small image in a big batch: the padding cells are left out of its average
    c = {"image": torch.rand(3, 20, 20) * 255}
    with torch.no_grad():
        images = model.preprocess_image([a, c])
        fmap = model.features(images.tensor)
        only_c = torch.sigmoid(model.head(fmap[1, :, :1, :1].mean(dim=(1, 2))))
        got = model([a, c])[1]["cls_probs"]
    torch.testing.assert_close(got, only_c)


def test_densenet_backbone_loads_torchvision_weights(tmp_path):
    import torchvision
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    torch.manual_seed(0)
    ref = torchvision.models.densenet121(weights=None)
    state = dict(ref.state_dict())
    # torchvision's released files use the old "norm.1" names
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in state.items()}
    torch.save(old, tmp_path / "densenet121.pth")
    cfg = get_detx_cfg(str(ROOT / "configs/classification/vindr_cxr_densenet121.yaml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.DENSENET.WEIGHTS", str(tmp_path / "densenet121.pth")])
    model = build_model(cfg)
    got = model.backbone.body.state_dict()
    for k, v in ref.features.state_dict().items():
        assert torch.equal(got[k], v), k
    assert model.num_outputs == 15 and model.head.in_features == 1024


# ----------------------------------------------------------------------------------------- training

@pytest.mark.slow
def test_training_writes_cls_rows_val_loss_and_best_checkpoint(trained_cls_dir):
    metrics = trained_cls_dir / "metrics.json"
    cls_rows = _metric_rows(metrics, "cls/auc")
    assert [r["iteration"] for r in cls_rows] == [3, 8]  # detectron2 EvalHook: after iteration 4, and at the end
    assert all({"cls/f1", "cls/sensitivity", "cls/specificity", "cls/threshold", "cls/auc_ci_low",
                "cls/auc_macro", "cls/auc-Cardiomegaly"} <= set(r) for r in cls_rows)
    assert [r["iteration"] for r in _metric_rows(metrics, "val_total_loss")] == [3, 8]
    best = json.loads((trained_cls_dir / "model_best.json").read_text())
    assert best["metric"] == "cls/auc" and (trained_cls_dir / "model_best.pth").is_file()
    assert best["value"] == pytest.approx(max(r["cls/auc"] for r in cls_rows))
    cfg_text = (trained_cls_dir / "config.yaml").read_text()
    assert "DetxClassifier" in cfg_text and "IMAGE_SIZE: 128" in cfg_text
    assert "training finished: best cls/auc" in (trained_cls_dir / "train_stdout.txt").read_text()


@pytest.mark.slow
def test_resume_continues_the_classifier(trained_cls_dir, prepared_cxr_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_cls_dir, out)
    run_train_net("--config-file", CLS_TINY_CONFIG, "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out,
                  *TRAINED_CLS_OPTS, "SOLVER.MAX_ITER", "10", "--resume")
    assert "Starting training from iteration 8" in (out / "log.txt").read_text()
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["iteration"] == 9


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(prepared_cxr_dir, tmp_path):
    opts = [*TRAINED_CLS_OPTS, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2", "DETX.VAL_PERIOD", "2",
            "SOLVER.CHECKPOINT_PERIOD", "2"]
    run_train_net("--config-file", CLS_TINY_CONFIG, "--num-gpus", "2", "DETX.DATA_ROOT", prepared_cxr_dir,
                  "OUTPUT_DIR", tmp_path, *opts)
    assert [r["iteration"] for r in _metric_rows(tmp_path / "metrics.json", "cls/auc")] == [2]
    n_val = len(json.loads((prepared_cxr_dir / "annotations" / "val_fold0.json").read_text())["images"])
    assert len(_rows(tmp_path / "inference" / "classification.csv")) == n_val  # both shards gathered


def test_bad_training_inputs(prepared_cxr_dir, tmp_path):
    from detx.engine.config import get_detx_cfg
    from detx.engine.trainer import TrainingSetupError, prepare_training
    from detx.workflows.prepare import prepare_dataset

    def cfg(*opts):
        return get_detx_cfg(CLS_TINY_CONFIG, ["DETX.DATA_ROOT", str(prepared_cxr_dir), "OUTPUT_DIR", str(tmp_path),
                                              *opts], freeze=False)

    with pytest.raises(TrainingSetupError, match=r"MODEL.CLASSIFIER.NUM_CLASSES is 7 but dataset .* has 14"):
        prepare_training(cfg("MODEL.CLASSIFIER.NUM_CLASSES", "7"))
    prepare_training(cfg("MODEL.CLASSIFIER.NUM_CLASSES", "0"))  # normal/abnormal only: any vocabulary
    # a test split (no --csv) has no image-level labels
    test_root = tmp_path / "test_prepared"
    raw = prepared_cxr_dir / "meta.csv"
    import pandas as pd

    dicom_dir = Path(pd.read_csv(raw)["dicom_path"].iloc[0]).parent
    prepare_dataset(dataset="vindr-cxr", dicom_dir=dicom_dir, out=test_root, size=64, workers=1, progress=False)
    c = get_detx_cfg(CLS_TINY_CONFIG, ["DETX.DATA_ROOT", str(test_root), "DATASETS.TRAIN", "('vindr_cxr_test',)",
                                       "DATASETS.TEST", "()"], freeze=False)
    with pytest.raises(TrainingSetupError, match="needs image-level labels"):
        prepare_training(c)


# ----------------------------------------------------------------------------------------- prediction

@pytest.mark.slow
def test_predict_no_finding_is_one_minus_the_classifier(trained_cls_dir, tiny_random_checkpoint, prepared_cxr_dir,
                                                         tmp_path):
    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedClassifier, collect_inputs, load_image
    from detx.inference.tta import TTAView

    det_cfg, det_w = tiny_random_checkpoint
    cls_cfg, cls_w = trained_cls_dir / "config.yaml", trained_cls_dir / "model_best.pth"
    val = prepared_cxr_dir / "annotations" / "val_fold0.json"
    sub, cls = tmp_path / "sub.csv", tmp_path / "cls.csv"
    assert _predict("--config-file", det_cfg, "--weights", det_w, "--classifier-config", cls_cfg,
                    "--classifier-weights", cls_w, "--input", val, "--out", sub, "--classification-out", cls,
                    "--tta", "hflip", "--batch-size", "1",  # one image per pass: no padding, exact comparison
                    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128") == 0
    rows = {r["image_id"]: r for r in _rows(cls)}
    submission = read_submission(sub)
    # the classifier's own probabilities, averaged over the identity and hflip views
    model = BatchedClassifier(get_detx_cfg(str(cls_cfg)), cls_w)
    for rec in collect_inputs(val).images:
        img = load_image(rec, "BGR", 128)
        p = np.mean([model([img.image], [img.orig_size], v)[0] for v in (TTAView(), TTAView(hflip=True))], axis=0)
        assert float(rows[rec.image_id]["p_abnormal"]) == pytest.approx(p[0], rel=1e-4, abs=1e-6)
        assert float(rows[rec.image_id]["p_Cardiomegaly"]) == pytest.approx(p[4], rel=1e-4, abs=1e-6)
        nf = submission[rec.image_id]
        assert nf.scores[nf.classes == 14][0] == pytest.approx(1 - p[0], abs=2e-6)
    # the classifier alone writes only the classification CSV
    only = tmp_path / "only.csv"
    assert _predict("--classifier-config", cls_cfg, "--classifier-weights", cls_w, "--input", val,
                    "--classification-out", only, "--tta", "hflip", "--batch-size", "1") == 0
    assert [r["p_abnormal"] for r in _rows(only)] == [r["p_abnormal"] for r in _rows(cls)]
    # and evaluate.py reads it: image-level metrics with intervals, per-class AUCs
    out = tmp_path / "m.json"
    assert evaluate_tool.main(evaluate_tool.get_parser().parse_args(["--gt", str(val), "--pred", str(only),
                                                                     "--out", str(out)])) == 0
    m = json.loads(out.read_text())
    assert m["kind"] == "classification" and {"auc", "f1", "sensitivity", "specificity", "threshold", "ci",
                                              "auc_per_class"} <= set(m["image_level"])


def test_score_scaling_hand_computed():
    from detx.workflows.predict import scale_scores

    pred = Predictions([[0, 0, 5, 5], [1, 1, 6, 6], [0, 0, 1, 1]], [0.8, 0.5, 0.3], [0, 2, 3])
    probs = np.array([0.9, 0.5, 0.1, 0.25])  # abnormal, then classes 0, 1, 2
    out = scale_scores(pred, probs)
    np.testing.assert_allclose(out.scores, [0.8 * 0.5, 0.5 * 0.25, 0.3])  # class 3 (No finding) unchanged
    np.testing.assert_array_equal(out.boxes, pred.boxes)


@pytest.mark.slow
def test_checkpoints_of_the_other_kind_are_refused(trained_cls_dir, tiny_random_checkpoint, png_dir_cls, tmp_path,
                                                    capsys):
    det_cfg, det_w = tiny_random_checkpoint
    cls_cfg, cls_w = trained_cls_dir / "config.yaml", trained_cls_dir / "model_best.pth"
    assert _predict("--classifier-config", cls_cfg, "--classifier-weights", det_w, "--input", png_dir_cls,
                    "--classification-out", tmp_path / "a.csv") == 2
    assert "is a detector's checkpoint, not an image classifier's" in capsys.readouterr().err
    assert _predict("--config-file", det_cfg, "--weights", cls_w, "--input", png_dir_cls, "--out", tmp_path / "b.csv") == 2
    assert "is an image classifier's checkpoint, not a detector's" in capsys.readouterr().err
    assert _predict("--config-file", cls_cfg, "--weights", cls_w, "--input", png_dir_cls, "--out", tmp_path / "c.csv") == 2
    assert "is an image classifier, not a detector" in capsys.readouterr().err
    assert _predict("--config-file", det_cfg, "--weights", det_w, "--classifier-config", TINY_CONFIG,
                    "--classifier-weights", det_w, "--input", png_dir_cls, "--out", tmp_path / "d.csv") == 2
    assert "is a detector, not an image classifier" in capsys.readouterr().err
    assert not any((tmp_path / f"{n}.csv").exists() for n in "abcd")


@pytest.fixture
def png_dir_cls(tmp_path):
    import cv2

    d = tmp_path / "pngs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        cv2.imwrite(str(d / f"im{k}.png"), rng.integers(0, 255, (96, 80, 3), dtype=np.uint8))
    (tmp_path / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\n"
                                       + "".join(f"im{k},800,960,80,96\n" for k in range(2)))  # known original sizes
    return d


def test_evaluate_refuses_a_classification_csv_missing_images(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                     "a,Cardiomegaly,3,R1,1,1,5,5\nb,No finding,14,R1,,,,\nc,No finding,14,R1,,,,\n")
    (tmp_path / "cls.csv").write_text("image_id,p_abnormal,label\na,0.9,1\nb,0.2,0\n")
    rc = evaluate_tool.main(evaluate_tool.get_parser().parse_args(["--gt", str(tmp_path / "gt.csv"), "--pred",
                                                                   str(tmp_path / "cls.csv")]))
    assert rc == 2 and "no probability for 1 image(s)" in capsys.readouterr().err
    (tmp_path / "cls.csv").write_text("image_id,p_abnormal,label,p_Cardiomegaly\na,0.9,1,0.8\nb,0.2,0,0.1\n"
                                      "c,0.4,0,0.3\n")
    out = tmp_path / "m.json"
    assert evaluate_tool.main(evaluate_tool.get_parser().parse_args(["--gt", str(tmp_path / "gt.csv"), "--pred",
                                                                     str(tmp_path / "cls.csv"), "--out",
                                                                     str(out)])) == 0
    il = json.loads(out.read_text())["image_level"]
    assert il["auc"] == 1.0 and il["auc_per_class"] == {"Cardiomegaly": 1.0} and il["threshold"] == 0.9


# ----------------------------------------------------------------------------------------- heatmaps

def test_pointing_game_hand_computed():
    classes = ["A", "B"]
    gt = {"i1": (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 1])),
          "i2": (np.array([[50, 50, 60, 60]]), np.array([1])),
          "i3": (np.zeros((0, 4)), np.zeros(0, int))}  # normal: not counted
    peaks = [Peak("i1", "abnormal", 25, 25), Peak("i2", "abnormal", 10, 10), Peak("i3", "abnormal", 1, 1)]
    g = pointing_game(peaks, gt, classes)
    assert g["pointing_game"] == 0.5 and g["num_images"] == 2 and g["hits"] == 1
    # per class: A on i1 (peak in the B box, not the A box): 0/1; B on i1 (hit) and i2 (miss): 1/2
    assert g["per_class"] == {"A": {"pointing_game": 0.0, "num_images": 1, "hits": 0},
                              "B": {"pointing_game": 0.5, "num_images": 2, "hits": 1}}
    assert pointing_game(peaks, None, classes)["pointing_game"] is None
    edge = pointing_game([Peak("i1", "A", 10, 0)], gt, classes)  # on the box edge: inside
    assert edge["pointing_game"] == 1.0


def test_peak_in_original_pixels():
    from detx.workflows.explain import peak_in_original

    heat = np.zeros((4, 8))
    heat[1, 6] = 1.0  # pixel centre (6.5, 1.5) of an 8x4 map; the original is 80x40
    assert peak_in_original(heat, (80, 40)) == pytest.approx((65.0, 15.0))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "deeplift", "integrated-gradients"])
def test_heatmaps_have_the_image_shape_and_a_pointing_game(trained_cls_dir, prepared_cxr_dir, tmp_path, method):
    from detx.engine.config import get_detx_cfg
    from detx.inference.attribution import Explainer
    from detx.inference.predictor import collect_inputs, load_image

    val = prepared_cxr_dir / "annotations" / "val_fold0.json"
    explainer = Explainer(get_detx_cfg(str(trained_cls_dir / "config.yaml")), trained_cls_dir / "model_best.pth",
                          method, ig_steps=4)
    rec = collect_inputs(val).images[0]
    img = load_image(rec, "BGR", 128)
    (heat,), probs = explainer.explain(img.image, [0])
    assert heat.shape == img.image.shape[:2] and np.isfinite(heat).all() and heat.std() > 0  # 128 px test size = PNG
    assert probs.shape == (15,)
    out = tmp_path / "heat"
    args = ["--config-file", str(trained_cls_dir / "config.yaml"), "--weights", str(trained_cls_dir / "model_best.pth"),
            "--input", str(val), "--out", str(out), "--method", method, "--max-images", "4", "--quiet"]
    assert explain_tool.main(explain_tool.parse_args(args)) == 0
    rows = _rows(out / "heatmaps.csv")
    assert len(rows) == 4 and len(list(out.glob("*.png"))) == 4
    summary = json.loads((out / "summary.json").read_text())
    labelled = [r for r in rows if r["hit"] != ""]
    assert summary["num_labelled"] == len(labelled)
    if labelled:
        assert summary["pointing_game"] == pytest.approx(np.mean([int(r["hit"]) for r in labelled]))


@pytest.mark.slow
def test_explain_refuses_an_unknown_class_and_a_detector(trained_cls_dir, tiny_random_checkpoint, prepared_cxr_dir,
                                                         tmp_path, capsys):
    val = str(prepared_cxr_dir / "annotations" / "val_fold0.json")
    args = ["--config-file", str(trained_cls_dir / "config.yaml"), "--weights", str(trained_cls_dir / "model_best.pth"),
            "--input", val, "--out", str(tmp_path / "o"), "--class", "Nope", "--quiet"]
    assert explain_tool.main(explain_tool.parse_args(args)) == 2
    assert "--class 'Nope' is not an output of this classifier" in capsys.readouterr().err
    det_cfg, det_w = tiny_random_checkpoint
    args = ["--config-file", det_cfg, "--weights", str(det_w), "--input", val, "--out", str(tmp_path / "p")]
    assert explain_tool.main(explain_tool.parse_args(args)) == 2
    assert "not an image classifier" in capsys.readouterr().err


def test_physionet_image_labels_as_the_multi_label_target():
    from detx.core.classes import VINDR_CXR_GLOBAL_LABELS, VINDR_CXR_LOCAL_LABELS
    from detx.core.prepared import image_level_targets
    from detx.engine.config import get_detx_cfg
    from detx.engine.mapper import DetxDatasetMapper

    cfg = get_detx_cfg(str(ROOT / "configs/classification/vindr_cxr_physionet_labels_R_50.yaml"))
    names = list(cfg.MODEL.CLASSIFIER.IMAGE_LABELS)
    assert names == [*VINDR_CXR_LOCAL_LABELS, *VINDR_CXR_GLOBAL_LABELS] and cfg.MODEL.CLASSIFIER.NUM_CLASSES == 28
    record = {"image_uid": "a", "abnormal": 1, "image_labels": {"COPD": 1, "Pneumonia": 0, "Lung tumor": 1},
              "annotations": [{"category_id": 3, "bbox": [0, 0, 2, 2], "bbox_mode": 1}]}
    t = image_level_targets(record, 28, names)
    expected = np.zeros(29, np.float32)
    expected[0] = 1
    expected[1 + names.index("COPD")] = expected[1 + names.index("Lung tumor")] = 1  # boxes do not count here
    np.testing.assert_array_equal(t, expected)
    with pytest.raises(Exception, match="has no image_labels"):
        image_level_targets({"abnormal": 0}, 28, names)
    mapper = DetxDatasetMapper(cfg, is_train=True)
    assert mapper.label_names == names and mapper.image_targets == 28


def test_a_map_without_positive_evidence_still_points():
    """Grad-CAM's ReLU can leave nothing; the peak is the raw map's maximum, not the first pixel of a zero map."""
    from detx.viz.heatmap import draw_heatmap
    from detx.workflows.explain import peak_in_original

    heat = -np.ones((4, 8))
    heat[2, 5] = -0.1  # the least negative cell: where the model points
    assert peak_in_original(heat, (80, 40)) == pytest.approx((55.0, 25.0))
    picture = draw_heatmap(np.zeros((40, 80), np.uint8), heat, (80, 40), min_side=0)
    assert picture.shape == (40, 80, 3) and picture.std() > 0  # drawn, not blank


@pytest.mark.parametrize("pool", ["avg", "max", "lse"])
def test_cam_pooling_hand_computed(pool):
    """MODEL.CLASSIFIER.POOL: the linear head at every cell of each image's own area, pooled by the mean (= the head
    on the average feature), the maximum or (1/r) log mean exp(r s); the padding of a batch never counts."""
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    cfg = get_detx_cfg(CLS_TINY_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "FrozenBN",
                                         "MODEL.CLASSIFIER.POOL", pool, "MODEL.CLASSIFIER.LSE_R", "2.0"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    a = {"image": torch.rand(3, 64, 96) * 255}
    b = {"image": torch.rand(3, 40, 30) * 255}  # 2 x 1 cells of its own in a 2 x 3 padded map (stride 32)
    with torch.no_grad():
        images = model.preprocess_image([a, b])
        fmap = model.features(images.tensor)
        probs = torch.stack([o["cls_probs"] for o in model([a, b])])
        own = [fmap[0].flatten(1), fmap[1, :, :2, :1].flatten(1)]  # (C, cells) per image
        w, bias = model.head.weight, model.head.bias
        expected = []
        for f in own:
            s = w @ f + bias[:, None]  # (outputs, cells): the class activation map, by hand
            if pool == "avg":
                expected.append(model.head(f.mean(1)))
            elif pool == "max":
                expected.append(s.max(1).values)
            else:
                expected.append((torch.log(torch.exp(2.0 * s.double()).mean(1)) / 2.0).float())
        expected = torch.stack(expected)
        torch.testing.assert_close(probs, torch.sigmoid(expected), rtol=1e-4, atol=1e-5)
        # the activation map averages to the average-pooled score (the head is linear)
        torch.testing.assert_close((w @ own[0] + bias[:, None]).mean(1), model.head(own[0].mean(1)), rtol=1e-4,
                                   atol=1e-5)
    model.train()
    loss = model([{**a, "cls_targets": torch.ones(15)}, {**b, "cls_targets": torch.zeros(15)}])["loss_cls"]
    target = torch.stack([torch.ones(15), torch.zeros(15)])
    want = torch.nn.functional.binary_cross_entropy_with_logits(expected, target)
    assert float(loss) == pytest.approx(float(want), rel=1e-4)


def test_cam_pooling_bad_settings():
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    base = ["MODEL.DEVICE", "cpu"]
    for opts, words in ((["MODEL.CLASSIFIER.POOL", "mean"], "not one of"),
                        (["MODEL.CLASSIFIER.POOL", "lse", "MODEL.CLASSIFIER.HEAD", "mlgcn"], "linear head"),
                        (["MODEL.CLASSIFIER.POOL", "max", "MODEL.CLASSIFIER.LOSS", "supcon"], "average-pooled"),
                        (["MODEL.CLASSIFIER.POOL", "lse", "MODEL.CLASSIFIER.LSE_R", "0.0"], "> 0")):
        with pytest.raises(ValueError, match=words):
            build_model(get_detx_cfg(CLS_TINY_CONFIG, base + opts))
