"""The image classifier's training recipes (docs/classifiers.md): SupCon two-stage training, a frozen backbone and its
feature cache, VGG16, initialisation from a detector checkpoint, and their bad inputs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLS_TINY_CONFIG, TRAINED_CLS_OPTS, run_train_net, save_random_checkpoint
from detectron2.modeling import build_model

import detx.engine.classifier  # noqa: F401 - registers DetxClassifier and the backbones
from detx.engine.checkpoint import CheckpointError, classifier_init_state
from detx.engine.classifier import supcon_loss
from detx.engine.config import get_detx_cfg
from detx.engine.feature_cache import FeatureCacheError, load_or_build_features
from detx.evaluation.cls_evaluator import knn_scores

ROOT = Path(__file__).resolve().parents[1]
Q = ROOT / "configs/quick_schedules"


def _cls_model(config: str = CLS_TINY_CONFIG, *opts: str):
    cfg = get_detx_cfg(config, ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _metric_rows(path: Path, key: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if key in r]


# ------------------------------------------------------------------------------------------------ SupCon

def _supcon_by_hand(z1, z2, labels, t):
    """Khosla et al.'s L_out written out anchor by anchor, with plain floats."""
    z = [np.asarray(v, float) / np.linalg.norm(v) for v in [*z1, *z2]]
    y = [*labels, *labels]
    total = 0.0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        log_denom = math.log(sum(math.exp(float(z[i] @ z[a]) / t) for a in others))
        pos = [p for p in others if y[p] == y[i]]
        total += -sum(float(z[i] @ z[p]) / t - log_denom for p in pos) / len(pos)
    return total / len(z)


def test_supcon_loss_hand_computed():
    z1 = [[1.0, 0.0], [0.0, 1.0]]
    z2 = [[0.6, 0.8], [0.8, 0.6]]
    # labels 0, 1: each anchor's only positive is its other view. Anchor z1[0]: similarities to z1[1], z2[0], z2[1]
    # are 0, 0.6, 0.8; with t = 0.5: -(1.2 - log(e^0 + e^1.2 + e^1.6)) = 1.0271...
    anchor0 = -(1.2 - math.log(1 + math.exp(1.2) + math.exp(1.6)))
    assert anchor0 == pytest.approx(1.02712, abs=1e-4)
    got = supcon_loss(torch.tensor(z1), torch.tensor(z2), torch.tensor([0, 1]), temperature=0.5)
    assert float(got) == pytest.approx(_supcon_by_hand(z1, z2, [0, 1], 0.5), rel=1e-6)
    # same label: three positives per anchor
    got_same = supcon_loss(torch.tensor(z1), torch.tensor(z2), torch.tensor([1, 1]), temperature=0.5)
    assert float(got_same) == pytest.approx(_supcon_by_hand(z1, z2, [1, 1], 0.5), rel=1e-6)
    # unnormalized inputs are normalized
    got_scaled = supcon_loss(3 * torch.tensor(z1), 2 * torch.tensor(z2), torch.tensor([0, 1]), temperature=0.5)
    assert float(got_scaled) == pytest.approx(float(got), rel=1e-6)


def test_supcon_loss_is_invariant_to_the_order_of_views_and_rewards_label_clusters():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    assert float(supcon_loss(z1, z2, y)) == pytest.approx(float(supcon_loss(z2, z1, y)), rel=1e-6)
    # embeddings that sit on their label's direction score lower than random ones
    centre = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    clustered = centre[y] + 0.01 * torch.randn(6, 4, generator=g)
    assert float(supcon_loss(clustered, clustered.flip(1).flip(1), y)) < float(supcon_loss(z1, z2, y))


def test_knn_scores_hand_computed():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], float)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # k=1: each row's nearest other row is its pair
    assert knn_scores(emb, np.array([0, 0, 1, 1]), k=1).tolist() == [0, 0, 1, 1]
    # k=2: the pair and the nearer of the other two
    assert knn_scores(emb, np.array([0, 1, 1, 1]), k=2).tolist() == [1.0, 0.5, 1.0, 1.0]


def test_supcon_model_two_views_and_embedding():
    _, model = _cls_model(str(Q / "vindr_cxr_cls_supcon_tiny.yaml"))
    model.train()
    g = torch.Generator().manual_seed(1)
    batch = [{"image": torch.rand(3, 64, 64, generator=g) * 255, "image2": torch.rand(3, 64, 64, generator=g) * 255,
              "cls_targets": torch.zeros(15).index_fill_(0, torch.tensor([0]), float(i % 2))} for i in range(4)]
    losses = model(batch)
    assert set(losses) == {"loss_supcon", "loss_cls"}
    losses["loss_cls"].backward()  # the online probe learns from detached features: no gradient reaches the backbone
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.weight.grad is not None
    model.eval()
    out = model([{"image": batch[0]["image"]}])[0]
    assert out["cls_probs"].shape == (15,) and float(out["embedding"].detach().norm()) == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------------------- frozen backbone

@pytest.mark.parametrize("config", ["vindr_cxr_cls_stage2_tiny.yaml", "vindr_cxr_cls_vgg16_frozen_tiny.yaml"])
def test_freezing_leaves_the_backbone_bit_identical(config):
    _, model = _cls_model(str(Q / config))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p is model.head.weight or p is model.head.bias for p in params)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(2)
    for step in range(3):
        batch = [{"image": torch.rand(3, 64, 64, generator=g) * 255,
                  "cls_targets": torch.tensor([float((i + step) % 2)] + [0.0] * 14)} for i in range(4)]
        loss = model(batch)["loss_cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.backbone.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights and batch-norm statistics alike
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head_before, model.head.weight)


def test_vgg16_backbone_shape_and_torchvision_weights(tmp_path):
    import torchvision

    cfg, model = _cls_model(str(Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml"))
    assert model.backbone.output_shape()["vgg"].channels == 512
    assert tuple(model.features(torch.zeros(1, 3, 64, 64)).shape) == (1, 512, 2, 2)
    ref = torchvision.models.vgg16(weights=None)
    torch.save(ref.state_dict(), tmp_path / "vgg16.pth")
    _, loaded = _cls_model(str(Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml"), "MODEL.VGG.WEIGHTS", str(tmp_path / "vgg16.pth"))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded.features(x), ref.features(x))
    torch.save({"features.0.weight": ref.features[0].weight}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG-16"):
        _cls_model(str(Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml"), "MODEL.VGG.WEIGHTS", str(tmp_path / "partial.pth"))


# ----------------------------------------------------------------------------------------- feature cache

def _png_dicts(tmp_path: Path, n: int = 5) -> list[dict]:
    import cv2

    g = np.random.default_rng(0)
    dicts = []
    for i in range(n):
        f = tmp_path / f"img{i}.png"
        cv2.imwrite(str(f), g.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        dicts.append({"file_name": str(f), "image_id": i, "height": 64, "width": 64})
    return dicts


def _loader(d: dict) -> dict:
    import cv2

    img = cv2.imread(d["file_name"])
    return {"image": torch.as_tensor(img.transpose(2, 0, 1).copy()).float(), "file_name": d["file_name"]}


def test_feature_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    import detx.engine.feature_cache as fc

    cfg, model = _cls_model(str(Q / "vindr_cxr_cls_stage2_tiny.yaml"))
    dicts = _png_dicts(tmp_path)
    calls = []
    real = fc.compute_features
    monkeypatch.setattr(fc, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "features.pt"
    feats, reused = load_or_build_features(cache, model, dicts, _loader, cfg)
    assert not reused and len(calls) == 1 and cache.is_file()
    # the cached vector is the model's own pooled feature of that image
    model.eval()
    one = model.preprocess_image([_loader(dicts[2])])
    assert torch.allclose(feats[dicts[2]["file_name"]], model.pooled_from_tensor(one.tensor, one.image_sizes)[0],
                          rtol=1e-4, atol=1e-3)
    feats2, reused = load_or_build_features(cache, model, dicts, _loader, cfg)
    assert reused and len(calls) == 1
    assert all(torch.equal(feats[k], feats2[k]) for k in feats)
    # a model whose features come from the cache does not run its backbone
    model.feature_cache = feats2
    monkeypatch.setattr(model.backbone, "forward", lambda x: pytest.fail("backbone ran despite the cache"))
    model([{"image": torch.zeros(3, 8, 8), "file_name": dicts[0]["file_name"]}])
    monkeypatch.undo()
    model.feature_cache = None

    # other weights: stale, refused, nothing computed
    first = next(model.backbone.parameters())
    saved = first.detach().clone()
    with torch.no_grad():
        first.add_(1e-3)
    with pytest.raises(FeatureCacheError, match="stale.*backbone weights"):
        load_or_build_features(cache, model, dicts, _loader, cfg)
    assert len(calls) == 1
    with torch.no_grad():
        first.copy_(saved)
    # an image written again (its mtime changes), or another image set: stale
    st = os.stat(dicts[0]["file_name"])
    os.utime(dicts[0]["file_name"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(FeatureCacheError, match="image files"):
        load_or_build_features(cache, model, dicts, _loader, cfg)
    os.utime(dicts[0]["file_name"], ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(FeatureCacheError, match="image files"):
        load_or_build_features(cache, model, dicts[:-1], _loader, cfg)
    # other preprocessing: stale
    cfg2 = get_detx_cfg(str(Q / "vindr_cxr_cls_stage2_tiny.yaml"), ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64"])
    with pytest.raises(FeatureCacheError, match="preprocessing"):
        load_or_build_features(cache, model, dicts, _loader, cfg2)
    # the original key still reuses it
    assert load_or_build_features(cache, model, dicts, _loader, cfg)[1]
    (tmp_path / "junk.pt").write_bytes(b"not a cache")
    with pytest.raises(FeatureCacheError, match="not a detx feature cache"):
        load_or_build_features(tmp_path / "junk.pt", model, dicts, _loader, cfg)


# ------------------------------------------------------------------------------ detector -> classifier

def test_detector_checkpoint_initialises_every_backbone_tensor(tiny_random_checkpoint, tmp_path):
    _, det_weights = tiny_random_checkpoint
    det = torch.load(det_weights, map_location="cpu", weights_only=False)["model"]
    _, model = _cls_model()
    to_load, report = classifier_init_state(model, det_weights, "build_resnet_backbone")
    backbone_keys = [k for k in model.state_dict() if k.startswith("backbone.")]
    assert sorted(k for k in to_load if k.startswith("backbone.")) == sorted(backbone_keys)
    for k in backbone_keys:
        assert torch.equal(to_load[k], det["backbone.bottom_up." + k[len("backbone."):]]), k
    assert report["source"] == ["detector"]
    assert any(k.startswith("backbone.fpn_") for k in report["not_loaded"])
    assert any(k.startswith("roi_heads.") for k in report["not_loaded"])
    assert report["left_at_init"] == ["head.weight", "head.bias"]
    missing, unexpected = model.load_state_dict(to_load, strict=False)
    assert missing == ["head.weight", "head.bias"] and not unexpected


def test_a_classifier_pooling_res4_takes_the_detector_up_to_res4(tiny_random_checkpoint):
    """The classifier builds its ResNet only up to IN_FEATURE's stage: every tensor it has comes from the detector,
    the detector's res5 is reported as not loaded."""
    _, det_weights = tiny_random_checkpoint
    det = torch.load(det_weights, map_location="cpu", weights_only=False)["model"]
    _, model = _cls_model(CLS_TINY_CONFIG, "MODEL.RESNETS.OUT_FEATURES", "['res4']", "MODEL.CLASSIFIER.IN_FEATURE",
                          "res4")
    assert model.stride == 16 and not any(k.startswith("backbone.res5.") for k in model.state_dict())
    to_load, report = classifier_init_state(model, det_weights, "build_resnet_backbone")
    backbone_keys = [k for k in model.state_dict() if k.startswith("backbone.")]
    assert sorted(k for k in to_load if k.startswith("backbone.")) == sorted(backbone_keys)
    for k in backbone_keys:
        assert torch.equal(to_load[k], det["backbone.bottom_up." + k[len("backbone."):]]), k
    res5 = sorted("backbone." + k[len("backbone.bottom_up."):] for k in det if k.startswith("backbone.bottom_up.res5."))
    assert res5 and sorted(k for k in report["not_loaded"] if k.startswith("backbone.res5.")) == res5


def test_another_backbone_family_is_refused(tiny_random_checkpoint, tmp_path):
    _, det_weights = tiny_random_checkpoint
    # a ResNet-34 detector (every ResNet-18 tensor exists in it, with more blocks) and a ResNet-18 of other widths
    r34 = save_random_checkpoint(tmp_path, "r34", opts=("MODEL.RESNETS.DEPTH", "34"))
    wide = save_random_checkpoint(tmp_path, "wide", opts=("MODEL.RESNETS.STEM_OUT_CHANNELS", "64"))
    _, model = _cls_model()
    with pytest.raises(CheckpointError, match="another backbone family.*lacks"):
        classifier_init_state(model, r34, "build_resnet_backbone")
    with pytest.raises(CheckpointError, match="another backbone family.*other shapes"):
        classifier_init_state(model, wide, "build_resnet_backbone")
    _, vgg = _cls_model(str(Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml"))
    with pytest.raises(CheckpointError, match="another backbone family.*are not in it"):
        classifier_init_state(vgg, det_weights, "build_vgg_backbone")
    torch.save({"model": {"head.cls_score.weight": torch.zeros(3, 3)}}, tmp_path / "nobackbone.pth")
    with pytest.raises(CheckpointError, match="holds no backbone"):
        classifier_init_state(model, tmp_path / "nobackbone.pth")


# ------------------------------------------------------------------------ the recipes through train_net

def _train(out: Path, data: Path, config: str, *opts: str, check: bool = True):
    return run_train_net("--config-file", config, "DETX.DATA_ROOT", data, "OUTPUT_DIR", out, *TRAINED_CLS_OPTS,
                         *opts, check=check)


@pytest.fixture(scope="module")
def stage1_dir(prepared_cxr_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("supcon_stage1")
    _train(out, prepared_cxr_dir, str(Q / "vindr_cxr_cls_supcon_tiny.yaml"))
    return out


def test_supcon_stage1_logs_its_loss_and_knn_auc(stage1_dir):
    rows = _metric_rows(stage1_dir / "metrics.json", "cls/knn_auc")
    assert rows and all(0.0 <= r["cls/knn_auc"] <= 1.0 for r in rows)
    assert "cls/auc" in rows[-1]
    losses = _metric_rows(stage1_dir / "metrics.json", "loss_supcon")
    assert losses and all(math.isfinite(r["loss_supcon"]) for r in losses)
    assert _metric_rows(stage1_dir / "metrics.json", "val_loss_supcon")
    assert json.loads((stage1_dir / "model_best.json").read_text())["metric"] == "cls/knn_auc"
    state = torch.load(stage1_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("proj.") for k in state)


@pytest.mark.parametrize("freeze", ["True", "False"])
def test_stage2_loads_stage1_and_writes_cls_metrics(stage1_dir, prepared_cxr_dir, tmp_path, freeze):
    cache = tmp_path / "features.pt"
    opts = ["MODEL.WEIGHTS", str(stage1_dir / "model_final.pth"), "MODEL.CLASSIFIER.FREEZE_BACKBONE", freeze]
    if freeze == "True":
        opts += ["MODEL.CLASSIFIER.FEATURE_CACHE", str(cache)]
    proc = _train(tmp_path / "s2", prepared_cxr_dir, str(Q / "vindr_cxr_cls_stage2_tiny.yaml"), *opts)
    log = proc.stdout + proc.stderr
    assert "classifier initialised from the classifier checkpoint" in log and "not loaded from the file: proj.0.* (2), proj.2.* (2)" in log
    rows = _metric_rows(tmp_path / "s2" / "metrics.json", "cls/auc")
    assert rows and "cls/knn_auc" not in rows[-1]
    s1 = torch.load(stage1_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    s2 = torch.load(tmp_path / "s2" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    same = [torch.equal(s1[k], s2[k]) for k in s2 if k.startswith("backbone.")]
    assert all(same) if freeze == "True" else not all(same)
    if freeze == "True":
        assert cache.is_file() and "frozen features: computed" in log
        # a second head on the same features reuses them; a stage-2 run of other weights is refused (exit 2)
        proc = _train(tmp_path / "s2b", prepared_cxr_dir, str(Q / "vindr_cxr_cls_stage2_tiny.yaml"), *opts)
        assert "frozen features: reusing" in proc.stdout + proc.stderr
        other = [*opts[:1], str(stage1_dir / "model_0000003.pth"), *opts[2:]]
        proc = _train(tmp_path / "s2c", prepared_cxr_dir, str(Q / "vindr_cxr_cls_stage2_tiny.yaml"), *other,
                      check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "is stale" in proc.stderr and "backbone weights" in proc.stderr
        assert not (tmp_path / "s2c" / "model_final.pth").exists()
        assert not list((tmp_path / "s2c").glob("model_0*.pth"))


def test_stage2_bad_inputs_exit_2(stage1_dir, prepared_cxr_dir, tmp_path):
    missing = _train(tmp_path / "a", prepared_cxr_dir, str(Q / "vindr_cxr_cls_stage2_tiny.yaml"), "MODEL.WEIGHTS",
                     str(tmp_path / "nope.pth"), check=False)
    assert missing.returncode == 2 and "nope.pth does not exist" in missing.stderr
    vgg = _train(tmp_path / "b", prepared_cxr_dir, str(Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml"), "MODEL.WEIGHTS",
                 str(stage1_dir / "model_final.pth"), check=False)
    assert vgg.returncode == 2 and "another backbone family" in vgg.stderr
    assert not (tmp_path / "b" / "model_final.pth").exists()


def test_classifier_from_a_detector_checkpoint_trains(tiny_random_checkpoint, prepared_cxr_dir, tmp_path):
    _, det_weights = tiny_random_checkpoint
    proc = _train(tmp_path / "d", prepared_cxr_dir, CLS_TINY_CONFIG, "MODEL.WEIGHTS", str(det_weights))
    log = proc.stdout + proc.stderr
    assert "classifier initialised from the detector checkpoint" in log
    assert "roi_heads.box_predictor" in log or "roi_heads.box_head" in log
    assert _metric_rows(tmp_path / "d" / "metrics.json", "cls/auc")
    r34 = save_random_checkpoint(tmp_path, "r34", opts=("MODEL.RESNETS.DEPTH", "34"))
    bad = _train(tmp_path / "e", prepared_cxr_dir, CLS_TINY_CONFIG, "MODEL.WEIGHTS", str(r34), check=False)
    assert bad.returncode == 2 and "another backbone family" in bad.stderr


def test_vgg16_frozen_features_train_a_head(prepared_cxr_dir, tmp_path):
    out = tmp_path / "vgg"
    # with a CPU budget spent after the first step: the other steps are skipped, the final evaluation still runs
    proc = _train(out, prepared_cxr_dir, str(Q / "vindr_cxr_cls_vgg16_frozen_tiny.yaml"),
                  "MODEL.CLASSIFIER.FEATURE_CACHE", str(out / "features.pt"), "DETX.CPU_BUDGET_S", "1e-6")
    assert "frozen features: computed" in proc.stdout + proc.stderr
    assert "DETX.CPU_BUDGET_S 0 s spent after 1 iterations" in proc.stdout + proc.stderr
    assert [r["cpu_budget_iters"] for r in _metric_rows(out / "metrics.json", "cpu_budget_iters")] == [1.0]
    rows = _metric_rows(out / "metrics.json", "cls/auc")
    assert rows and rows[-1]["iteration"] == 8  # the final evaluation, after the last (skipped) iteration
    assert len(_metric_rows(out / "metrics.json", "loss_cls")) <= 1
