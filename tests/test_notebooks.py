"""The Colab notebooks run headless on synthetic data with tiny parameters (the Colab install cell skipped)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import CLS_TINY_CONFIG, TINY_CONFIG, TRAINED_CLS_OPTS, TRAINED_TINY_OPTS
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# The tiny run of the trained_tiny_dir fixture, minus what the notebook sets itself.
TINY_OPTS = [v for i, v in enumerate(TRAINED_TINY_OPTS)
             if not ({TRAINED_TINY_OPTS[i - (i % 2)]} & {"SOLVER.MAX_ITER", "TEST.EVAL_PERIOD", "DETX.FOLD"})]


def execute(name: str, params: dict, timeout: int = 600) -> nbformat.NotebookNode:
    """Run a notebook without its Colab install cell, with ``params`` assigned right after its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells = [c for c in nb.cells if "colab-install" not in c.metadata.get("tags", [])]
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or "".join(out.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


def n_images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def test_notebooks_have_install_and_parameters_cells():
    for name in ("train_vindr_cxr_colab.ipynb", "predict_submission_colab.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        tags = [c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"]
        assert tags[0] == ["colab-install"], name
        assert "detectron2.git" in nb.cells[[i for i, c in enumerate(nb.cells) if c.cell_type == "code"][0]].source
        assert ["parameters"] in tags, name


@pytest.mark.slow
def test_train_then_predict_notebooks(synthetic_cxr_dir, tmp_path):
    out_dir = tmp_path / "run"
    prepared = tmp_path / "prepared"
    nb = execute("train_vindr_cxr_colab.ipynb", {
        "CSV": str(synthetic_cxr_dir / "train.csv"), "DICOM_DIR": str(synthetic_cxr_dir / "train"),
        "PREPARED": str(prepared), "SIZE": 128, "FOLDS": 2, "FOLD": 0, "CONFIG": TINY_CONFIG,
        "OUTPUT_DIR": str(out_dir), "MAX_ITER": 4, "EVAL_PERIOD": 4, "EXTRA_OPTS": TINY_OPTS,
        "CLS_CONFIG": CLS_TINY_CONFIG, "CLS_OUTPUT_DIR": str(tmp_path / "cls"), "CLS_MAX_ITER": 4,
        "CLS_EXTRA_OPTS": list(TRAINED_CLS_OPTS[TRAINED_CLS_OPTS.index("SOLVER.IMS_PER_BATCH"):]),
    })
    text = outputs_text(nb)
    assert "held-out mAP@0.4 = " in text
    for f in ("model_best.pth", "model_final.pth", "curves.png", "val_metrics.json", "classifier.json"):
        assert (out_dir / f).exists(), f
    assert n_images(nb) >= 7  # EDA, curves, PR, FROC, ROC; the classifier's ROC and heatmaps
    assert "CNN P(abnormal) AUC = " in text and "pointing game = " in text
    assert (tmp_path / "cls" / "heatmaps" / "summary.json").exists()

    sub_path = tmp_path / "sub" / "submission.csv"
    nb = execute("predict_submission_colab.ipynb", {
        "CONFIGS": [str(out_dir / "config.yaml")], "WEIGHTS": [str(out_dir / "model_best.pth")],
        "TEST_INPUT": str(synthetic_cxr_dir / "test"), "DICOM_SIZE": 128,
        "CLASSIFIER": str(out_dir / "classifier.json"), "TTA": ["hflip"], "OUT": str(sub_path),
        "GT": str(synthetic_cxr_dir / "test_ground_truth.csv"), "NOFINDING_LOW": 0.0, "NOFINDING_HIGH": 0.0,
    })
    sub = pd.read_csv(sub_path)
    assert sorted(sub.image_id) == sorted(p.stem for p in (synthetic_cxr_dir / "test").glob("*.dicom"))
    assert "every row has a No-finding entry: True" in outputs_text(nb)
    assert (sub_path.parent / "metrics.json").exists()


def test_missing_dataset_stops_in_the_first_cell_that_uses_it(tmp_path):
    with pytest.raises(CellExecutionError) as err:
        execute("train_vindr_cxr_colab.ipynb", {"CSV": str(tmp_path / "nowhere" / "train.csv"),
                                                "DICOM_DIR": str(tmp_path), "PREPARED": str(tmp_path / "p")})
    assert "reader CSV (parameter CSV) not found" in str(err.value)
    assert "nowhere" in str(err.value)
