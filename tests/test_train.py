"""End-to-end training through tools/train_net.py on the CPU: outputs, --resume, --eval-only, DDP, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG, TRAINED_TINY_OPTS, run_train_net
from detectron2.utils.events import EventStorage

from detx.core.prepared import PreparedDatasetError
from detx.engine.config import get_detx_cfg
from detx.engine.trainer import Trainer, TrainingSetupError, prepare_training
from detx.viz.curves import read_metrics

pytestmark = pytest.mark.slow


def rows_with(metrics: Path, key: str) -> list[dict]:
    return [r for r in read_metrics(metrics) if key in r]


def test_trained_outputs(trained_tiny_dir):
    out = trained_tiny_dir
    for name in ("config.yaml", "environment.txt", "model_final.pth", "model_best.pth", "model_0000003.pth",
                 "last_checkpoint", "curves.png", "log.txt"):
        assert (out / name).is_file(), name
    metrics = out / "metrics.json"
    # VAL_PERIOD = EVAL_PERIOD = 4, MAX_ITER 8: after iteration 3, and after training (storage iteration 8)
    val = rows_with(metrics, "val_total_loss")
    assert [r["iteration"] for r in val] == [3, 8]
    for r in val:
        parts = [v for k, v in r.items() if k.startswith("val_loss_")]
        assert {k for k in r if k.startswith("val_loss_")} == {
            "val_loss_cls", "val_loss_box_reg", "val_loss_rpn_cls", "val_loss_rpn_loc"}
        assert r["val_total_loss"] == pytest.approx(sum(parts))
    maps = rows_with(metrics, "vinbigdata/mAP40")
    assert [r["iteration"] for r in maps] == [3, 8]
    assert all(0.0 <= r["vinbigdata/mAP40"] <= 1.0 for r in maps)
    assert all("bbox/AP" in r for r in maps)
    # model_best follows the best mAP40 (the first one wins a tie)
    best = json.loads((out / "model_best.json").read_text())
    values = [r["vinbigdata/mAP40"] for r in maps]
    assert best["metric"] == "vinbigdata/mAP40" and best["value"] == pytest.approx(max(values))
    assert best["iteration"] == maps[values.index(max(values))]["iteration"]
    ckpt = torch.load(out / "model_best.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == best["iteration"]
    # the resolved config names the fold's datasets
    cfg = get_detx_cfg(str(out / "config.yaml"))
    assert cfg.DATASETS.TRAIN == ("vindr_cxr_train_fold0",) and cfg.DATASETS.TEST == ("vindr_cxr_val_fold0",)


def test_resume_continues_iteration_and_lr_schedule(trained_tiny_dir, prepared_cxr_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_tiny_dir, out)
    opts = [*TRAINED_TINY_OPTS, "SOLVER.MAX_ITER", "10"]
    run_train_net("--config-file", TINY_CONFIG, "--resume", "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out,
                  *opts)
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 8" in log
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["iteration"] == 9
    # the LR of iteration 9 is that of an uninterrupted schedule: detectron2's scheduler stepped 9 times
    cfg = get_detx_cfg(TINY_CONFIG, opts)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    for _ in range(9):
        opt.step()
        sched.step()
    lr_rows = [r for r in read_metrics(out / "metrics.json") if r["iteration"] == 9 and "lr" in r]
    assert lr_rows and lr_rows[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert [r["iteration"] for r in rows_with(out / "metrics.json", "val_total_loss")] == [3, 8, 10]


def test_best_checkpoint_after_the_last_iteration_leaves_resume_on_the_final_model(tmp_path):
    """The final evaluation runs after the last iteration (storage iteration MAX_ITER); a best model saved there must
    not become last_checkpoint, or --resume would start one iteration too late."""
    from types import SimpleNamespace

    from detectron2.checkpoint import DetectionCheckpointer

    from detx.engine.hooks import PersistentBestCheckpointer

    ckpt = DetectionCheckpointer(torch.nn.Linear(1, 1), save_dir=str(tmp_path))
    ckpt.save("model_final", iteration=5)  # PeriodicCheckpointer at the last iteration (5 of 0..5)
    hook = PersistentBestCheckpointer(3, ckpt, "vinbigdata/mAP40")
    with EventStorage(6) as storage:  # after_train: trainer.iter == MAX_ITER
        storage.put_scalar("vinbigdata/mAP40", 0.5)
        hook.trainer = SimpleNamespace(iter=6, max_iter=6, start_iter=0, storage=storage)
        hook.after_train()
    assert (tmp_path / "model_best.pth").is_file()
    assert json.loads((tmp_path / "model_best.json").read_text())["iteration"] == 6
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert ckpt.resume_or_load("", resume=True)["iteration"] == 5  # resume starts at 6, the next untrained one


def test_eval_only_reproduces_the_final_evaluation(trained_tiny_dir, prepared_cxr_dir, tmp_path):
    run_train_net("--config-file", TINY_CONFIG, "--eval-only", "DETX.DATA_ROOT", prepared_cxr_dir,
                  "OUTPUT_DIR", tmp_path, "MODEL.WEIGHTS", trained_tiny_dir / "model_final.pth", *TRAINED_TINY_OPTS)
    results = json.loads((tmp_path / "eval_results.json").read_text())
    final = rows_with(trained_tiny_dir / "metrics.json", "vinbigdata/mAP40")[-1]
    assert results["vinbigdata"]["mAP40"] == pytest.approx(final["vinbigdata/mAP40"], abs=1e-9)
    assert (tmp_path / "inference" / "vinbigdata_predictions.csv").is_file()


def test_zero_box_image_has_zero_box_regression_loss(prepared_cxr_dir):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from detx.engine.mapper import DetxDatasetMapper

    cfg = prepare_training(get_detx_cfg(TINY_CONFIG, ["DETX.DATA_ROOT", str(prepared_cxr_dir), "MODEL.DEVICE", "cpu"],
                                        freeze=False))
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    normal = next(d for d in dicts if not d["annotations"])
    abnormal = next(d for d in dicts if d["annotations"])
    mapper = DetxDatasetMapper(cfg, is_train=True)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage():
        batch = [mapper(normal)]
        assert len(batch[0]["instances"]) == 0
        losses = model(batch)
        assert losses["loss_box_reg"].item() == 0.0
        assert losses["loss_rpn_loc"].item() == 0.0
        assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0  # negatives still teach
        with_box = model([mapper(abnormal)])
        assert with_box["loss_rpn_loc"].item() > 0


def test_mask_rcnn_tiny_trains(prepared_cxr_dir, tmp_path):
    mask_cfg = str(Path(TINY_CONFIG).with_name("vindr_cxr_mask_tiny.yaml"))
    opts = ["DETX.DATA_ROOT", str(prepared_cxr_dir), "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
            "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "3", "DETX.VAL_PERIOD", "0",
            "DETX.CURVES", "False", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128"]
    # without box masks the box-only data cannot train a mask head: refused before training
    with pytest.raises(TrainingSetupError, match="DETX.BOX_MASKS"):
        prepare_training(get_detx_cfg(mask_cfg, [*opts, "DETX.BOX_MASKS", "False"], freeze=False))
    cfg = prepare_training(get_detx_cfg(mask_cfg, opts, freeze=False))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    hist = trainer.storage.history("loss_mask").values()
    # A batch whose images are all normal has no foreground ROI, and detectron2's mask loss is then exactly 0.
    assert len(hist) == 3 and all(0 <= v < 10 for v, _ in hist) and any(v > 0 for v, _ in hist)
    assert (tmp_path / "model_final.pth").is_file()
    results = trainer._last_eval_results  # TEST.EVAL_PERIOD 3: one evaluation, at the end (0 would mean none)
    assert 0.0 <= results["vinbigdata"]["mAP40"] <= 1.0


def test_ddp_two_processes_on_cpu(prepared_cxr_dir, tmp_path):
    opts = list(TRAINED_TINY_OPTS)
    opts += ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2", "DETX.VAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2"]
    run_train_net("--config-file", TINY_CONFIG, "--num-gpus", "2", "DETX.DATA_ROOT", prepared_cxr_dir,
                  "OUTPUT_DIR", tmp_path, *opts)
    metrics = tmp_path / "metrics.json"
    assert [r["iteration"] for r in rows_with(metrics, "vinbigdata/mAP40")] == [2]
    assert [r["iteration"] for r in rows_with(metrics, "val_total_loss")] == [2]
    # the evaluator gathered both processes' shards: one prediction row per validation image
    n_val = len(json.loads((prepared_cxr_dir / "annotations" / "val_fold0.json").read_text())["images"])
    lines = (tmp_path / "inference" / "vinbigdata_predictions.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + n_val
    assert (tmp_path / "model_final.pth").is_file()


# ------------------------------------------------------------------------------------------ bad input


def tiny(root, *opts) -> object:
    return get_detx_cfg(TINY_CONFIG, ["DETX.DATA_ROOT", str(root), "MODEL.DEVICE", "cpu", *map(str, opts)],
                        freeze=False)


def test_bad_data_root_and_fold(prepared_cxr_dir, tmp_path):
    with pytest.raises(PreparedDatasetError, match="does not exist"):
        prepare_training(tiny(tmp_path / "nope"))
    with pytest.raises(PreparedDatasetError, match="not a prepared dataset"):
        prepare_training(tiny(tmp_path))
    with pytest.raises(PreparedDatasetError, match=r"DETX.FOLD 5 does not exist .*folds \[0, 1\]"):
        prepare_training(tiny(prepared_cxr_dir, "DETX.FOLD", 5))


def test_empty_training_set(prepared_cxr_dir, tmp_path):
    root = tmp_path / "prep"
    shutil.copytree(prepared_cxr_dir, root)
    path = root / "annotations" / "train_fold1.json"
    data = json.loads(path.read_text())
    data["images"], data["annotations"] = [], []
    path.write_text(json.dumps(data))
    with pytest.raises(TrainingSetupError, match=r"training set \['vindr_cxr_train_fold1'\] has no images"):
        prepare_training(tiny(root, "DETX.FOLD", 1))


def test_class_count_mismatch(prepared_cxr_dir):
    with pytest.raises(TrainingSetupError, match=r"NUM_CLASSES is 7 but dataset vindr_cxr_train_fold0 has 14"):
        prepare_training(tiny(prepared_cxr_dir, "MODEL.ROI_HEADS.NUM_CLASSES", 7))


def test_unreadable_weights(prepared_cxr_dir, tmp_path):
    with pytest.raises(TrainingSetupError, match="does not exist"):
        prepare_training(tiny(prepared_cxr_dir, "MODEL.WEIGHTS", tmp_path / "missing.pth"))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(TrainingSetupError, match="not a PyTorch/pickle checkpoint"):
        prepare_training(tiny(prepared_cxr_dir, "MODEL.WEIGHTS", text))
    # a torn zip passes the quick check but fails when loaded: still a clear error before training
    torn = tmp_path / "torn.pth"
    torn.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    cfg = prepare_training(tiny(prepared_cxr_dir, "MODEL.WEIGHTS", torn, "OUTPUT_DIR", tmp_path / "o"))
    trainer = Trainer(cfg)
    with pytest.raises(TrainingSetupError, match=r"cannot load MODEL.WEIGHTS .*torn\.pth"):
        trainer.resume_or_load(resume=False)


def test_cli_reports_bad_input_and_exits_nonzero(prepared_cxr_dir, tmp_path):
    proc = run_train_net("--config-file", TINY_CONFIG, "DETX.DATA_ROOT", prepared_cxr_dir, "DETX.FOLD", "9",
                         "OUTPUT_DIR", tmp_path / "o", check=False)
    assert proc.returncode == 2
    assert "DETX.FOLD 9 does not exist" in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing started
    proc = run_train_net("--config-file", TINY_CONFIG, "DETX.AUG.FLIP", "0.5", check=False)
    assert proc.returncode == 2 and "did you mean DETX.AUG." in proc.stderr


def test_repeat_factor_sampler_with_normal_images(prepared_cxr_dir):
    from detectron2.data import DatasetCatalog
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    cfg = prepare_training(tiny(prepared_cxr_dir, "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                                "DATALOADER.REPEAT_THRESHOLD", 0.5, "SOLVER.IMS_PER_BATCH", 2))
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5).tolist()
    for d, f in zip(dicts, factors):
        if not d["annotations"]:
            assert f == 1.0  # normal images are sampled once per epoch, not dropped
        else:  # r(c) = max(1, sqrt(0.5 / f(c))) with f(c) the fraction of images holding class c
            freq = {c: sum(any(a["category_id"] == c for a in e["annotations"]) for e in dicts) / len(dicts)
                    for c in {a["category_id"] for a in d["annotations"]}}
            assert f == pytest.approx(max(max(1.0, (0.5 / v) ** 0.5) for v in freq.values()), rel=1e-6)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2 and all("instances" in b for b in batch)


@pytest.mark.gpu
def test_amp_on_cuda(prepared_cxr_dir, tmp_path):
    from detectron2.engine import AMPTrainer

    cfg = prepare_training(tiny(prepared_cxr_dir, "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
                                "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "OUTPUT_DIR", tmp_path,
                                "TEST.EVAL_PERIOD", 0, "DETX.VAL_PERIOD", 1))
    assert cfg.SOLVER.AMP.ENABLED
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert len(trainer.storage.history("val_total_loss").values()) == 2  # iteration 0, then after training
