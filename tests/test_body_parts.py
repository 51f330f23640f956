"""MURA body parts: the body-part metrics against scikit-learn, the 7-way and 14-way heads (loss, probabilities), a
tiny training run whose evaluator scores the head, and the per-part report (counts, unknown parts, per-part
thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import load_script, run_train_net
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from detx.core.classes import MURA_BODY_PARTS
from detx.evaluation.body_part import body_part_index, body_part_metrics, per_part_thresholds
from detx.evaluation.image_level import choose_threshold
from detx.synthetic.mura import generate_mura

ROOT = Path(__file__).resolve().parents[1]
MURA_TINY = str(ROOT / "configs/quick_schedules/mura_cls_tiny.yaml")
prepare_mura = load_script("datasets/prepare_mura.py").main
body_parts_tool = load_script("tools/body_parts.py")


def test_body_part_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    n, parts = 300, list(MURA_BODY_PARTS)
    true = rng.integers(0, 7, n)
    logits = rng.normal(size=(n, 7)) + 1.5 * np.eye(7)[true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true_with_unknown = true.copy()
    true_with_unknown[:10] = -100  # 10 images of an unknown part: counted, not scored
    m = body_part_metrics(true_with_unknown, probs, parts)
    t, p = true[10:], probs[10:]
    pred = p.argmax(axis=1)
    assert m["n"] == n - 10 and m["unknown"] == 10
    assert m["accuracy"] == pytest.approx(accuracy_score(t, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(t, pred, average="macro"))
    assert np.array_equal(np.array(m["confusion"]), confusion_matrix(t, pred, labels=range(7)))
    prec = precision_score(t, pred, average=None, labels=range(7), zero_division=0)
    rec = recall_score(t, pred, average=None, labels=range(7), zero_division=0)
    for k, part in enumerate(parts):
        assert m["per_part"][part]["precision"] == pytest.approx(prec[k])
        assert m["per_part"][part]["recall"] == pytest.approx(rec[k])
        assert m["per_part"][part]["auc"] == pytest.approx(roc_auc_score(t == k, p[:, k]))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(t, p, multi_class="ovr", average="macro"))
    assert [body_part_index(parts, v) for v in ("XR_WRIST", "wrist", "xr_elbow", "XR_KNEE", None, "")] == \
        [6, 6, 0, -100, -100, -100]


def _tiny_model(mode: str):
    from detectron2.modeling import build_model

    from detx.engine.config import get_detx_cfg

    torch.manual_seed(0)
    return build_model(get_detx_cfg(MURA_TINY, ["MODEL.DEVICE", "cpu", "MODEL.CLASSIFIER.BODY_PART_HEAD", mode]))


def test_part_head_loss_and_joint_probabilities():
    model = _tiny_model("parts")
    inputs = [{"image": torch.rand(3, 64, 48) * 255, "cls_targets": torch.tensor([float(i % 2)]), "body_part": bp}
              for i, bp in enumerate(["XR_WRIST", "XR_HAND", "XR_KNEE", "XR_ELBOW"])]  # XR_KNEE: unknown, ignored
    model.train()
    losses = model(inputs)
    images = model.preprocess_image(inputs)
    pooled = model.pooled_from_tensor(images.tensor, images.image_sizes)
    want = F.cross_entropy(model.body_part_head.layer(pooled)[[0, 1, 3]], torch.tensor([6, 3, 0]))
    assert losses["loss_body_part"].item() == pytest.approx(want.item(), rel=1e-5)
    model.eval()
    out = model(inputs)
    assert out[0]["cls_probs"].shape == (1 + 7,)
    assert out[0]["cls_probs"][1:].sum().item() == pytest.approx(1.0, abs=1e-5)
    # the 14-way model: P(abnormal) is the sum of the abnormal halves, the parts the sums over the label
    joint = _tiny_model("joint").eval()
    images = joint.preprocess_image(inputs)
    pooled = joint.pooled_from_tensor(images.tensor, images.image_sizes)
    p14 = torch.softmax(joint.body_part_head.layer(pooled), dim=1).view(4, 7, 2)
    got = torch.stack([o["cls_probs"] for o in joint(inputs)])
    torch.testing.assert_close(got[:, 0], p14[:, :, 1].sum(dim=1))
    torch.testing.assert_close(got[:, 1:], p14.sum(dim=2))
    joint.train()  # batch-norm statistics of the batch: the pooled features of training mode
    pooled = joint.pooled_from_tensor(images.tensor, images.image_sizes)
    target = torch.tensor([2 * 6 + 0, 2 * 3 + 1, 2 * 0 + 1])  # 2 * part + abnormal
    want = F.cross_entropy(joint.body_part_head.layer(pooled)[[0, 1, 3]], target)
    assert joint(inputs)["loss_body_part"].item() == pytest.approx(want.item(), rel=1e-4)


@pytest.fixture(scope="module")
def prepared_mura(tmp_path_factory):
    d = tmp_path_factory.mktemp("mura_parts")
    generate_mura(d / "raw", n_train=40, n_valid=20, seed=3, min_size=48, max_size=64, progress=False)
    assert prepare_mura(["--root", str(d / "raw"), "--out", str(d / "prep"), "--size", "64", "--folds", "2",
                         "--workers", "1", "--quiet"]) == 0
    return d / "prep"


@pytest.fixture(scope="module")
def parts_model(prepared_mura, tmp_path_factory):
    """The tiny MURA classifier with a 7-way body-part head, trained for 4 iterations: its output folder."""
    out = tmp_path_factory.mktemp("parts_model") / "train"
    run_train_net("--config-file", MURA_TINY, "DETX.DATA_ROOT", prepared_mura, "OUTPUT_DIR", out, "DETX.FOLD", "0",
                  "MODEL.DEVICE", "cpu", "MODEL.CLASSIFIER.BODY_PART_HEAD", "parts", "SOLVER.MAX_ITER", "4",
                  "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "4", "DETX.VAL_PERIOD", "4",
                  "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.WARMUP_ITERS", "1", "DETX.EVAL.BOOTSTRAP", "0",
                  "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
                  "INPUT.MAX_SIZE_TEST", "64")
    return out


def test_training_scores_the_body_part_head(parts_model):
    out = parts_model
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines() if x.strip()]
    assert any("loss_body_part" in r for r in rows)
    scored = [r for r in rows if "body_part/accuracy" in r]
    assert scored and 0.0 <= scored[-1]["body_part/accuracy"] <= 1.0
    assert "cls/auc" in scored[-1]


def test_body_part_probabilities_reach_the_csv_the_one_image_answer_and_the_exported_model(parts_model, prepared_mura,
                                                                                            tmp_path):
    """predict --classification-out writes body_part and part_<PART> columns (the head's softmax, so they sum to 1);
    the one-image API answers the same probabilities; the exported TorchScript file carries the parts in its
    metadata and predict --exported writes the same CSV."""
    from detx import XrayPredictor
    from detx.inference.export import read_exported_info

    predict = load_script("tools/predict.py")
    export = load_script("tools/export.py")
    cfg, weights = parts_model / "config.yaml", parts_model / "model_final.pth"
    valid = prepared_mura / "annotations" / "valid.json"
    csv = tmp_path / "eager.csv"
    assert predict.main(predict.parse_args(["--quiet", "--classifier-config", str(cfg), "--classifier-weights",
                                            str(weights), "--input", str(valid), "--classification-out",
                                            str(csv)])) == 0
    df = pd.read_csv(csv)
    part_cols = [f"part_{p}" for p in MURA_BODY_PARTS]
    assert list(df.columns[-8:]) == ["body_part", *part_cols]
    assert np.allclose(df[part_cols].sum(axis=1), 1.0, atol=1e-5)
    assert (df["body_part"] == df[part_cols].idxmax(1).str[len("part_"):]).all()
    assert not any(c.startswith("p_part") or c.startswith("p_XR") for c in df.columns)  # not read as classes

    row = df.iloc[0]
    image = json.loads(valid.read_text())["images"][0]
    assert str(row["image_id"]) == str(image["id"]) or row["image_id"] == Path(image["file_name"]).stem
    answer = XrayPredictor(classifier_config=cfg, classifier_weights=weights, opts=["MODEL.DEVICE", "cpu"]).predict(
        prepared_mura / "images" / image["file_name"], image_id=str(row["image_id"]))
    assert list(answer.body_part_probs) == list(MURA_BODY_PARTS)
    assert [answer.body_part_probs[p] for p in MURA_BODY_PARTS] == pytest.approx(row[part_cols].tolist(), abs=1e-5)

    exported = tmp_path / "parts.ts"
    assert export.main(export.parse_args(["--config-file", str(cfg), "--weights", str(weights), "--format",
                                          "torchscript", "--out", str(exported)])) == 0
    info = read_exported_info(exported)
    assert info.body_parts == list(MURA_BODY_PARTS) and info.prob_names[-7:] == [f"body_part:{p}" for p in
                                                                                  MURA_BODY_PARTS]
    csv_exported = tmp_path / "exported.csv"
    assert predict.main(predict.parse_args(["--quiet", "--exported", str(exported), "--input", str(valid),
                                            "--classification-out", str(csv_exported)])) == 0
    de = pd.read_csv(csv_exported)
    assert list(de.columns) == list(df.columns) and (de["body_part"] == df["body_part"]).all()
    assert np.allclose(de[part_cols], df[part_cols], atol=1e-5) and np.allclose(de["p_abnormal"], df["p_abnormal"],
                                                                                atol=1e-5)


def test_report_counts_thresholds_and_unknown_parts(prepared_mura, tmp_path, capsys):
    meta = pd.read_csv(prepared_mura / "meta.csv", dtype={"image_id": str, "study_id": str})
    rng = np.random.default_rng(1)
    pred = meta[["image_id"]].assign(p_abnormal=np.clip(meta["label"] * 0.4 + rng.random(len(meta)) * 0.6, 0, 1))
    pred.to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "report"
    code = body_parts_tool.main(body_parts_tool.get_parser().parse_args(
        ["--data", str(prepared_mura), "--out", str(out), "--pred", str(tmp_path / "pred.csv")]))
    assert code == 0
    table = pd.read_csv(out / "body_parts.csv")
    for r in table.itertuples():
        g = meta[(meta["body_part"] == r.body_part) & (meta["split"] == r.split)]
        assert (r.images, r.studies, r.abnormal_studies) == (len(g), g["study_id"].nunique(),
                                                             int(g.groupby("study_id")["label"].max().sum()))
    assert (out / "body_parts.png").stat().st_size > 0
    report = json.loads((out / "body_parts.json").read_text())
    studies = meta.merge(pred, on="image_id").groupby("study_id").agg(
        part=("body_part", "first"), label=("label", "max"), p=("p_abnormal", "mean"))
    assert report["thresholds"]["_global"]["threshold"] == pytest.approx(choose_threshold(studies["label"],
                                                                                           studies["p"]))
    want = per_part_thresholds(studies["part"], studies["label"], studies["p"])
    for part, t in want.items():
        assert report["thresholds"][part]["threshold"] == pytest.approx(t["threshold"])
    # an unknown body part: named, counted and skipped; --strict exits 1
    bad = tmp_path / "bad"
    bad.mkdir()
    meta.loc[:2, "body_part"] = "XR_KNEE"
    meta.to_csv(bad / "meta.csv", index=False)
    capsys.readouterr()
    assert body_parts_tool.main(body_parts_tool.get_parser().parse_args(["--data", str(bad), "--out",
                                                                          str(tmp_path / "r2")])) == 0
    assert "XR_KNEE (3 images)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r2" / "body_parts.json").read_text())["unknown"]["XR_KNEE"]["count"] == 3
    assert body_parts_tool.main(body_parts_tool.get_parser().parse_args(["--data", str(bad), "--out",
                                                                          str(tmp_path / "r3"), "--strict"])) == 1
