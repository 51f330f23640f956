"""Reader plots: each reader's agreement with the others (outliers marked, the human baseline drawn), and AP per
reader x class as a heatmap. Plain lists and arrays in, PNG out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from detx.core.io import save_figure  # noqa: E402

__all__ = ["plot_reader_agreement", "plot_reader_class_heatmap"]


def plot_reader_agreement(
    readers: Sequence[str],
    scores: Sequence[float | None],
    outliers: Sequence[str],
    path: str | os.PathLike,
    baseline: float | None = None,
    label: str = "mAP40 vs the others' fusion",
) -> Path:
    """One bar per reader (a reader without a score gets none), outliers in red and named, the mean as a line."""
    values = np.array([np.nan if v is None else float(v) for v in scores], dtype=float)
    flagged = set(outliers)
    colors = ["tab:red" if r in flagged else "tab:blue" for r in readers]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(readers) + 2.0), 4.0))
    x = np.arange(len(readers))
    ax.bar(x, np.nan_to_num(values), color=colors)
    for xi, v, r in zip(x, values, readers):
        ax.text(xi, (0 if np.isnan(v) else v) + 0.01, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="bottom",
                fontsize=7, color="tab:red" if r in flagged else "black")
    handles = []
    if baseline is not None:
        ax.axhline(baseline, color="tab:gray", ls="--", lw=1)
        handles.append(Line2D([], [], color="tab:gray", ls="--", label=f"human baseline {baseline:.3f}"))
    if flagged:
        handles.append(Patch(color="tab:red", label="outlier: " + ", ".join(r for r in readers if r in flagged)))
    ax.set_xticks(x, readers, rotation=90 if len(readers) > 20 else 0, fontsize=8)
    for tick, r in zip(ax.get_xticklabels(), readers):
        if r in flagged:
            tick.set_color("tab:red")
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(label)
    ax.set_xlabel("reader")
    ax.set_title("Each reader against the other readers of its images", fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles))
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_reader_class_heatmap(
    readers: Sequence[str],
    classes: Sequence[str],
    ap: np.ndarray,
    path: str | os.PathLike,
    label: str = "AP40 vs the others' fusion",
) -> Path:
    """AP per reader (rows) x class (columns); NaN (no ground truth among the others) left blank."""
    ap = np.asarray(ap, dtype=float).reshape(len(readers), len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) + 2.5), max(3.0, 0.35 * len(readers) + 2.0)))
    im = ax.imshow(np.ma.masked_invalid(ap), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(np.arange(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(readers)), readers, fontsize=8)
    if ap.size <= 600:
        for (i, j), v in np.ndenumerate(ap):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.5 else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title("AP per reader and class\n(blank: no ground truth among the others)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
