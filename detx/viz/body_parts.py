"""The MURA EDA bar plot per body part: studies per part (train vs valid) and the abnormal share per part."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from detx.core.io import save_figure  # noqa: E402


def plot_body_parts(table: list[dict], path: str | os.PathLike) -> Path:
    """Two bar panels from rows ``{"body_part", "split", "studies", "images", "abnormal_studies"}``: studies per part
    by split, and the share of abnormal studies per part by split (the label balance)."""
    parts = sorted({r["body_part"] for r in table})
    splits = sorted({r["split"] for r in table})
    get = {(r["body_part"], r["split"]): r for r in table}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(parts))
    for k, split in enumerate(splits):
        studies = [get.get((p, split), {}).get("studies", 0) for p in parts]
        abn = [get.get((p, split), {}).get("abnormal_studies", 0) for p in parts]
        share = [a / s if s else 0.0 for a, s in zip(abn, studies)]
        axes[0].bar(x + k * width, studies, width, label=split)
        axes[1].bar(x + k * width, share, width, label=split)
    for ax, title in zip(axes, ("studies per body part", "abnormal share of the studies")):
        ax.set_xticks(x + width * (len(splits) - 1) / 2)
        ax.set_xticklabels([p.replace("XR_", "") for p in parts], rotation=30)
        ax.set_title(title)
        ax.legend()
    axes[1].set_ylim(0, 1)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
