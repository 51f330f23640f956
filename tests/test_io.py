import json
import os
import stat

import pytest

from detx.core.io import atomic_path, atomic_write_text, write_json


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_interrupted_write_keeps_previous_file(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{partial")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "n.json", {"x": float("nan")})
    assert not list(tmp_path.iterdir())


def test_write_png_round_trips_8_and_16_bit(tmp_path):
    import cv2
    import numpy as np

    from detx.core.io import write_png

    img8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    bgr = np.dstack([img8, img8 + 1, img8 + 2])
    for name, img in (("g8.png", img8), ("g16.png", img16), ("bgr.png", bgr)):
        write_png(tmp_path / name, img)
        back = cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
        assert back.dtype == img.dtype and np.array_equal(back, img), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bgr.png", "g16.png", "g8.png"]


def test_save_figure_closes_the_figure_even_when_saving_fails(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detx.core.io import save_figure

    fig = plt.figure()
    out = save_figure(fig, tmp_path / "ok.png", dpi=50)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)

    fig = plt.figure()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "bad.unknownformat")
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    from detx.core.io import atomic_write_text, write_json

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
