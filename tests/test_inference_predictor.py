"""Batched predictor: equals DefaultPredictor, boxes in original pixels, hflip TTA, inputs, checkpoints, TTA parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detx.core.predictions import Predictions
from detx.engine.checkpoint import CheckpointError
from detx.inference.ensemble import ensemble_predictions
from detx.inference.predictor import (
    BatchedPredictor,
    InputImage,
    PredictionInputError,
    collect_inputs,
    load_image,
    predict_all,
)
from detx.inference.tta import TTAView, hflip_boxes, parse_tta

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor(tiny_random_checkpoint):
    from detx.engine.config import get_detx_cfg

    cfg_file, weights = tiny_random_checkpoint
    return BatchedPredictor(get_detx_cfg(cfg_file, ["MODEL.DEVICE", "cpu"]), weights)


def _images(n, h=256, w=256, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = (rng.random((h // 8, w // 8)) * 255).astype(np.uint8)
        g = np.kron(g, np.ones((8, 8), np.uint8))  # blocky: something for the detector to find
        out.append(np.repeat(g[:, :, None], 3, axis=2))
    return out


def _match(a: Predictions, b: Predictions, k: int, atol: float):
    """Each of a's top-k boxes has a same-class box in b with equal coordinates and score (within atol)."""
    top = np.argsort(-a.scores)[:k]
    for i in top:
        d = np.abs(b.boxes - a.boxes[i]).max(axis=1) + np.abs(b.scores - a.scores[i]) * 100
        d[b.classes != a.classes[i]] = np.inf
        assert d.min() < atol, (i, a.boxes[i], a.scores[i])


def test_batched_equals_default_predictor(predictor, tiny_random_checkpoint):
    from detectron2.engine import DefaultPredictor

    cfg = predictor.cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tiny_random_checkpoint[1])
    ref = DefaultPredictor(cfg)
    images = _images(3)
    batched = predictor(images, [(256, 256)] * 3)
    assert len(batched) == 3
    for image, got in zip(images, batched):
        inst = ref(image)["instances"]
        want = Predictions(inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy())
        assert len(got) == len(want) > 10
        _match(got, want, 30, 1e-2)
        _match(want, got, 30, 1e-2)


def test_boxes_in_original_pixels(predictor):
    images = _images(2, 256, 192)
    same = predictor(images, [(192, 256)] * 2)
    scaled = predictor(images, [(192 * 10, 256 * 7)] * 2)
    for a, b in zip(same, scaled):
        np.testing.assert_allclose(b.boxes, a.boxes * [10, 7, 10, 7], rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(b.scores, a.scores)
        assert b.boxes[:, [0, 2]].max() <= 1920 and b.boxes[:, [1, 3]].max() <= 1792


def test_hflip_tta_of_mirrored_image_is_mirrored_prediction(predictor):
    image = _images(1, 256, 256, seed=3)[0]
    mirrored = np.ascontiguousarray(image[:, ::-1])
    views = parse_tta("hflip")
    sizes = {"a": (256, 256), "m": (256, 256)}
    sets = [{"a": predictor([image], [(256, 256)], v)[0], "m": predictor([mirrored], [(256, 256)], v)[0]}
            for v in views]
    fused = ensemble_predictions(sets, sizes, iou_thr=0.55)
    a, m = fused["a"], fused["m"]
    assert len(a) == len(m) > 10
    flipped = Predictions(hflip_boxes(a.boxes, 256.0), a.scores, a.classes)
    oa = np.lexsort((flipped.boxes[:, 0], flipped.scores.round(6), flipped.classes))
    om = np.lexsort((m.boxes[:, 0], m.scores.round(6), m.classes))
    np.testing.assert_array_equal(flipped.classes[oa], m.classes[om])
    np.testing.assert_allclose(flipped.scores[oa], m.scores[om], rtol=1e-6)
    np.testing.assert_allclose(flipped.boxes[oa], m.boxes[om], atol=1e-3)
    # and the flip view alone really differs from the plain view (the model is not mirror-symmetric)
    assert not np.allclose(np.sort(sets[0]["a"].scores), np.sort(sets[1]["a"].scores))


def test_hflip_boxes_hand_computed():
    np.testing.assert_array_equal(hflip_boxes(np.array([[10.0, 5, 30, 8]]), 100), [[70.0, 5, 90, 8]])
    t = torch.tensor([[0.0, 0, 100, 1]])
    assert torch.equal(hflip_boxes(hflip_boxes(t, 100), 100), t)


def test_parse_tta():
    assert parse_tta([]) == [TTAView()]
    assert parse_tta(["none"]) == [TTAView()]
    assert parse_tta(["hflip", "scale=320"]) == [TTAView(False, None), TTAView(False, 320), TTAView(True, None),
                                                 TTAView(True, 320)]
    with pytest.raises(ValueError, match="unknown TTA"):
        parse_tta(["vflip"])
    with pytest.raises(ValueError, match="scale"):
        parse_tta(["scale=big"])


def test_scale_view_runs_at_its_size(predictor):
    image = _images(1)[0]
    base = predictor([image], [(256, 256)])[0]
    big = predictor([image], [(256, 256)], TTAView(False, 320))[0]
    assert len(big) > 0 and big.boxes.max() <= 256
    assert not (len(big) == len(base) and np.allclose(big.boxes, base.boxes))


def test_collect_inputs_png_folder_with_meta(tmp_path):
    import cv2

    d = tmp_path / "images"
    d.mkdir()
    for name in ("b", "a", "c"):
        cv2.imwrite(str(d / f"{name}.png"), np.zeros((64, 48), np.uint8))
    (tmp_path / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\na,480,640,48,64\nb,96,128,48,64\n")
    inputs = collect_inputs(d)
    assert [i.image_id for i in inputs.images] == ["a", "b", "c"]
    assert [(i.orig_width, i.orig_height) for i in inputs.images] == [(480, 640), (96, 128), (None, None)]
    loaded = load_image(inputs.images[2], "BGR", 256)
    assert loaded.orig_size == (48, 64) and loaded.image.shape == (64, 48, 3)


def test_collect_inputs_dicom_folder_and_bad_inputs(tmp_path):
    from detx.synthetic.generator import write_dicom

    d = tmp_path / "dicoms"
    d.mkdir()
    px = (np.arange(60 * 80).reshape(60, 80) % 4096).astype(np.uint16)
    write_dicom(d / "one.dicom", px)
    write_dicom(d / "two.dcm", px)
    write_dicom(d / "three", px)  # extension-less: recognized by the DICM magic
    (d / "notes.txt").write_text("not an image")
    inputs = collect_inputs(d)
    assert sorted(i.image_id for i in inputs.images) == ["one", "three", "two"]
    assert {i.kind for i in inputs.images} == {"dicom"}
    loaded = load_image(inputs.images[0], "BGR", 40)
    assert loaded.error is None and loaded.orig_size == (80, 60) and loaded.image.shape == (30, 40, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(PredictionInputError, match="no DICOM"):
        collect_inputs(empty)
    with pytest.raises(PredictionInputError, match="does not exist"):
        collect_inputs(tmp_path / "nowhere")


def test_unreadable_image_lenient_and_strict(predictor, tmp_path):
    import cv2

    from detx.inference.predictor import UnreadableImageError

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _images(1)[0])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    records = [InputImage("good", good, "png"), InputImage("bad", bad, "png")]
    run = predict_all([predictor], records, batch_size=2, progress=False)
    assert list(run.failures) == ["bad"] and "bad.png" in run.failures["bad"]
    assert set(run.sets[0]) == {"good"} and run.order == ["good", "bad"]
    with pytest.raises(UnreadableImageError, match="image bad"):
        predict_all([predictor], records, batch_size=1, strict=True, progress=False)


def test_checkpoint_errors(tmp_path, tiny_random_checkpoint):
    from conftest import save_random_checkpoint

    from detx.engine.config import get_detx_cfg

    cfg = get_detx_cfg(tiny_random_checkpoint[0], ["MODEL.DEVICE", "cpu"])
    with pytest.raises(CheckpointError, match="does not exist"):
        BatchedPredictor(cfg, tmp_path / "missing.pth")
    three = save_random_checkpoint(tmp_path, "three", ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    with pytest.raises(CheckpointError, match="trained for 3 classes but the config has MODEL.ROI_HEADS.NUM_CLASSES 14"):
        BatchedPredictor(cfg, three)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        BatchedPredictor(cfg, junk)


@pytest.mark.gpu
def test_amp_on_cuda_close_to_float32(tiny_random_checkpoint):
    from detx.engine.config import get_detx_cfg

    cfg_file, weights = tiny_random_checkpoint
    cfg = get_detx_cfg(cfg_file, ["MODEL.DEVICE", "cuda"])
    amp, fp32 = BatchedPredictor(cfg, weights, amp=True), BatchedPredictor(cfg, weights, amp=False)
    assert amp.amp and not fp32.amp
    images = _images(4)
    for a, b in zip(amp(images, [(2560, 2560)] * 4), fp32(images, [(2560, 2560)] * 4)):
        assert len(a) > 10
        _match(b, a, 5, 5.0)  # the top boxes agree within a few original pixels and 0.05 confidence
