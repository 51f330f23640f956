"""RetinaNet and Cascade R-CNN through every detx piece: configs and their model-zoo weights, the checkpoint check,
the validation loss, the predictor, training (validation loss, mAP, best checkpoint, resume, DDP) and a heterogeneous
three-model WBF ensemble."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, TRAINED_TINY_OPTS, load_script, run_train_net, save_random_checkpoint

from detx.core.submission import read_submission
from detx.engine.checkpoint import CheckpointError, detector_kind, read_state_dict, state_num_classes
from detx.engine.config import get_detx_cfg, num_classes, num_classes_key
from detx.viz.curves import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "faster": TINY_CONFIG,
    "retinanet": str(ROOT / "configs/quick_schedules/vindr_cxr_retinanet_tiny.yaml"),
    "cascade": str(ROOT / "configs/quick_schedules/vindr_cxr_cascade_tiny.yaml"),
}
KEY = {"faster": "MODEL.ROI_HEADS.NUM_CLASSES", "retinanet": "MODEL.RETINANET.NUM_CLASSES",
       "cascade": "MODEL.ROI_HEADS.NUM_CLASSES"}
KIND = {"faster": "Faster/Mask R-CNN", "retinanet": "RetinaNet", "cascade": "Cascade R-CNN"}
#: each model's own losses, as the validation loss reports them (val_<loss>)
VAL_LOSSES = {
    "retinanet": {"val_loss_cls", "val_loss_box_reg"},
    "cascade": {f"val_loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
    | {"val_loss_rpn_cls", "val_loss_rpn_loc"},
}


def cpu_cfg(kind: str, *opts, freeze: bool = True):
    return get_detx_cfg(TINY[kind], ["MODEL.DEVICE", "cpu", *map(str, opts)], freeze=freeze)


# ------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config, zoo", [
    ("vindr_cxr/retinanet_R_101_FPN.yaml", "COCO-Detection/retinanet_R_101_FPN_3x.yaml"),
    ("vindr_cxr/cascade_rcnn_R_50_FPN.yaml", "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"),
])
def test_full_configs_fit_their_model_zoo_weights(config, zoo):
    """Offline: the config loads, MODEL.WEIGHTS is the model zoo's file for ``zoo``, and the model it builds has
    the zoo model's parameter shapes everywhere but the class logits (and the zoo's mask head), so the COCO weights
    load into backbone, FPN, RPN, box regression."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_detx_cfg(str(ROOT / "configs" / config), ["MODEL.DEVICE", "cpu"])
    url = model_zoo.get_checkpoint_url(zoo)
    weights = cfg.MODEL.WEIGHTS
    assert weights == url.replace("https://dl.fbaipublicfiles.com/detectron2/", "detectron2://")
    assert num_classes(cfg) == 14
    spine = get_detx_cfg(str(ROOT / "configs" / config.replace("vindr_cxr/", "spinexr/")))
    assert num_classes(spine) == 7 and spine.MODEL.WEIGHTS == cfg.MODEL.WEIGHTS

    zoo_cfg = get_cfg()
    zoo_cfg.merge_from_file(model_zoo.get_config_file(zoo))
    zoo_cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    ours = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in build_model(zoo_cfg).state_dict().items()}
    assert set(ours) <= set(theirs)
    assert {k.split(".")[1] for k in set(theirs) - set(ours)} <= {"mask_head"}
    differ = {k for k in ours if ours[k] != theirs[k]}
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        # A x K logits: 9 anchors per location x 14 classes here, x 80 in COCO
        assert differ == {"head.cls_score.weight", "head.cls_score.bias"}
        assert ours["head.cls_score.weight"][0] == 9 * 14 and theirs["head.cls_score.weight"][0] == 9 * 80
    else:
        assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
        assert differ == {f"roi_heads.box_predictor.{s}.cls_score.{p}" for s in range(3) for p in ("weight", "bias")}


def test_tiny_configs_mirror_the_faster_rcnn_tiny_one():
    base = cpu_cfg("faster")
    for kind in ("retinanet", "cascade"):
        cfg = cpu_cfg(kind)
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RESNETS.NORM == "BN"
        assert cfg.INPUT.MIN_SIZE_TRAIN == base.INPUT.MIN_SIZE_TRAIN and cfg.SOLVER.MAX_ITER == base.SOLVER.MAX_ITER
        assert num_classes_key(cfg) == KEY[kind] and num_classes(cfg) == 14
    thresh = cpu_cfg("retinanet").MODEL.RETINANET.SCORE_THRESH_TEST
    assert thresh == pytest.approx(0.001)


# ---------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("kind", ["faster", "retinanet", "cascade"])
def test_checkpoint_of_another_class_count_is_refused(kind, tmp_path):
    from detx.inference.predictor import BatchedPredictor

    three = save_random_checkpoint(tmp_path, "three", [KEY[kind], "3"], config=TINY[kind])
    fourteen = save_random_checkpoint(tmp_path, "fourteen", config=TINY[kind])
    state = read_state_dict(three)
    assert detector_kind(state) == KIND[kind] and state_num_classes(state) == 3
    assert state_num_classes(read_state_dict(fourteen)) == 14
    if kind == "retinanet":  # 9 anchors per location x 3 classes
        assert state["head.cls_score.weight"].shape[0] == 27
    cfg = cpu_cfg(kind)
    with pytest.raises(CheckpointError, match=rf"trained for 3 classes but the config has {KEY[kind]} 14"):
        BatchedPredictor(cfg, three)
    assert BatchedPredictor(cfg, fourteen).model.training is False  # the right one loads


@pytest.mark.parametrize("held, config", [("retinanet", "faster"), ("cascade", "faster"), ("faster", "cascade"),
                                          ("faster", "retinanet"), ("cascade", "retinanet")])
def test_checkpoint_of_another_detector_is_refused(held, config, tmp_path):
    """Mixed-up --config-file / --weights orders in an ensemble: detectron2 would load the shared backbone and
    leave the head random; detx refuses."""
    from detx.inference.predictor import BatchedPredictor

    weights = save_random_checkpoint(tmp_path, held, config=TINY[held])
    with pytest.raises(CheckpointError, match=f"holds a {KIND[held]} but the config builds a {KIND[config]}"):
        BatchedPredictor(cpu_cfg(config), weights)


def test_checkpoint_lacking_the_configs_parameters_is_refused(tmp_path):
    from detx.inference.predictor import BatchedPredictor

    faster = save_random_checkpoint(tmp_path, "faster")
    mask_cfg = get_detx_cfg(str(Path(TINY_CONFIG).with_name("vindr_cxr_mask_tiny.yaml")), ["MODEL.DEVICE", "cpu"])
    with pytest.raises(CheckpointError, match=r"lacks \d+ of the config's model parameters .*mask_head"):
        BatchedPredictor(mask_cfg, faster)


# ------------------------------------------------------------------------------------ validation loss


def _batch(n: int = 2, size: int = 128, seed: int = 0) -> list[dict]:
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 70.0, 90.0]]) if k % 2 == 0 else torch.zeros((0, 4)))
        inst.gt_classes = torch.tensor([3] if k % 2 == 0 else [], dtype=torch.int64)
        out.append({"image": torch.rand((3, size, size), generator=g) * 255, "instances": inst})
    return out


def test_validation_loss_reports_retinanet_losses_and_leaves_its_state_alone():
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from detx.engine.hooks import ValidationLoss

    torch.manual_seed(0)
    model = build_model(cpu_cfg("retinanet")).train()
    with EventStorage(0):
        model(_batch(seed=1))  # a training step sets the EMA loss normalizer
    before = model.loss_normalizer
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    hook = ValidationLoss(1, lambda: [_batch(seed=2), _batch(seed=3)])
    hook.trainer = SimpleNamespace(model=model, iter=7)
    out = hook.compute()
    assert set(out) == VAL_LOSSES["retinanet"] | {"val_total_loss"}
    assert out["val_total_loss"] == pytest.approx(out["val_loss_cls"] + out["val_loss_box_reg"])
    assert all(np.isfinite(v) and v > 0 for v in out.values())
    assert model.loss_normalizer == before  # validation anchors never enter the training normalizer
    after = {k: v for k, v in model.state_dict().items() if "running_" in k}
    assert all(torch.equal(bn_before[k], after[k]) for k in bn_before)
    assert model.training


# ----------------------------------------------------------------------------------------- prediction


def _images(n: int, h: int = 256, w: int = 192, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = np.kron((rng.random((h // 8, w // 8)) * 255).astype(np.uint8), np.ones((8, 8), np.uint8))
        out.append(np.repeat(g[:, :, None], 3, axis=2))
    return out


@pytest.mark.parametrize("kind", ["retinanet", "cascade"])
def test_predictor_returns_original_pixels_and_keeps_low_scores(kind, tmp_path):
    """Boxes come back in the frame of the (height, width) passed in (here 10x the PNG); RetinaNet's per-anchor
    sigmoid confidences are kept down to 0.001, where detectron2's default SCORE_THRESH_TEST 0.05 drops them."""
    from detx.inference.predictor import BatchedPredictor

    weights = save_random_checkpoint(tmp_path, kind, config=TINY[kind])
    pred = BatchedPredictor(cpu_cfg(kind), weights)
    images = _images(2)
    small = pred(images, [(192, 256)] * 2)
    large = pred(images, [(1920, 2560)] * 2)
    for s, big in zip(small, large):
        assert len(s) > 0 and len(s) <= 100
        np.testing.assert_allclose(big.boxes, s.boxes * 10, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(big.scores, s.scores, atol=1e-6)
        assert s.boxes[:, [0, 2]].max() <= 192 + 1e-3 and s.boxes[:, [1, 3]].max() <= 256 + 1e-3
        assert s.classes.min() >= 0 and s.classes.max() < 14
    if kind == "retinanet":  # near its 0.01 prior (logit weights scaled down): every box is a low-score one
        assert all(s.scores.max() < 0.05 and s.scores.min() > 0.001 for s in small)
        strict = BatchedPredictor(cpu_cfg(kind, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.05), weights)
        assert [len(p) for p in strict(images, [(192, 256)] * 2)] == [0, 0]  # detectron2's default drops them all


# ------------------------------------------------------------------------------------------- training

#: 6 iterations, batch 2, 128 px; validation loss, mAP and checkpoints every 3 (after iteration 3 and the last)
SHORT = [*TRAINED_TINY_OPTS, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "3",
         "DETX.VAL_PERIOD", "3"]


@pytest.fixture(scope="module")
def trained(prepared_cxr_dir, tmp_path_factory):
    """OUTPUT_DIRs of the tiny RetinaNet and Cascade R-CNN, each trained 6 iterations through tools/train_net.py."""
    out = {}
    for kind in ("retinanet", "cascade"):
        out[kind] = tmp_path_factory.mktemp(f"trained_{kind}")
        run_train_net("--config-file", TINY[kind], "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out[kind], *SHORT)
    return out


def rows_with(metrics: Path, key: str) -> list[dict]:
    return [r for r in read_metrics(metrics) if key in r]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["retinanet", "cascade"])
def test_tiny_model_trains_with_validation_loss_map_and_best_checkpoint(kind, trained):
    out = trained[kind]
    for name in ("config.yaml", "model_final.pth", "model_best.pth", "model_best.json", "last_checkpoint",
                 "curves.png", "inference/vinbigdata_predictions.csv"):
        assert (out / name).is_file(), name
    metrics = out / "metrics.json"
    val = rows_with(metrics, "val_total_loss")
    assert [r["iteration"] for r in val] == [2, 6]
    for r in val:
        parts = {k: v for k, v in r.items() if k.startswith("val_loss_")}
        assert set(parts) == VAL_LOSSES[kind]
        assert r["val_total_loss"] == pytest.approx(sum(parts.values()))
    maps = rows_with(metrics, "vinbigdata/mAP40")
    assert [r["iteration"] for r in maps] == [2, 6]
    assert all(0.0 <= r["vinbigdata/mAP40"] <= 1.0 and "bbox/AP" in r for r in maps)
    best = json.loads((out / "model_best.json").read_text())
    values = [r["vinbigdata/mAP40"] for r in maps]
    assert best["metric"] == "vinbigdata/mAP40" and best["value"] == pytest.approx(max(values))
    assert torch.load(out / "model_best.pth", map_location="cpu", weights_only=False)["iteration"] == best["iteration"]
    cfg = get_detx_cfg(str(out / "config.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == cpu_cfg(kind).MODEL.META_ARCHITECTURE
    assert cfg.MODEL.ROI_HEADS.NAME == cpu_cfg(kind).MODEL.ROI_HEADS.NAME
    assert state_num_classes(read_state_dict(out / "model_best.pth")) == 14


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["retinanet", "cascade"])
def test_tiny_model_resumes(kind, trained, prepared_cxr_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[kind], out)
    run_train_net("--config-file", TINY[kind], "--resume", "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out,
                  *SHORT, "SOLVER.MAX_ITER", "7")
    assert "Starting training from iteration 6" in (out / "log.txt").read_text()
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["iteration"] == 6
    assert [r["iteration"] for r in rows_with(out / "metrics.json", "val_total_loss")] == [2, 6, 7]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_retinanet(prepared_cxr_dir, tmp_path):
    """tests/test_train.py's DDP check (gloo, 2 CPU processes) with the RetinaNet."""
    opts = list(TRAINED_TINY_OPTS)
    opts += ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2", "DETX.VAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2"]
    run_train_net("--config-file", TINY["retinanet"], "--num-gpus", "2", "DETX.DATA_ROOT", prepared_cxr_dir,
                  "OUTPUT_DIR", tmp_path, *opts)
    metrics = tmp_path / "metrics.json"
    assert [r["iteration"] for r in rows_with(metrics, "vinbigdata/mAP40")] == [2]
    val = rows_with(metrics, "val_total_loss")
    assert [r["iteration"] for r in val] == [2]
    assert {k for k in val[0] if k.startswith("val_loss_")} == VAL_LOSSES["retinanet"]
    n_val = len(json.loads((prepared_cxr_dir / "annotations" / "val_fold0.json").read_text())["images"])
    lines = (tmp_path / "inference" / "vinbigdata_predictions.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + n_val
    assert (tmp_path / "model_final.pth").is_file() and (tmp_path / "model_best.pth").is_file()


# ------------------------------------------------------------------------------------------ ensemble


def _predict_tool():
    return load_script("tools/predict.py")


@pytest.mark.slow
def test_three_detectors_fuse_into_one_submission(trained, trained_tiny_dir, prepared_cxr_dir, tmp_path, capsys):
    """tools/predict.py with a Faster R-CNN, a RetinaNet and a Cascade R-CNN (each its own config.yaml), hflip TTA
    and model weights: one WBF-fused, valid submission; the same weights in another order are refused."""
    from detx.workflows.evaluate import evaluate_files

    tool = _predict_tool()
    dirs = [trained_tiny_dir, trained["retinanet"], trained["cascade"]]
    configs = [str(d / "config.yaml") for d in dirs]
    weights = [str(d / "model_best.pth") for d in dirs]
    val = prepared_cxr_dir / "annotations" / "val_fold0.json"
    out = tmp_path / "submission.csv"
    argv = ["--quiet", "--config-file", *configs, "--weights", *weights, "--model-weights", "2", "1", "1",
            "--input", str(val), "--out", str(out), "--tta", "hflip", "--vis-dir", str(tmp_path / "vis"),
            "--vis-num", "2"]
    assert tool.main(tool.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "6 prediction set(s) fused: m0:orig, m0:hflip, m1:orig, m1:hflip, m2:orig, m2:hflip" in printed

    coco = json.loads(val.read_text())
    sizes = {im["image_uid"]: (im["orig_width"], im["orig_height"]) for im in coco["images"]}
    sub = read_submission(out, num_classes=15)
    assert sorted(sub) == sorted(sizes)
    for image_id, p in sub.items():
        assert (p.classes == 14).sum() == 1  # the No-finding entry, once per row
        finding = p.classes < 14
        assert 0 < finding.sum() <= 100
        w, h = sizes[image_id]
        assert p.boxes[finding][:, [0, 2]].max() <= w + 1e-3 and p.boxes[finding][:, [1, 3]].max() <= h + 1e-3
        assert ((p.scores >= 0) & (p.scores <= 1)).all()
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
    assert (tmp_path / "submission.classification.csv").read_text().count("\n") == 1 + len(sizes)
    result = evaluate_files(str(val), str(out))
    assert 0.0 <= result.metrics["mAP40"] <= 1.0

    swapped = ["--quiet", "--config-file", *configs, "--weights", weights[1], weights[0], weights[2],
               "--input", str(val), "--out", str(tmp_path / "swapped.csv")]
    assert tool.main(tool.parse_args(swapped)) == 2
    assert "holds a RetinaNet but the config builds a Faster/Mask R-CNN" in capsys.readouterr().err
    assert not (tmp_path / "swapped.csv").exists()
