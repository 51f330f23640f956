"""Shared pytest fixtures: tiny synthetic datasets generated once per session, GPU skipping.

Fixtures that build on each other (raw synthetic files -> prepared dataset -> trained tiny model)
are session-scoped so the whole suite generates, prepares and trains each at most once.
"""

from __future__ import annotations

import os

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


# ---------------------------------------------------------------------------------------- synthetic
# Raw synthetic datasets in the real layouts (detx.data.synthetic), generated once per session.


@pytest.fixture(scope="session")
def synthetic_cxr_dir(tmp_path_factory):
    """Kaggle VinBigData layout: train.csv, train/*.dicom (24), test/*.dicom (4), sample_submission.csv,
    test_ground_truth.csv; images 96-192 px, the default 6 classes, seed 0."""
    from detx.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synthetic_cxr")
    generate_dataset(out, dataset="vindr-cxr", n_train=24, n_test=4, seed=0, min_size=96, max_size=192,
                     progress=False)
    return out


@pytest.fixture(scope="session")
def synthetic_spinexr_dir(tmp_path_factory):
    """VinDr-SpineXR layout: annotations/{train,test}.csv, train_images/*.dicom (16), test_images/*.dicom (4);
    1-3 images per study, images 96-192 px, all 7 classes, seed 0."""
    from detx.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synthetic_spinexr")
    generate_dataset(out, dataset="spinexr", n_train=16, n_test=4, seed=0, min_size=96, max_size=192,
                     progress=False)
    return out


# ----------------------------------------------------------------------------------------- prepared
# The synthetic datasets run through data preparation (detx.data.prepare), once per session:
# OUT/images/*.png (longest side 128), meta.csv, annotations/{all,train_fold{0,1},val_fold{0,1}}.json.


@pytest.fixture(scope="session")
def prepared_cxr_dir(synthetic_cxr_dir, tmp_path_factory):
    """synthetic_cxr_dir's train set prepared: --size 128, WBF, 2 folds, seed 0 (14 Kaggle classes)."""
    from detx.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared_cxr")
    prepare_dataset(dataset="vindr-cxr", csv=synthetic_cxr_dir / "train.csv", dicom_dir=synthetic_cxr_dir / "train",
                    out=out, size=128, folds=2, seed=0, workers=1, report=False, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_spinexr_dir(synthetic_spinexr_dir, tmp_path_factory):
    """synthetic_spinexr_dir's train set prepared: --size 128, WBF, 2 study-grouped folds, seed 0 (7 classes)."""
    from detx.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared_spinexr")
    prepare_dataset(dataset="spinexr", csv=synthetic_spinexr_dir / "annotations" / "train.csv",
                    dicom_dir=synthetic_spinexr_dir / "train_images", out=out, size=128, folds=2, seed=0,
                    workers=1, report=False, progress=False)
    return out
