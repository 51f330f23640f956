"""Predictions do not depend on the batch size: a forward pass holds only images of one padded input shape.

``tools/predict.py`` is run on images of mixed sizes at ``--batch-size 1, 2, 8``; the submission and the
classification CSV must be byte-identical (detector, image classifier, ``--tta hflip``). On the CPU the eager models
run their convolutions with the native kernels (not oneDNN, whose algorithm depends on the batch size), which makes
same-shape batching exact (padding to the batch's largest image, as before, moved boxes at ``--batch-size 2``).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import CLS_TINY_CONFIG, load_script, save_random_checkpoint

pytestmark = pytest.mark.slow

predict_tool = load_script("tools/predict.py")

# (height, width) of the PNGs: equal shapes, shapes that resize alike, shapes that pad alike but resize differently
# (the tiny detector tests at 256 px and pads to 32), portrait and landscape
SHAPES = [(256, 192), (200, 160), (256, 192), (192, 256), (250, 190), (240, 180), (160, 200), (256, 200),
          (256, 192), (128, 96)]


def _noise(h, w, seed):
    g = (np.random.default_rng(seed).random((h // 8 + 1, w // 8 + 1)) * 255).astype(np.uint8)
    return np.kron(g, np.ones((8, 8), np.uint8))[:h, :w]


@pytest.fixture(scope="module")
def mixed_pngs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_pngs")
    d = root / "images"
    d.mkdir()
    for k, (h, w) in enumerate(SHAPES):
        cv2.imwrite(str(d / f"im{k:02d}.png"), _noise(h, w, k))
    (root / "meta.csv").write_text("image_id,orig_width,orig_height,width,height\n" + "".join(
        f"im{k:02d},{10 * w},{10 * h},{w},{h}\n" for k, (h, w) in enumerate(SHAPES)))
    return d


@pytest.fixture(scope="module")
def random_cls_checkpoint(tmp_path_factory):
    return CLS_TINY_CONFIG, save_random_checkpoint(tmp_path_factory.mktemp("random_cls"), config=CLS_TINY_CONFIG)


def _predict(*argv) -> int:
    return predict_tool.main(predict_tool.parse_args(["--quiet"] + [str(a) for a in argv]))


def test_padded_shape_hand_computed():
    from detx.inference.predictor import padded_shape

    assert padded_shape(256, 195, 32) == (256, 224)
    assert padded_shape(256, 192, 32) == (256, 192)
    assert padded_shape(250, 190, 0) == (250, 190)
    assert padded_shape(100, 60, 32, square_size=512) == (512, 512)


def test_batch_key_is_the_padded_input_shape(tiny_random_checkpoint):
    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedPredictor, inference_resize, model_input
    from detx.inference.tta import TTAView

    cfg_file, weights = tiny_random_checkpoint
    p = BatchedPredictor(get_detx_cfg(cfg_file, ["MODEL.DEVICE", "cpu"]), weights)
    for h, w in SHAPES:
        for view in (TTAView(), TTAView(True, 224)):
            image = np.zeros((h, w, 3), np.uint8)
            t = model_input(image, inference_resize(256, 256, view), "BGR", view)
            th, tw = t.shape[-2:]
            assert p.batch_key((h, w), view) == (-(-th // 32) * 32, -(-tw // 32) * 32)
    # 256x192 -> 256x192; 250x190 -> 256x195 -> pads to 256x224 like 256x200 -> 256x200
    assert p.batch_key((250, 190), TTAView()) == p.batch_key((256, 200), TTAView()) == (256, 224)
    assert p.batch_key((256, 192), TTAView()) == (256, 192)


@pytest.mark.parametrize("tta", [[], ["--tta", "hflip"]], ids=["plain", "hflip"])
def test_submission_identical_at_batch_sizes_1_2_8(tiny_random_checkpoint, random_cls_checkpoint, mixed_pngs,
                                                    tmp_path, tta):
    cfg_file, weights = tiny_random_checkpoint
    cls_cfg, cls_weights = random_cls_checkpoint
    texts = {}
    for bs in (1, 2, 8):
        out, cls_out = tmp_path / f"sub{bs}.csv", tmp_path / f"cls{bs}.csv"
        assert _predict("--config-file", cfg_file, "--weights", weights, "--classifier-config", cls_cfg,
                        "--classifier-weights", cls_weights, "--input", mixed_pngs, "--out", out,
                        "--classification-out", cls_out, "--batch-size", bs, *tta, "MODEL.DEVICE", "cpu") == 0
        texts[bs] = (out.read_text(), cls_out.read_text())
    sub, cls = texts[1]
    assert len(sub.splitlines()) == 1 + len(SHAPES) and len(cls.splitlines()) == 1 + len(SHAPES)
    assert sub.count(" ") > 100 * len(SHAPES)  # many boxes per image: something to move
    for bs in (2, 8):
        assert texts[bs][0] == sub, f"submission at --batch-size {bs} differs from --batch-size 1"
        assert texts[bs][1] == cls, f"classification CSV at --batch-size {bs} differs from --batch-size 1"


def test_cpu_default_is_bit_identical_and_same_shape_batches_within_rounding(tiny_random_checkpoint):
    """CPU default (``exact``): a batch call equals each image alone bit for bit. ``exact=False`` (what CUDA does):
    forward passes hold one padded shape and the results equal alone within float rounding (oneDNN picks kernels by
    batch size; measured up to ~0.005 px at 10x, so the tolerance is 0.05 px and 1e-4 in score), while padding a
    mixed batch to its largest image (the previous batching) moves boxes far beyond that."""
    from detx.engine.config import get_detx_cfg
    from detx.inference.predictor import BatchedPredictor, inference_resize, model_input, padded_shape

    cfg_file, weights = tiny_random_checkpoint
    cfg = get_detx_cfg(cfg_file, ["MODEL.DEVICE", "cpu"])
    shapes = [(256, 192), (256, 192), (200, 160), (256, 192), (250, 190), (256, 200)]
    images = [np.repeat(_noise(h, w, k)[:, :, None], 3, axis=2) for k, (h, w) in enumerate(shapes)]
    sizes = [(10 * w, 10 * h) for h, w in shapes]
    exact = BatchedPredictor(cfg, weights)
    assert exact.exact_batching
    alone = [exact([im], [s])[0] for im, s in zip(images, sizes)]
    for a, b in zip(alone, exact(images, sizes)):
        assert len(a) > 10
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.classes, b.classes)

    batched = BatchedPredictor(cfg, weights, exact=False)
    assert not batched.exact_batching
    calls = []
    forward = batched.model.forward
    batched.model.forward = lambda inputs: calls.append([x["image"].shape[-2:] for x in inputs]) or forward(inputs)
    got = batched(images, sizes)
    # 256x192 (x3) stays 256x192; 200x160 -> 256x205, 250x190 -> 256x195 and 256x200 all pad to 256x224
    assert sorted(len(c) for c in calls) == [3, 3]
    assert all(len({padded_shape(h, w, 32) for h, w in c}) == 1 for c in calls)
    for a, b in zip(alone, got):
        assert len(a) == len(b)
        assert np.abs(a.boxes - b.boxes).max() < 0.05 and np.abs(a.scores - b.scores).max() < 1e-4

    with torch.no_grad():  # the previous batching: one mixed batch padded to its largest image
        resize = inference_resize(256, 256)
        mixed = forward([{"image": model_input(im, resize, "BGR"), "height": s[1], "width": s[0]}
                         for im, s in zip(images, sizes)])
    worst = max(np.abs(out["instances"].pred_boxes.tensor.numpy()[:len(a)] - a.boxes[:len(out["instances"])]).max()
                for out, a in zip(mixed, alone))
    assert worst > 1.0


def test_batches_by_key_hand_computed():
    from detx.inference.predictor import batches_by_key

    items = ["a1", "b1", "a2", "c1", "a3", "b2", "b3", "c2"]
    got = list(batches_by_key(items, lambda s: s[0], batch_size=2, max_waiting=10))
    assert got == [["a1", "a2"], ["b1", "b2"], ["c1", "c2"], ["a3"], ["b3"]]
    # at most 2 waiting: the third waiting item sends the fullest bucket (the first of equals) early
    assert list(batches_by_key(["a", "b", "c", "d"], lambda s: s, batch_size=4, max_waiting=2)) == \
        [["a"], ["b"], ["c"], ["d"]]
    assert list(batches_by_key(["x1", "y1", "x2", "y2", "x3"], lambda s: s[0], 3, max_waiting=3)) == \
        [["x1", "x2"], ["y1", "y2"], ["x3"]]
    assert list(batches_by_key([], len, 4)) == []
