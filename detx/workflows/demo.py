"""The end-to-end demo on the built-in synthetic dataset (``make demo``, ``python -m detx.workflows.demo``).

Generate synthetic DICOMs and reader CSVs -> prepare (WBF fusion, folds) -> train the tiny config on
fold 0 on the CPU -> predict and evaluate the held-out fold -> fit the image-level classifier on those
held-out predictions -> predict the synthetic test set to ``submission.csv`` and score it against the
generator's test ground truth -> ``report.md`` with the figures.

Each step is the command a user would type (printed before it runs), so the demo doubles as a
walkthrough of the real workflow. A step whose outputs exist is skipped, so a second run reuses what
the first made and a run killed mid-training resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detx.core.errors import DetxError, InputError
from detx.core.io import write_json
from detx.viz.demo_report import write_demo_report, write_mura_report

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

# Per dataset: generator and prepare-script names, where the generator puts train/test files, the tiny config.
DATASETS: dict[str, dict[str, str]] = {
    "vindr-cxr": {
        "prepare": "datasets/prepare_vindr_cxr.py",
        "train_csv": "train.csv",
        "train_dir": "train",
        "test_dir": "test",
        "test_gt": "test_ground_truth.csv",
        "config": "configs/quick_schedules/vindr_cxr_tiny.yaml",
        "cls_config": "configs/quick_schedules/vindr_cxr_cls_tiny.yaml",
        "cls_classes": "14",
    },
    "spinexr": {
        "prepare": "datasets/prepare_spinexr.py",
        "train_csv": "annotations/train.csv",
        "train_dir": "train_images",
        "test_dir": "test_images",
        "test_gt": "annotations/test.csv",
        "config": "configs/quick_schedules/spinexr_tiny.yaml",
        "cls_config": "configs/quick_schedules/vindr_cxr_cls_tiny.yaml",  # the same tiny net, 7 class outputs
        "cls_classes": "7",
    },
    # box-free: synthetic MURA v1.1 radiographs, the tiny normal/abnormal classifier, study-level evaluation
    "mura": {
        "prepare": "datasets/prepare_mura.py",
        "cls_config": "configs/quick_schedules/mura_cls_tiny.yaml",
        "cls_classes": "0",
    },
}


# detectron2's trainer logs its environment and the whole config; the console gets only the progress.
TRAIN_CONSOLE = ("iter:", "copypaste:", "Starting training", "Overall training", "Traceback", "Error", "error:")


class DemoError(DetxError, RuntimeError):
    """A demo step failed; the message names the step and its command."""

    exit_status = 1


#: the settings file that ties an output folder to the settings that made it
SETTINGS_FILE = "demo_settings.json"


@dataclass
class DemoSettings:
    """What the demo generates and how long it trains (defaults: under 10 minutes on a 2-core CPU)."""

    out: Path = Path("output/demo")
    dataset: str = "vindr-cxr"
    n_train: int = 160
    n_test: int = 40
    min_size: int = 384
    max_size: int = 640
    size: int = 256
    folds: int = 4
    seed: int = 0
    max_iter: int = 300
    eval_period: int = 100
    # the CNN's schedule: 400 iterations (the tiny config's step to a tenth of the rate at 250 inside the run) with the
    # detector's stem, res2 and res3 kept as they are (MODEL.BACKBONE.FREEZE_AT 3, which pays for most of the longer
    # run): on the seeds 0-2 sets it reaches the detections' P(abnormal) on 400 new test images and a pointing game of
    # at least 0.5 (240 iterations, nothing frozen: 0.01-0.10 below; benchmarks/chest_cls_recipe.py, docs/classifiers.md)
    cls_max_iter: int = 400
    cls_freeze_at: int = 3
    # the CNN's pooling (MODEL.CLASSIFIER.POOL): log-sum-exp over its class activation map, so its Grad-CAM points
    # at the finding (average pooling pointed at the image's lower edge: pointing game 0 of 20; docs/classifiers.md)
    cls_pool: str = "lse"
    # the backbone stage the CNN pools (MODEL.CLASSIFIER.IN_FEATURE): res5 (8 x 8 cells at 256 px) or res4 (16 x 16);
    # on the chest demo neither is better over seeds 0-2 (benchmarks/chest_cls_recipe.py, docs/classifiers.md)
    cls_feature: str = "res5"
    # also train the CNN on lung-field crops of the same images and show it beside the whole-image one (chest demo
    # only; about 3.5 more minutes). Additive: it adds files and leaves every other one as it is (ADDITIVE_SETTINGS)
    lung_crops: bool = False
    tta: tuple[str, ...] = ("hflip",)
    workers: int = 2
    extra_train_opts: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: sys.executable)

    @classmethod
    def for_dataset(cls, dataset: str = "vindr-cxr", **overrides: Any) -> DemoSettings:
        """The settings ``make demo DATASET=<dataset>`` runs with: :data:`DATASET_DEFAULTS` over the class defaults,
        then ``overrides`` (None values are left out, so unset command-line options keep the dataset's default)."""
        chosen = {**DATASET_DEFAULTS.get(dataset, {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(dataset=dataset, **chosen)

    def recorded(self) -> dict[str, Any]:
        """The settings that decide what the demo's files hold (not where they are or which python runs)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
                if k not in ("out", "python")}

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.dataset not in DATASETS:
            raise InputError(f"unknown demo dataset {self.dataset!r}; expected one of {sorted(DATASETS)}")
        if self.n_train < 2 * self.folds or self.n_test < 1:
            raise InputError(f"the demo needs n_train >= 2 * folds ({2 * self.folds}) and n_test >= 1")
        if self.max_iter < 1 or self.eval_period < 1 or self.cls_max_iter < 1:
            raise InputError("max_iter, cls_max_iter and eval_period must be >= 1")
        if self.cls_pool not in ("avg", "max", "lse"):
            raise InputError(f"cls_pool must be avg, max or lse, got {self.cls_pool!r}")
        if self.cls_feature not in CLS_FEATURES:
            raise InputError(f"cls_feature must be one of {', '.join(CLS_FEATURES)}, got {self.cls_feature!r}")
        if not 0 <= self.cls_freeze_at <= 5:
            raise InputError(f"cls_freeze_at must be 0 (train every layer) to 5 (freeze the whole ResNet), got "
                             f"{self.cls_freeze_at}")
        if self.lung_crops and self.dataset != "vindr-cxr":
            raise InputError(f"lung_crops needs the chest demo (vindr-cxr: the generator draws lungs), not {self.dataset}")

    def cls_feature_opts(self) -> list[str]:
        """The classifier's options that pool :attr:`cls_feature` (the backbone is built up to that stage) and keep
        the stages up to :attr:`cls_freeze_at` as they start."""
        return ["MODEL.RESNETS.OUT_FEATURES", f"['{self.cls_feature}']", "MODEL.CLASSIFIER.IN_FEATURE",
                self.cls_feature, "MODEL.BACKBONE.FREEZE_AT", str(self.cls_freeze_at)]


#: settings that only add steps and files: a folder made without them is reused with them (and the other way round)
ADDITIVE_SETTINGS: tuple[str, ...] = ("lung_crops",)

#: the lung box's margin, as a fraction of its size, when the demo crops to the lung fields (``--crop-margin``)
LUNG_CROP_MARGIN = 0.05

#: the backbone stages the demo's CNN can pool (``--cls-feature``)
CLS_FEATURES: tuple[str, ...] = ("res4", "res5")

#: Per dataset, what its demo changes from :class:`DemoSettings`' defaults. MURA has no detector to start its
#: classifier from: the tiny ResNet learns the synthetic signs from scratch only with more images and iterations
#: (at 120 training images and 240 iterations it stayed at chance; docs/classifiers.md) and with average pooling
#: (log-sum-exp pooling from scratch stayed at chance on two seeds of three; mura_cls_tiny.yaml says the rest).
#: Its 300 valid images make the study-level AUC a number rather than a coin (40 images are about 18 studies).
#: The spine demo's CNN keeps the schedule it was measured with (the chest one's was not tried on it).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mura": {"n_train": 1200, "n_test": 300, "cls_max_iter": 1000, "eval_period": 250, "cls_pool": "avg",
             "cls_feature": "res4", "cls_freeze_at": 0},
    "spinexr": {"cls_max_iter": 240, "cls_freeze_at": 0},
}


def with_unrecorded(settings: dict[str, Any], dataset: str = "vindr-cxr") -> dict[str, Any]:
    """``settings`` (a recorded ``DemoSettings.recorded()``), with the settings added after it was recorded appended at
    the value runs made before them used: the demo pooled the stage its dataset's default pools now. ``dataset``
    applies when the record names none."""
    ds = settings.get("dataset", dataset)
    added = {"cls_feature": DATASET_DEFAULTS.get(ds, {}).get("cls_feature", DemoSettings.cls_feature),
             "cls_freeze_at": 0, "lung_crops": False}
    return {**settings, **{k: v for k, v in added.items() if k not in settings}}


@dataclass
class Step:
    name: str
    cmd: list[str]
    outputs: list[Path]
    console_filter: tuple[str, ...] = ()  # when set, only log lines containing one of these reach the console

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


def paths(s: DemoSettings) -> dict[str, Path]:
    o = s.out
    return {
        "raw": o / "raw",
        "prepared": o / "prepared",
        "train": o / "train",
        "val_json": o / "prepared" / "annotations" / "val_fold0.json",
        "val_submission": o / "val" / "submission.csv",
        "val_metrics": o / "val" / "metrics.json",
        "val_plots": o / "val" / "plots",
        "overlays": o / "val" / "overlays",
        "classifier": o / "classifier.json",
        "cls_train": o / "cls_train",
        "cnn_val": o / "val" / "cnn_classification.csv",
        "cnn_val_metrics": o / "val" / "cnn_metrics.json",
        "cnn_val_plots": o / "val" / "cnn_plots",
        "heatmaps": o / "heatmaps",
        "cache": o / "cache",
        "submission": o / "submission.csv",
        "test_metrics": o / "test_metrics.json",
        "det_submission": o / "test_detection_only" / "submission.csv",
        "det_test_metrics": o / "test_detection_only" / "metrics.json",
        "valid_cls": o / "valid" / "classification.csv",
        "valid_metrics": o / "valid" / "metrics.json",
        "valid_plots": o / "valid" / "plots",
        "readers": o / "readers",
        # --lung-crops: the same images generated again with their lung masks, prepared cropped to the lung fields,
        # and the same CNN trained on them
        "lung_raw": o / "lung_crops" / "raw",
        "lung_prepared": o / "lung_crops" / "prepared",
        "lung_val_json": o / "lung_crops" / "prepared" / "annotations" / "val_fold0.json",
        "lung_cls_train": o / "lung_crops" / "cls_train",
        "lung_cnn_val": o / "lung_crops" / "val" / "cnn_classification.csv",
        "lung_cnn_val_metrics": o / "lung_crops" / "val" / "cnn_metrics.json",
        "lung_cnn_val_plots": o / "lung_crops" / "val" / "cnn_plots",
        "report": o / "report.md",
        "results": o / "results.json",
    }


def mura_steps(s: DemoSettings) -> list[Step]:
    """The MURA demo: synthetic radiographs -> prepare -> the tiny classifier on fold 0 -> the official valid split
    classified and evaluated per image, per study (the MURA protocol) and per body part."""
    d = DATASETS["mura"]
    p = paths(s)
    py = s.python
    raw, prepared, cls_train = p["raw"], p["prepared"], p["cls_train"]
    cls_cmd = [
        py, "tools/train_net.py", "--config-file", d["cls_config"], "DETX.DATA_ROOT", str(prepared), "DETX.FOLD", "0",
        "OUTPUT_DIR", str(cls_train), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", str(s.cls_max_iter),
        "TEST.EVAL_PERIOD", str(s.eval_period), "SOLVER.CHECKPOINT_PERIOD", str(s.eval_period), "SEED", str(s.seed),
        "MODEL.CLASSIFIER.POOL", s.cls_pool, *s.cls_feature_opts(),
    ]
    if (cls_train / "last_checkpoint").exists() and not (cls_train / "model_final.pth").exists():
        cls_cmd.insert(4, "--resume")
    return [
        Step("generate synthetic radiographs in the MURA v1.1 layout",
             [py, "-m", "detx.synthetic", "--dataset", "mura", "--out", str(raw), "--n-train", str(s.n_train),
              "--n-test", str(s.n_test), "--seed", str(s.seed), "--min-size", str(s.min_size), "--max-size",
              str(s.max_size)],
             [raw / "MURA-v1.1" / "valid_labeled_studies.csv"]),
        Step("prepare: PNGs, meta.csv, folds grouped by patient, the valid split apart",
             [py, d["prepare"], "--root", str(raw), "--out", str(prepared), "--size", str(s.size), "--folds",
              str(s.folds), "--seed", str(s.seed), "--workers", str(s.workers)],
             [prepared / "annotations" / "valid.json"]),
        Step("train the tiny normal/abnormal classifier on fold 0 (CPU)", cls_cmd,
             [cls_train / "model_final.pth", cls_train / "model_best.pth"], console_filter=TRAIN_CONSOLE),
        Step("classify the official valid split",
             classify_cmd(s, cls_train, prepared / "annotations" / "valid.json", p["valid_cls"]), [p["valid_cls"]]),
        Step("evaluate per image, per study (mean of its images) and per body part",
             evaluate_cmd(s, prepared / "annotations" / "valid.json", p["valid_cls"], p["valid_metrics"],
                          p["valid_plots"]),
             [p["valid_metrics"]]),
    ]


def classify_cmd(s: DemoSettings, cls_train: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    """The CNN trained in ``cls_train`` (its best weights, ``s.tta``) classifying ``inputs`` (a COCO JSON, or a DICOM
    folder with ``extra`` options) to the classification CSV ``out``."""
    return [s.python, "tools/predict.py", "--classifier-config", str(cls_train / "config.yaml"), "--classifier-weights",
            str(cls_train / "model_best.pth"), "--tta", *s.tta, "--input", str(inputs), *extra, "--classification-out",
            str(out)]


def evaluate_cmd(s: DemoSettings, gt: Path, pred: Path, out: Path, plots: Path | None = None) -> list[str]:
    """``tools/evaluate.py`` scoring ``pred`` against ``gt`` to ``out`` (and its plots to ``plots``)."""
    return [s.python, "tools/evaluate.py", "--gt", str(gt), "--pred", str(pred), "--out", str(out),
            *(["--plots", str(plots)] if plots is not None else [])]


def gradcam_cmd(s: DemoSettings, cls_train: Path, inputs: Path, out: Path) -> list[str]:
    """Grad-CAM heatmaps (and the pointing game) of the CNN trained in ``cls_train`` on ``inputs``, to ``out``."""
    return [s.python, "tools/explain.py", "--config-file", str(cls_train / "config.yaml"), "--weights",
            str(cls_train / "model_best.pth"), "--input", str(inputs), "--out", str(out), "--method", "gradcam"]


def test_prediction_cmd(s: DemoSettings, dicom_dir: Path, out: Path, cache: Path) -> list[str]:
    """How the demo predicts its test DICOM folder: its best detector (with ``s.tta``) and its CNN for No finding,
    at ``s.size``; ``benchmarks/demo_test_size.py`` predicts its larger test set with the same command."""
    p = paths(s)
    train, cls_train = p["train"], p["cls_train"]
    return [s.python, "tools/predict.py", "--config-file", str(train / "config.yaml"), "--weights",
            str(train / "model_best.pth"), "--tta", *s.tta, "--classifier-config", str(cls_train / "config.yaml"),
            "--classifier-weights", str(cls_train / "model_best.pth"), "--input", str(dicom_dir), "--dicom-size",
            str(s.size), "--out", str(out), "--cache-dir", str(cache)]


def detection_test_cmd(s: DemoSettings, dicom_dir: Path, out: Path, cache: Path) -> list[str]:
    """How the demo predicts a test DICOM folder for comparison: its best detector (with ``s.tta``) and P(abnormal)
    from the detections (the fitted classifier); ``benchmarks/chest_cls_recipe.py`` uses it on its larger test set."""
    p = paths(s)
    return [s.python, "tools/predict.py", "--config-file", str(p["train"] / "config.yaml"), "--weights",
            str(p["train"] / "model_best.pth"), "--tta", *s.tta, "--input", str(dicom_dir), "--dicom-size", str(s.size),
            "--out", str(out), "--classifier", str(p["classifier"]), "--cache-dir", str(cache)]


def cnn_training_cmd(s: DemoSettings, data_root: Path, out: Path) -> list[str]:
    """The chest/spine demo's CNN training on fold 0 of ``data_root`` into ``out`` (``--resume`` when a run there was
    stopped), initialised from the demo detector's best weights."""
    d = DATASETS[s.dataset]
    cmd = [
        s.python, "tools/train_net.py", "--config-file", d["cls_config"],
        "DETX.DATA_ROOT", str(data_root), "DETX.FOLD", "0", "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
        "MODEL.CLASSIFIER.NUM_CLASSES", d["cls_classes"], "SOLVER.MAX_ITER", str(s.cls_max_iter),
        "MODEL.CLASSIFIER.POOL", s.cls_pool, *s.cls_feature_opts(),
        "TEST.EVAL_PERIOD", str(s.eval_period), "SOLVER.CHECKPOINT_PERIOD", str(s.eval_period), "SEED", str(s.seed),
        "INPUT.MIN_SIZE_TRAIN", f"({s.size},)", "INPUT.MAX_SIZE_TRAIN", str(s.size), "INPUT.MIN_SIZE_TEST",
        str(s.size), "INPUT.MAX_SIZE_TEST", str(s.size),
        # the classifier starts from the detector's backbone (its FPN bottom-up ResNet-18, the same family as the tiny
        # classifier's): it has learnt the findings from every box (docs/classifiers.md)
        "MODEL.WEIGHTS", str(paths(s)["train"] / "model_best.pth"),
    ]
    if (out / "last_checkpoint").exists() and not (out / "model_final.pth").exists():
        cmd.insert(4, "--resume")
    return cmd


def generate_cmd(s: DemoSettings, out: Path, *extra: str) -> list[str]:
    """The demo's synthetic data (chest or spine) written to ``out``."""
    return [s.python, "-m", "detx.synthetic", "--out", str(out), "--dataset", s.dataset, "--n-train", str(s.n_train),
            "--n-test", str(s.n_test), "--seed", str(s.seed), "--min-size", str(s.min_size), "--max-size",
            str(s.max_size), *extra]


def lung_crop_steps(s: DemoSettings) -> list[Step]:
    """``--lung-crops``: the demo's images generated again with the lung fields as drawn (the generator writes the same
    other bytes with or without masks), prepared cropped to the lung box with a margin, and the demo's CNN trained and
    evaluated on fold 0 of the crops, the same held-out images as the whole-image CNN (checked in the report)."""
    d = DATASETS[s.dataset]
    p = paths(s)
    py, raw, prepared, cls_train = s.python, p["lung_raw"], p["lung_prepared"], p["lung_cls_train"]
    return [
        Step("lung crops: generate the same images with their lung masks",
             generate_cmd(s, raw, "--lung-masks"), [raw / d["train_csv"], raw / "lung_masks" / "train"]),
        Step("lung crops: prepare the training images cropped to their lung fields",
             [py, d["prepare"], "--csv", str(raw / d["train_csv"]), "--dicom-dir", str(raw / d["train_dir"]),
              "--out", str(prepared), "--size", str(s.size), "--folds", str(s.folds), "--seed", str(s.seed),
              "--workers", str(s.workers), "--crop", "lungs", "--crop-margin", str(LUNG_CROP_MARGIN), "--lung-masks",
              str(raw / "lung_masks" / "train")],
             [prepared / "annotations" / "all.json", p["lung_val_json"]]),
        Step("lung crops: train the same CNN on fold 0 of the crops (CPU)", cnn_training_cmd(s, prepared, cls_train),
             [cls_train / "model_final.pth", cls_train / "model_best.pth"], console_filter=TRAIN_CONSOLE),
        Step("lung crops: classify the held-out fold 0 crops",
             classify_cmd(s, cls_train, p["lung_val_json"], p["lung_cnn_val"]), [p["lung_cnn_val"]]),
        Step("lung crops: evaluate the CNN on the held-out crops",
             evaluate_cmd(s, p["lung_val_json"], p["lung_cnn_val"], p["lung_cnn_val_metrics"], p["lung_cnn_val_plots"]),
             [p["lung_cnn_val_metrics"]]),
    ]


def build_steps(s: DemoSettings) -> list[Step]:
    """The demo's commands, in order, with the files that mark each as done."""
    if s.dataset == "mura":
        return mura_steps(s)
    d = DATASETS[s.dataset]
    p = paths(s)
    py = s.python
    raw, prepared, train = p["raw"], p["prepared"], p["train"]
    weights = train / "model_best.pth"
    train_cmd = [
        py, "tools/train_net.py", "--config-file", d["config"],
        "DETX.DATA_ROOT", str(prepared), "DETX.FOLD", "0", "OUTPUT_DIR", str(train), "MODEL.DEVICE", "cpu",
        "SOLVER.MAX_ITER", str(s.max_iter), "TEST.EVAL_PERIOD", str(s.eval_period),
        "SOLVER.CHECKPOINT_PERIOD", str(s.eval_period), "SEED", str(s.seed), *s.extra_train_opts,
    ]
    if (train / "last_checkpoint").exists() and not (train / "model_final.pth").exists():
        train_cmd.insert(4, "--resume")  # a run killed mid-training continues from its last checkpoint
    predict_common = [py, "tools/predict.py", "--config-file", str(train / "config.yaml"), "--weights", str(weights),
                      "--tta", *s.tta]
    cls_train = p["cls_train"]
    cls_cmd = cnn_training_cmd(s, prepared, cls_train)
    return [
        Step("generate synthetic DICOMs and reader CSVs", generate_cmd(s, raw), [raw / d["train_csv"], raw / d["test_gt"]]),
        Step("the readers tool on the synthetic readers (panels, styles, outliers, the human baseline)",
             [py, "tools/readers.py", "--csv", str(raw / d["train_csv"]), "--out", str(p["readers"])],
             [p["readers"] / "readers.json"]),
        Step("prepare: DICOM -> PNG, WBF-fused COCO JSON, folds",
             [py, d["prepare"], "--csv", str(raw / d["train_csv"]), "--dicom-dir", str(raw / d["train_dir"]),
              "--out", str(prepared), "--size", str(s.size), "--folds", str(s.folds), "--seed", str(s.seed),
              "--workers", str(s.workers)],
             [prepared / "annotations" / "all.json", p["val_json"]]),
        Step("train the tiny config on fold 0 (CPU)", train_cmd, [train / "model_final.pth", weights],
             console_filter=TRAIN_CONSOLE),
        Step("predict the held-out fold 0",
             [*predict_common, "--input", str(p["val_json"]), "--out", str(p["val_submission"]),
              "--vis-dir", str(p["overlays"]), "--vis-num", "6"],
             [p["val_submission"]]),
        Step("evaluate the held-out fold 0",
             evaluate_cmd(s, p["val_json"], p["val_submission"], p["val_metrics"], p["val_plots"]), [p["val_metrics"]]),
        Step("fit the image-level classifier on the held-out predictions",
             [py, "tools/fit_classifier.py", "--pred", str(p["val_submission"]), "--gt", str(p["val_json"]),
              "--out", str(p["classifier"])],
             [p["classifier"]]),
        Step("train the tiny image classifier (CNN) on fold 0 (CPU), initialised from the detector's backbone", cls_cmd,
             [cls_train / "model_final.pth", cls_train / "model_best.pth"], console_filter=TRAIN_CONSOLE),
        Step("classify the held-out fold 0 with the CNN", classify_cmd(s, cls_train, p["val_json"], p["cnn_val"]),
             [p["cnn_val"]]),
        Step("evaluate the CNN on the held-out fold 0",
             evaluate_cmd(s, p["val_json"], p["cnn_val"], p["cnn_val_metrics"], p["cnn_val_plots"]),
             [p["cnn_val_metrics"]]),
        Step("Grad-CAM heatmaps of the CNN on the held-out fold 0 (pointing game)",
             gradcam_cmd(s, cls_train, p["val_json"], p["heatmaps"]), [p["heatmaps"] / "summary.json"]),
        Step("predict the synthetic test set (DICOM folder) to submission.csv, No finding from the CNN",
             test_prediction_cmd(s, raw / d["test_dir"], p["submission"], p["cache"]),
             [p["submission"]]),
        Step("score the test submission against the generator's test ground truth",
             evaluate_cmd(s, raw / d["test_gt"], p["submission"], p["test_metrics"]), [p["test_metrics"]]),
        Step("the same test submission with P(abnormal) from the detections (fitted classifier), for comparison",
             detection_test_cmd(s, raw / d["test_dir"], p["det_submission"], p["cache"]),
             [p["det_submission"]]),
        Step("score it", evaluate_cmd(s, raw / d["test_gt"], p["det_submission"], p["det_test_metrics"]),
             [p["det_test_metrics"]]),
        *(lung_crop_steps(s) if s.lung_crops else []),
    ]


def run_step(step: Step, log_path: Path, quiet: bool = False) -> float:
    """Run one step from the repository root; its output goes to ``log_path`` (and the console unless quiet)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n==> {step.name}\n$ {shlex.join(step.cmd)}", flush=True)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(step.cmd)}\n")
        log.flush()
        proc = subprocess.Popen(step.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if not quiet and (not step.console_filter or any(k in line for k in step.console_filter)):
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    if rc != 0:
        raise DemoError(f"step '{step.name}' failed (exit {rc}); see {log_path}\n$ {shlex.join(step.cmd)}")
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        raise DemoError(f"step '{step.name}' finished but did not write {', '.join(missing)}; see {log_path}")
    return time.monotonic() - t0


def mura_numbers(p: dict[str, Path]) -> dict[str, float | None]:
    """The MURA demo's numbers: image- and study-level AUC, study-level sensitivity, specificity and kappa."""
    m = json.loads(p["valid_metrics"].read_text())
    il, st = m.get("image_level", {}), m.get("study_level", {})
    return {"image_auc": il.get("auc"), "study_auc": st.get("auc"), "study_sensitivity": st.get("sensitivity"),
            "study_specificity": st.get("specificity"), "study_kappa": st.get("kappa")}


def key_numbers(p: dict[str, Path], lung_crops: bool = False) -> dict[str, float | None]:
    """The numbers printed at the end and put at the top of the report (with ``lung_crops``, the CNN's on the
    lung crops too)."""
    val = json.loads(p["val_metrics"].read_text())
    test = json.loads(p["test_metrics"].read_text())
    clf = json.loads(p["classifier"].read_text())
    cnn = json.loads(p["cnn_val_metrics"].read_text()).get("image_level", {})
    det_test = json.loads(p["det_test_metrics"].read_text())
    heat = json.loads((p["heatmaps"] / "summary.json").read_text())
    il = val.get("image_level", {})
    coco = val.get("coco", {})
    return {
        "mAP40": val.get("mAP40"),
        "coco_mAP40": val.get("coco_mAP40"),
        "coco_AP": coco.get("AP"),
        "coco_AP50": coco.get("AP50"),
        "froc_mean": (val.get("froc") or {}).get("mean"),
        "auc": il.get("auc"),
        "f1": il.get("f1"),
        "sensitivity": il.get("sensitivity"),
        "specificity": il.get("specificity"),
        "classifier_auc": (clf.get("metrics") or {}).get("auc"),
        "cnn_auc": cnn.get("auc"),
        "cnn_auc_macro": cnn.get("auc_macro"),
        "pointing_game": heat.get("pointing_game"),
        "test_mAP40": test.get("mAP40"),
        "test_auc": (test.get("image_level") or {}).get("auc"),
        "test_auc_detection": (det_test.get("image_level") or {}).get("auc"),
        **(lung_crop_numbers(p) if lung_crops else {}),
    }


def lung_crop_numbers(p: dict[str, Path]) -> dict[str, float | None]:
    """The CNN's held-out AUCs on the lung crops (``--lung-crops``)."""
    il = json.loads(p["lung_cnn_val_metrics"].read_text()).get("image_level", {})
    return {"cnn_auc_lung_crops": il.get("auc"), "cnn_auc_macro_lung_crops": il.get("auc_macro")}


def lung_crop_facts(p: dict[str, Path]) -> dict[str, Any]:
    """What the lung-crop comparison rests on: whether both CNNs were scored on the same held-out images, how much of
    each image the crops kept, the crops' problems, and the AUC interval of the crop CNN."""
    import pandas as pd

    def held_out(val_json: Path) -> set[str]:
        return {str(im.get("image_uid") or Path(im["file_name"]).stem) for im in json.loads(val_json.read_text())["images"]}

    whole, crops = held_out(p["val_json"]), held_out(p["lung_val_json"])
    meta = pd.read_csv(p["lung_prepared"] / "meta.csv", dtype={"image_id": str})
    kept = ((meta["crop_x1"] - meta["crop_x0"]) * (meta["crop_y1"] - meta["crop_y0"])
            / (meta["orig_width"] * meta["orig_height"]))
    summary = json.loads((p["lung_prepared"] / "summary.json").read_text())
    il = json.loads(p["lung_cnn_val_metrics"].read_text()).get("image_level", {})
    return {"held_out_images": {"whole": len(whole), "crops": len(crops)}, "same_held_out_images": whole == crops,
            "margin": LUNG_CROP_MARGIN,
            "area_kept": {"mean": float(kept.mean()), "min": float(kept.min()), "max": float(kept.max())},
            "crop_problems": summary.get("problems", {}), "cnn_auc_ci95": (il.get("ci") or {}).get("auc")}


def readers_verdicts(s: DemoSettings, p: dict[str, Path]) -> dict[str, dict[str, Any] | None]:
    """The readers tool's verdict on the demo's synthetic readers and, for vindr-cxr, the committed one on the real
    Kaggle VinBigData train.csv, for the report's readers section."""
    from detx.evaluation.reader_agreement import readers_verdict
    from detx.synthetic.real_stats import load_real_readers_verdict

    synthetic = readers_verdict(json.loads((p["readers"] / "readers.json").read_text()))
    return {"synthetic": synthetic, "real": load_real_readers_verdict() if s.dataset == "vindr-cxr" else None}


#: the headline numbers that get a bootstrap 95% interval in results.json (held-out fold and synthetic test set)
HEADLINE = ("mAP40", "auc", "cnn_auc", "test_mAP40", "test_auc", "test_auc_detection")
N_BOOT = 1000


def headline_intervals(s: DemoSettings, p: dict[str, Path], n_boot: int = N_BOOT) -> dict[str, list[float] | None]:
    """Percentile bootstrap 95% intervals (images resampled, ``n_boot`` times, seed 0) of :data:`HEADLINE`: the
    challenge metric (:func:`~detx.evaluation.vinbigdata.bootstrap_map_ci`) and the image-level AUC from the
    detections (:func:`~detx.evaluation.image_level.bootstrap_ci`) of the held-out fold and of the test set, scored
    against the same ground truth as ``tools/evaluate.py``; the CNN's AUC interval is the one its evaluation wrote."""
    from detx.core.image_scores import image_scores_from_predictions
    from detx.core.predictions import Predictions
    from detx.core.submission import read_submission
    from detx.evaluation.ground_truth import load_ground_truth
    from detx.evaluation.image_level import bootstrap_ci
    from detx.evaluation.vinbigdata import bootstrap_map_ci

    raw_test_gt = p["raw"] / DATASETS[s.dataset]["test_gt"]
    out: dict[str, list[float] | None] = {}
    for prefix, gt_path, sub_path, auc_key in (("", p["val_json"], p["val_submission"], "auc"),
                                               ("test_", raw_test_gt, p["submission"], "test_auc"),
                                               (None, raw_test_gt, p["det_submission"], "test_auc_detection")):
        gts = load_ground_truth(gt_path)
        k = len(gts.classes)
        preds = dict(read_submission(sub_path, strict=False, num_classes=k + 1, image_ids=list(gts.gt)))
        if prefix is not None:
            ci = bootstrap_map_ci(gts.gt, preds, num_classes=k, n_boot=n_boot)
            out[f"{prefix}mAP40"] = list(ci) if ci else None
        ids = list(gts.gt)
        labels = [int(len(gts.gt[i][1]) > 0) for i in ids]
        scores = [image_scores_from_predictions(preds.get(i, Predictions()), k) for i in ids]
        auc = bootstrap_ci(labels, scores, 0.5, n_boot=n_boot)["auc"]
        out[auc_key] = list(auc) if auc else None
    cnn_ci = (json.loads(p["cnn_val_metrics"].read_text()).get("image_level", {}).get("ci") or {}).get("auc")
    out["cnn_auc"] = list(cnn_ci) if cnn_ci else None
    return {k: out.get(k) for k in HEADLINE}


def write_results(s: DemoSettings, p: dict[str, Path], numbers: dict[str, float | None],
                  timings: dict[str, float], lung_crops: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results.json``: the key numbers, the bootstrap 95% intervals of the headline ones, the settings and the
    environment that made them (the README and docs/results.md quote this file, through tools/results_doc.py);
    ``lung_crops``: :func:`lung_crop_facts` when the demo ran with them."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import detectron2
    import torch

    from detx.core.machine import cpu_model

    old: dict[str, Any] = {}
    if p["results"].exists():
        try:
            old = json.loads(p["results"].read_text())
        except (OSError, ValueError):
            old = {}
    before = old.get("step_seconds") or {}
    step_seconds = {name: round(secs if secs > 0 else float(before.get(name, 0.0)), 1)
                    for name, secs in timings.items()}
    # the demo's own time; the opt-in lung-crop comparison's is kept beside it, so the two stay comparable
    extra = {st.name for st in lung_crop_steps(s)} if s.lung_crops else set()
    seconds = round(sum(v for k, v in step_seconds.items() if k not in extra), 1)
    if lung_crops is not None:
        lung_crops = {**lung_crops, "seconds": round(sum(v for k, v in step_seconds.items() if k in extra), 1)}
    if seconds == 0 and not before:  # everything reused from a results.json written before step_seconds existed
        seconds = float(old.get("seconds") or 0.0)
    results = {
        "numbers": numbers,
        "ci95": headline_intervals(s, p) if s.dataset != "mura" else {},
        "n_boot": N_BOOT,
        **({"lung_crops": lung_crops} if lung_crops else {}),
        "settings": s.recorded(),
        # a step reused from an earlier run keeps the seconds it took then: "seconds" is what making these files took
        "step_seconds": step_seconds,
        "seconds": seconds,
        "environment": {
            "python": platform.python_version(),
            **{d: version(d) for d in ("torch", "torchvision", "numpy", "opencv-python-headless",
                                       "albumentations", "pandas", "scikit-learn")},
            "detectron2": f"{detectron2.__version__} ({Path(detectron2.__file__).parent.parent.name})",
            "cpu_threads": os.cpu_count(),
            # the same seed and lock give other numbers on another CPU (numpy's AVX-512F kernels move a few synthetic
            # pixels): part of the environment (docs/reproducibility.md)
            "cpu": cpu_model(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
    }
    write_json(p["results"], results, indent=2)
    return results


def check_settings(s: DemoSettings, fresh: bool = False) -> None:
    """Tie ``s.out`` to ``s``: a folder made with other settings is refused (its results would be reused and
    labelled with the new settings) unless ``fresh``, which deletes it first.

    Raises:
        InputError: the folder holds a demo made with other settings (the differences are named).
    """
    record = s.out / SETTINGS_FILE
    if fresh and s.out.exists():
        shutil.rmtree(s.out)
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            before = {}
        before = with_unrecorded(before, s.dataset)  # made before a setting was recorded: its value then
        now = s.recorded()
        diff = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v and k not in ADDITIVE_SETTINGS}
        if diff:
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise InputError(f"{s.out} holds a demo made with other settings ({changes}); its results would be "
                             "reused under the new settings: pass --fresh to delete it and start again, or choose "
                             "another --out")
    elif s.out.exists() and any(s.out.iterdir()):
        raise InputError(f"{s.out} is not empty and holds no {SETTINGS_FILE}: not a demo folder of this version; "
                         "pass --fresh to delete it and start again, or choose another --out")
    s.out.mkdir(parents=True, exist_ok=True)
    write_json(record, s.recorded(), indent=2)


def run_demo(s: DemoSettings, quiet: bool = False, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) every step, write the report, and return the key numbers and the timings.

    Raises:
        InputError: ``s.out`` was made with other settings (see :func:`check_settings`).
        DemoError: a step failed.
    """
    check_settings(s, fresh)
    p = paths(s)
    log_path = s.out / "demo.log"
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    for step in build_steps(s):
        if step.done():
            print(f"\n==> {step.name}: done already ({', '.join(str(o) for o in step.outputs)})", flush=True)
            timings[step.name] = 0.0
            continue
        timings[step.name] = run_step(step, log_path, quiet=quiet)
    lungs = lung_crop_facts(p) if s.lung_crops else None  # lung_crops is refused for MURA (DemoSettings)
    if s.dataset == "mura":
        numbers = mura_numbers(p)
        write_mura_report(s, p, numbers, timings)
    else:
        numbers = key_numbers(p, lung_crops=s.lung_crops)
        write_demo_report(s, p, numbers, timings, readers=readers_verdicts(s, p), lung_crops=lungs)
    results = write_results(s, p, numbers, timings, lung_crops=lungs)
    numbers_total = time.monotonic() - t_start
    print(f"\nreport: {p['report']}\nresults: {p['results']}\nsubmission: {p['submission']}\n"
          f"total time: {numbers_total:.0f} s\n")
    for k, v in numbers.items():
        print(f"{k} {'n/a' if v is None else f'{v:.3f}'}")
    print(f"\nbootstrap 95% intervals ({N_BOOT} resamples of the images):")
    for k, ci in results["ci95"].items():
        print(f"{k}_ci95 {'n/a' if not ci else f'{ci[0]:.3f} {ci[1]:.3f}'}")
    return {"numbers": numbers, "timings": timings, "paths": {k: str(v) for k, v in p.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detx.workflows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="vindr-cxr", choices=sorted(DATASETS))
    parser.add_argument("--out", default="output/demo", help="output folder (default output/demo)")
    def default(name: str) -> str:  # "default 160 (mura: 1200)"
        extra = ", ".join(f"{d}: {v[name]}" for d, v in DATASET_DEFAULTS.items() if name in v)
        return f"default {getattr(DemoSettings, name)}" + (f" ({extra})" if extra else "")

    parser.add_argument("--n-train", type=int, default=None, help=f"training images, {default('n_train')}")
    parser.add_argument("--n-test", type=int, default=None, help=f"test images, {default('n_test')}")
    parser.add_argument("--size", type=int, default=None, help=f"PNG longest side, {default('size')}")
    parser.add_argument("--max-iter", type=int, default=None, help=f"detector iterations, {default('max_iter')}")
    parser.add_argument("--eval-period", type=int, default=None,
                        help=f"iterations between evaluations, {default('eval_period')}")
    parser.add_argument("--cls-max-iter", type=int, default=None,
                        help=f"iterations of the tiny image classifier, {default('cls_max_iter')}")
    parser.add_argument("--cls-pool", default=None, choices=["avg", "max", "lse"],
                        help=f"the image classifier's MODEL.CLASSIFIER.POOL, {default('cls_pool')}")
    parser.add_argument("--cls-feature", default=None, choices=list(CLS_FEATURES),
                        help=f"the backbone stage the image classifier pools, {default('cls_feature')}")
    parser.add_argument("--cls-freeze-at", type=int, default=None, choices=range(6), metavar="{0..5}",
                        help="the image classifier's MODEL.BACKBONE.FREEZE_AT (stages kept as they start), "
                             f"{default('cls_freeze_at')}")
    parser.add_argument("--lung-crops", action="store_true",
                        help="chest demo: also train the CNN on lung-field crops and show it beside the whole-image "
                             "one (about 3.5 more minutes; an existing demo folder is reused)")
    parser.add_argument("--seed", type=int, default=DemoSettings.seed)
    parser.add_argument("--quiet", action="store_true", help="only the step headers and the final numbers")
    parser.add_argument("--fresh", action="store_true",
                        help="delete --out first (needed when it holds a demo made with other settings)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        s = DemoSettings.for_dataset(args.dataset, out=Path(args.out), n_train=args.n_train, n_test=args.n_test,
                                     size=args.size, max_iter=args.max_iter, eval_period=args.eval_period,
                                     cls_max_iter=args.cls_max_iter, cls_pool=args.cls_pool,
                                     cls_feature=args.cls_feature, cls_freeze_at=args.cls_freeze_at,
                                     lung_crops=args.lung_crops or None,
                                     seed=args.seed)
        run_demo(s, quiet=args.quiet, fresh=args.fresh)
    except DetxError as e:
        print(f"demo: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("demo: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
