"""metrics.json reading (resumed runs, torn lines) and the training-curves plot."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from detx.viz.curves import last_metric, plot_training_curves, read_metrics, series


def write_lines(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_read_metrics_merges_resumed_rows_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.json"
    rows = [
        {"iteration": 19, "total_loss": 2.0, "lr": 0.01},
        {"iteration": 19, "val_total_loss": 1.5},  # same iteration, another writer call
        {"iteration": 39, "total_loss": 1.0},
        {"iteration": 39, "total_loss": 0.9},  # a resumed run rewrote iteration 39: the later row wins
        {"iteration": 40, "vinbigdata/mAP40": 0.25},
    ]
    write_lines(path, rows, tail='{"iteration": 59, "total_lo')
    got = read_metrics(path)
    assert [r["iteration"] for r in got] == [19, 39, 40]
    assert got[0] == {"iteration": 19, "total_loss": 2.0, "lr": 0.01, "val_total_loss": 1.5}
    assert series(got, "total_loss") == ([19, 39], [2.0, 0.9])
    assert series(got, "vinbigdata/mAP40") == ([40], [0.25])


def test_last_metric_is_the_last_logged_value(tmp_path):
    path = tmp_path / "metrics.json"
    write_lines(path, [{"iteration": 9, "cls/auc": 0.6, "total_loss": 1.0}, {"iteration": 19, "total_loss": 0.5},
                       {"iteration": 19, "cls/auc": 0.7}, {"iteration": 29, "total_loss": 0.4}],
                tail='{"iteration": 39, "cls/au')
    assert last_metric(path, "cls/auc") == 0.7
    assert last_metric(path, "total_loss") == 0.4
    assert last_metric(path, "cls/knn_auc") is None


def test_plot_training_curves(tmp_path):
    path = tmp_path / "metrics.json"
    write_lines(path, [{"iteration": i, "total_loss": 1.0 / (i + 1)} for i in range(0, 100, 20)]
                + [{"iteration": 49, "val_total_loss": 0.3, "vinbigdata/mAP40": 0.2},
                   {"iteration": 100, "val_total_loss": 0.2, "vinbigdata/mAP40": 0.3}])
    out = plot_training_curves(path, tmp_path / "curves.png")
    img = mpimg.imread(out)
    assert img.shape[0] == 400 and img.shape[1] == 1100  # 11x4 inches at 100 dpi
    assert not list(tmp_path.glob(".curves.png*"))  # written atomically, no temp file left
    write_lines(path, [{"iteration": 1, "lr": 0.1}])
    with pytest.raises(ValueError, match="holds none of"):
        plot_training_curves(path, tmp_path / "none.png")
