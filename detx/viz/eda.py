"""EDA plot of a prepared dataset: boxes per class before/after fusion, images per class, boxes per reader."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from detx.core.io import save_figure  # noqa: E402


def plot_eda(summary: dict, path: str | os.PathLike) -> Path:
    """Draw the EDA figure of a preparation summary (``PrepareSummary.to_dict()``) to ``path`` (PNG).

    Left: boxes per class from the readers and after fusion, and images with the class (plus the
    normal images). Right: boxes per reader.
    """
    per_class = summary.get("per_class", {})
    names = list(per_class)
    before = np.array([per_class[c]["before"] for c in names])
    after = np.array([per_class[c]["after"] for c in names])
    images = np.array([per_class[c]["images"] for c in names])
    readers = summary.get("boxes_per_reader", {})
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(14, max(4.0, 0.35 * len(names) + 1.5)),
                                   gridspec_kw={"width_ratios": [2, 1]})
    y = np.arange(len(names) + 1)
    h = 0.27
    ax0.barh(y[:-1] - h, before, h, label="reader boxes")
    ax0.barh(y[:-1], after, h, label=f"fused boxes ({summary.get('settings', {}).get('fusion')})")
    ax0.barh(y + h, np.append(images, summary.get("images_normal", 0)), h, label="images")
    ax0.set_yticks(y, names + ["No finding (images)"])
    ax0.invert_yaxis()
    ax0.set_xlabel("count")
    ax0.set_title(f"{summary.get('dataset')}: {summary.get('images')} images, "
                  f"{summary.get('images_abnormal')} abnormal")
    ax0.legend(loc="lower right")
    rads = list(readers)
    ax1.barh(np.arange(len(rads)), [readers[r] for r in rads], color="tab:gray")
    ax1.set_yticks(np.arange(len(rads)), rads)
    ax1.invert_yaxis()
    ax1.set_xlabel("boxes")
    ax1.set_title("boxes per reader")
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
