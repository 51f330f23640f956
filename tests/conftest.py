"""Shared pytest fixtures: tiny synthetic datasets generated once per session, GPU skipping.

Fixtures that build on each other (raw synthetic files -> prepared dataset -> trained tiny model)
are session-scoped so the whole suite generates, prepares and trains each at most once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep the 2-core CI machine responsive: each test process uses one intra-op thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing means no GPU either
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------------------------------- scripts

def load_script(relpath: str):
    """A command-line script of the repository (``tools/predict.py``, ``datasets/prepare_mura.py``) as a module, so
    tests call its ``main`` in-process."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / relpath
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------- synthetic
# Raw synthetic datasets in the real layouts (detx.synthetic.generator), generated once per session.


@pytest.fixture(scope="session")
def synthetic_cxr_dir(tmp_path_factory):
    """Kaggle VinBigData layout: train.csv, train/*.dicom (24), test/*.dicom (4), sample_submission.csv,
    test_ground_truth.csv; images 96-192 px, the vinbigdata profile (docs/synthetic.md): all 14 classes with the real mix, the
    R8+R9+R10 panel, unanimous calls; half the images abnormal (not the real 0.707 normal, which would leave 7 of 24
    abnormal images for the tests downstream), seed 0."""
    from detx.synthetic.generator import generate_dataset

    out = tmp_path_factory.mktemp("synthetic_cxr")
    generate_dataset(out, dataset="vindr-cxr", n_train=24, n_test=4, seed=0, min_size=96, max_size=192,
                     normal_fraction=0.5, profile="vinbigdata", progress=False)
    return out


@pytest.fixture(scope="session")
def synthetic_spinexr_dir(tmp_path_factory):
    """VinDr-SpineXR layout: annotations/{train,test}.csv, train_images/*.dicom (16), test_images/*.dicom (4);
    1-3 images per study, images 96-192 px, all 7 classes, seed 0."""
    from detx.synthetic.generator import generate_dataset

    out = tmp_path_factory.mktemp("synthetic_spinexr")
    generate_dataset(out, dataset="spinexr", n_train=16, n_test=4, seed=0, min_size=96, max_size=192,
                     progress=False)
    return out


# ----------------------------------------------------------------------------------------- prepared
# The synthetic datasets run through data preparation (detx.workflows.prepare), once per session:
# OUT/images/*.png (longest side 128), meta.csv, annotations/{all,train_fold{0,1},val_fold{0,1}}.json.


@pytest.fixture(scope="session")
def prepared_cxr_dir(synthetic_cxr_dir, tmp_path_factory):
    """synthetic_cxr_dir's train set prepared: --size 128, WBF, 2 folds, seed 0 (14 Kaggle classes)."""
    from detx.workflows.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared_cxr")
    prepare_dataset(dataset="vindr-cxr", csv=synthetic_cxr_dir / "train.csv", dicom_dir=synthetic_cxr_dir / "train",
                    out=out, size=128, folds=2, seed=0, workers=1, report=False, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_spinexr_dir(synthetic_spinexr_dir, tmp_path_factory):
    """synthetic_spinexr_dir's train set prepared: --size 128, WBF, 2 study-grouped folds, seed 0 (7 classes)."""
    from detx.workflows.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared_spinexr")
    prepare_dataset(dataset="spinexr", csv=synthetic_spinexr_dir / "annotations" / "train.csv",
                    dicom_dir=synthetic_spinexr_dir / "train_images", out=out, size=128, folds=2, seed=0,
                    workers=1, report=False, progress=False)
    return out


# ---------------------------------------------------------------------------------------- inference
# A random-init tiny detector saved as a checkpoint (no training): predictor/CLI tests need weights that
# load, not weights that detect. The class logits are scaled down so scores are distinct (not all 1.0).

TINY_CONFIG = str(Path(__file__).resolve().parent.parent / "configs/quick_schedules/vindr_cxr_tiny.yaml")


def save_random_checkpoint(out_dir, name: str = "model_random", opts=(), config: str = TINY_CONFIG):
    """Build a tiny config's model (default: the Faster R-CNN one) with seed 0 and save it with
    DetectionCheckpointer; returns the .pth."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    cfg = get_detx_cfg(config, ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    # Faster / Mask R-CNN: roi_heads.box_predictor.cls_score; RetinaNet: head.cls_score (its bias holds the 0.01 prior)
    head = getattr(getattr(model, "roi_heads", None), "box_predictor", None) or getattr(model, "head", None)
    if isinstance(getattr(head, "cls_score", None), torch.nn.Module):
        with torch.no_grad():
            head.cls_score.weight.mul_(0.02)
    DetectionCheckpointer(model, save_dir=str(out_dir)).save(name)
    return out_dir / f"{name}.pth"


@pytest.fixture(scope="session")
def tiny_random_checkpoint(tmp_path_factory):
    """(config path, weights path) of a random-init tiny Faster R-CNN (14 classes)."""
    return TINY_CONFIG, save_random_checkpoint(tmp_path_factory.mktemp("tiny_random"))


# ------------------------------------------------------------------------------------------ trained
# The tiny config trained for a few iterations on prepared_cxr_dir through tools/train_net.py (CPU):
# shared by the training, inference and demo tests.

# The overrides of that run (besides DETX.DATA_ROOT and OUTPUT_DIR); a --resume must repeat them.
TRAINED_TINY_OPTS = (
    "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "8", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "4",
    "TEST.EVAL_PERIOD", "4", "DETX.VAL_PERIOD", "4", "DETX.FOLD", "0", "SOLVER.WARMUP_ITERS", "2",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
)


def run_train_net(*args, check: bool = True):
    """Run tools/train_net.py in a subprocess (repo root as cwd); returns the CompletedProcess."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "tools/train_net.py", *map(str, args)], cwd=root, capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def trained_tiny_dir(prepared_cxr_dir, tmp_path_factory):
    """OUTPUT_DIR of the tiny Faster R-CNN trained 8 iterations (batch 2, 128 px) on prepared_cxr_dir fold 0:
    config.yaml, model_final.pth, model_best.pth (+ .json), model_0000003.pth, last_checkpoint, metrics.json
    (val_total_loss and vinbigdata/mAP40 at iterations 3 and 8), curves.png, inference/."""
    out = tmp_path_factory.mktemp("trained_tiny")
    proc = run_train_net("--config-file", TINY_CONFIG, "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out,
                         *TRAINED_TINY_OPTS)
    (out / "train_stdout.txt").write_text(proc.stdout)  # the console output, for the closing-summary test
    return out


# ------------------------------------------------------------------------------------------ classifier
# The tiny image classifier (P(abnormal) + 14 findings) trained a few iterations on prepared_cxr_dir fold 0.

CLS_TINY_CONFIG = str(Path(__file__).resolve().parent.parent / "configs/quick_schedules/vindr_cxr_cls_tiny.yaml")
TRAINED_CLS_OPTS = (
    "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "8", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.CHECKPOINT_PERIOD", "4",
    "TEST.EVAL_PERIOD", "4", "DETX.VAL_PERIOD", "4", "DETX.FOLD", "0", "SOLVER.WARMUP_ITERS", "2",
    "DETX.EVAL.BOOTSTRAP", "50", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
)


@pytest.fixture(scope="session")
def trained_cls_dir(prepared_cxr_dir, tmp_path_factory):
    """OUTPUT_DIR of the tiny classifier trained 8 iterations (batch 4, 128 px) on prepared_cxr_dir fold 0:
    config.yaml, model_final.pth, model_best.pth, metrics.json (cls/* and val_total_loss at iterations 3 and 8)."""
    out = tmp_path_factory.mktemp("trained_cls")
    proc = run_train_net("--config-file", CLS_TINY_CONFIG, "DETX.DATA_ROOT", prepared_cxr_dir, "OUTPUT_DIR", out,
                         *TRAINED_CLS_OPTS)
    (out / "train_stdout.txt").write_text(proc.stdout)
    return out


# ---------------------------------------------------------------------------------------- real data

def vinbigdata_csv() -> Path:
    """The real Kaggle VinBigData train.csv from the installed torchxrayvision wheel (a [dev] extra)."""
    txv = pytest.importorskip("torchxrayvision", reason="torchxrayvision (a [dev] extra) ships the real VinBigData "
                                                        "train.csv; install it with pip install -e .[dev]")
    path = Path(txv.__file__).parent / "data" / "vinbigdata-train.csv.gz"
    if not path.is_file():
        pytest.skip(f"this torchxrayvision has no {path.name}")
    return path
