"""Training curves from detectron2's ``metrics.json``: train vs validation loss, and the validation mAP."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a detectron2 ``metrics.json`` (JSON lines); a torn last line (a crash) is skipped.

    A resumed run appends rows for iterations already written; the later row wins.
    """
    rows: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not JSON; skipped", path, lineno)
                continue
            if "iteration" in row:
                rows.setdefault(int(row["iteration"]), {}).update(row)
    return [rows[k] for k in sorted(rows)]


def last_metric(path: str | os.PathLike, key: str) -> float | None:
    """The last value of ``key`` in a detectron2 ``metrics.json`` (rows as :func:`read_metrics` merges them), or
    ``None`` when no row has it."""
    values = [r[key] for r in read_metrics(path) if key in r]
    return values[-1] if values else None


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of one key over the rows that have it."""
    it = [r["iteration"] for r in rows if r.get(key) is not None]
    return it, [float(r[key]) for r in rows if r.get(key) is not None]


def plot_training_curves(metrics_json: str | os.PathLike, out_png: str | os.PathLike,
                         loss_key: str = "total_loss", val_loss_key: str = "val_total_loss",
                         metric_keys: tuple[str, ...] = ("vinbigdata/mAP40",)) -> Path:
    """Plot train and validation loss (left) and the evaluation metrics (right) over iterations.

    Returns:
        ``out_png``, written atomically.

    Raises:
        ValueError: the file holds none of the keys.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detx.core.io import save_figure

    rows = read_metrics(metrics_json)
    curves = {k: series(rows, k) for k in (loss_key, val_loss_key, *metric_keys)}
    if not any(v[0] for v in curves.values()):
        raise ValueError(f"{metrics_json} holds none of {list(curves)}")
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in ((loss_key, "train", ".-"), (val_loss_key, "validation", "o-")):
        x, y = curves[key]
        if x:
            ax_loss.plot(x, y, style, label=f"{label} ({key})", markersize=4)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for key in metric_keys:
        x, y = curves[key]
        if x:
            ax_map.plot(x, y, "o-", label=key, markersize=4)
    ax_map.set_xlabel("iteration")
    ax_map.set_title("validation metric")
    if any(curves[k][0] for k in metric_keys):
        ax_map.legend()
    ax_map.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png)
