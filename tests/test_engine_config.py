"""detx config keys: loading every shipped config, closest-key errors, the tiny model on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detx.engine.config import ConfigKeyError, closest_key, get_detx_cfg, num_classes

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
# the image classifiers (configs/classification and the *_cls_tiny quick schedules) are checked on their own
CLASSIFIER_CONFIGS = [c for c in ALL_CONFIGS if "/classification/" in c or "_cls_" in c]
CONFIGS = [c for c in ALL_CONFIGS if c not in CLASSIFIER_CONFIGS]
TINY = str(ROOT / "configs/quick_schedules/vindr_cxr_tiny.yaml")


def test_all_shipped_configs_are_found():
    names = {Path(c).name for c in CONFIGS}
    assert {"Base-detx.yaml", "faster_rcnn_R_50_FPN.yaml", "faster_rcnn_R_101_FPN.yaml", "mask_rcnn_R_50_FPN.yaml",
            "vindr_cxr_tiny.yaml", "vindr_cxr_mask_tiny.yaml"} <= names
    assert "configs/spinexr/faster_rcnn_R_50_FPN.yaml" in CONFIGS
    for name in ("retinanet_R_101_FPN.yaml", "cascade_rcnn_R_50_FPN.yaml"):
        assert f"configs/vindr_cxr/{name}" in CONFIGS and f"configs/spinexr/{name}" in CONFIGS
    assert {"vindr_cxr_retinanet_tiny.yaml", "vindr_cxr_cascade_tiny.yaml"} <= names


@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS)
def test_every_classifier_config_loads(config):
    from detx.engine.config import is_classifier

    cfg = get_detx_cfg(str(ROOT / config))
    # the contrastive stage 1 keeps the checkpoint of the best k-NN AUC of its embeddings
    best = "cls/knn_auc" if cfg.MODEL.CLASSIFIER.LOSS == "supcon" else "cls/auc"
    assert is_classifier(cfg) and best == cfg.DETX.BEST_METRIC
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False and cfg.INPUT.RANDOM_FLIP == "none"
    name = Path(config).name
    expected = 28 if "physionet_labels" in name else 15 if "openi" in name else 7 if "spinexr" in name else 14 if "vindr_cxr" in name else 0
    assert num_classes(cfg) == expected
    if "densenet" in name.lower():
        assert cfg.MODEL.BACKBONE.NAME == "build_densenet_backbone" and cfg.INPUT.FORMAT == "RGB"
        assert cfg.MODEL.DENSENET.WEIGHTS == ""  # ImageNet weights are a file the user downloads
    elif "vgg" in name:
        assert cfg.MODEL.BACKBONE.NAME == "build_vgg_backbone" and cfg.INPUT.FORMAT == "RGB"
        assert cfg.MODEL.VGG.WEIGHTS == "" and cfg.MODEL.CLASSIFIER.FREEZE_BACKBONE
    elif "R_50" in name:
        assert cfg.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/") and cfg.MODEL.RESNETS.DEPTH == 50
    elif "tiny" in name:
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.DEPTH == 18


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_loads(config):
    cfg = get_detx_cfg(str(ROOT / config))
    assert cfg.is_frozen()
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False  # normal X-rays stay in training
    assert cfg.INPUT.RANDOM_FLIP == "none"  # flips come from DETX.AUG only
    assert num_classes(cfg) == (2 if "lungs" in config else 7 if "spinexr" in config else 14)  # lungs: left, right
    # the metric does not punish low-confidence extra boxes: every model keeps them
    if "lungs" in config:  # the lung segmenter: real masks, no flips (they would swap the lungs)
        assert cfg.MODEL.MASK_ON and not cfg.DETX.BOX_MASKS and cfg.DETX.AUG.HFLIP_PROB == 0
        return
    thresh = cfg.MODEL.RETINANET.SCORE_THRESH_TEST if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else \
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    assert thresh <= 0.01
    if "mask" in Path(config).name:
        assert cfg.MODEL.MASK_ON and cfg.DETX.BOX_MASKS
    if config.startswith(("configs/vindr_cxr", "configs/spinexr")):
        assert cfg.MODEL.WEIGHTS.startswith("detectron2://")  # downloaded by the user, never in tests
        depth = cfg.MODEL.RESNETS.DEPTH
        assert depth == (101 if "R_101" in config else 50)
    if "quick_schedules" in config:
        assert cfg.MODEL.WEIGHTS == ""
        assert cfg.MODEL.RESNETS.NORM == "BN"  # trains from scratch


def test_unknown_override_names_the_closest_key():
    with pytest.raises(ConfigKeyError, match=r"DETX\.AUG\.HFLIP .*did you mean DETX\.AUG\.HFLIP_PROB\?"):
        get_detx_cfg(TINY, ["DETX.AUG.HFLIP", "0.3"])
    with pytest.raises(ConfigKeyError, match=r"did you mean SOLVER\.BASE_LR\?"):
        get_detx_cfg(TINY, ["SOLVER.BASE_LRR", "0.1"])


def test_unknown_yaml_key_names_the_closest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY}"\nDETX:\n  VAL_PERIODS: 5\n')
    with pytest.raises(ConfigKeyError, match=r"DETX\.VAL_PERIODS in .*bad\.yaml; did you mean DETX\.VAL_PERIOD\?"):
        get_detx_cfg(str(bad))


def test_closest_key_cases():
    cfg = get_detx_cfg(TINY)
    assert closest_key(cfg, "detx.fold") == "DETX.FOLD"  # a case slip
    assert closest_key(cfg, "MODEL.ROI_HEADS.NUM_CLASS") == "MODEL.ROI_HEADS.NUM_CLASSES"
    assert closest_key(cfg, "QQQQQQQQQQQQQQQQQQ") is None


def test_overrides_apply_and_odd_overrides_fail(tmp_path):
    cfg = get_detx_cfg(TINY, ["DETX.FOLD", "1", "DETX.DATA_ROOT", str(tmp_path), "DETX.AUG.CLAHE_PROB", "0.5"])
    got = (cfg.DETX.FOLD, cfg.DETX.DATA_ROOT, cfg.DETX.AUG.CLAHE_PROB)
    assert got == (1, str(tmp_path), 0.5)
    # an integer for a float key is taken as that float (yacs alone refuses int vs float)
    assert get_detx_cfg(TINY, ["DETX.AUG.HFLIP_PROB", "0", "SOLVER.BASE_LR", "1"]).DETX.AUG.HFLIP_PROB == 0.0
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        get_detx_cfg(TINY, ["DETX.FOLD"])
    with pytest.raises(FileNotFoundError):
        get_detx_cfg(str(tmp_path / "missing.yaml"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_config_falls_back_to_cpu_without_amp():
    cfg = get_detx_cfg(str(ROOT / "configs/vindr_cxr/faster_rcnn_R_50_FPN.yaml"))
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.SOLVER.AMP.ENABLED is False


def test_tiny_model_builds_on_cpu_with_random_init():
    from detectron2.modeling import build_model

    cfg = get_detx_cfg(TINY)
    model = build_model(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 20e6
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 128, 96), "height": 64, "width": 48}])
    inst = out[0]["instances"]
    assert inst.image_size == (64, 48)  # rescaled to the requested output size
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
