"""Metric plots as PNG: per-class precision-recall curves, the FROC curve, the image-level ROC curve."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from detx.core.io import save_figure  # noqa: E402

__all__ = ["plot_pr_curves", "plot_froc", "plot_roc", "plot_evaluation"]


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], ap: Mapping[str, float], path: str | os.PathLike,
    iou_thr: float = 0.4,
) -> Path:
    """One panel per class: precision against recall (raw and the monotone envelope the AP integrates)."""
    names = list(curves)
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        recall, precision = (np.asarray(a, float) for a in curves[name])
        if len(recall):
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            ax.plot(recall, precision, ".-", ms=3, lw=0.8, alpha=0.5, label="precision")
            # the area the all-point AP integrates: envelope[i] over (recall[i-1], recall[i]]
            ax.step(np.r_[0.0, recall, recall[-1]], np.r_[envelope[0], envelope, 0.0], where="pre", lw=1.5,
                    label="envelope")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}\nAP{round(iou_thr * 100)} {ap.get(name, float('nan')):.3f}", fontsize=9)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")


def plot_froc(
    fp_per_image: np.ndarray, sensitivity: np.ndarray, fp_rates: Sequence[float],
    sensitivity_at: Sequence[float | None], path: str | os.PathLike,
) -> Path:
    """Sensitivity against false positives per image (log2 axis), the reported rates marked."""
    fig, ax = plt.subplots(figsize=(5, 4))
    fppi = np.asarray(fp_per_image, float)
    sens = np.asarray(sensitivity, float)
    ax.step(np.maximum(fppi, min(fp_rates) / 4), sens, where="post", label="FROC")
    pts = [(r, s) for r, s in zip(fp_rates, sensitivity_at) if s is not None]
    if pts:
        ax.plot(*zip(*pts), "o", label=f"mean {np.mean([s for _, s in pts]):.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(fp_rates) / 4, max(max(fp_rates) * 2, float(fppi.max(initial=0))))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path, bbox_inches="tight")


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: str | os.PathLike, threshold: float | None = None) -> Path:
    """Image-level ROC curve, the operating point marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, float)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, s):.3f}")
        if threshold is not None:
            pred = s >= threshold
            ax.plot([np.mean(pred[y == 0])], [np.mean(pred[y == 1])], "o", label=f"threshold {threshold:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.set_title("ROC undefined: one class only")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    return save_figure(fig, path, bbox_inches="tight")


def plot_evaluation(curves: Mapping, out_dir: str | os.PathLike, iou_thr: float = 0.4) -> list[Path]:
    """The three plots of a :class:`detx.workflows.evaluate.EvaluationResult`'s ``curves`` into ``out_dir``."""
    out_dir = Path(out_dir)
    if "pr" not in curves:  # a classification CSV: only the ROC
        labels, scores, thr = curves["roc"]
        return [plot_roc(labels, scores, out_dir / "roc.png", thr)]
    paths = [plot_pr_curves(curves["pr"], curves["ap"], out_dir / "pr_curves.png", iou_thr)]
    fppi, sens, rates, at = curves["froc"]
    paths.append(plot_froc(fppi, sens, rates, at, out_dir / "froc.png"))
    labels, scores, thr = curves["roc"]
    paths.append(plot_roc(labels, scores, out_dir / "roc.png", thr))
    return paths
