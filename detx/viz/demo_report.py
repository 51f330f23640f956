"""The demo's Markdown report: key numbers, the per-class AP bar chart and the figures other steps wrote."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from detx.core.io import atomic_write_text, save_figure  # noqa: E402

NUMBER_LABELS = {
    "mAP40": "challenge mAP@0.4 (VOC, held-out fold)",
    "coco_mAP40": "COCO AP@0.4 (101-point)",
    "coco_AP": "COCO AP@[.5:.95]",
    "coco_AP50": "COCO AP50",
    "froc_mean": "FROC mean sensitivity (1/8..8 FP/image)",
    "auc": "image-level ROC AUC",
    "f1": "image-level F1 (Youden threshold)",
    "sensitivity": "image-level sensitivity",
    "specificity": "image-level specificity",
    "classifier_auc": "fitted classifier AUC (on its fitting images)",
    "cnn_auc": "CNN classifier P(abnormal) AUC (held-out fold)",
    "cnn_auc_macro": "CNN classifier macro AUC over the classes (held-out fold)",
    "pointing_game": "Grad-CAM pointing game (held-out abnormal images)",
    "test_mAP40": "challenge mAP@0.4 on the synthetic test set",
    "test_auc": "image-level AUC on the synthetic test set (No finding from the CNN)",
    "test_auc_detection": "image-level AUC on the test set, P(abnormal) from the detections instead",
    "cnn_auc_lung_crops": "CNN classifier P(abnormal) AUC on lung crops (held-out fold)",
    "cnn_auc_macro_lung_crops": "CNN classifier macro AUC on lung crops (held-out fold)",
    "image_auc": "image-level ROC AUC (official valid split)",
    "study_auc": "study-level ROC AUC (a study's P = mean of its images')",
    "study_sensitivity": "study-level sensitivity (Youden threshold)",
    "study_specificity": "study-level specificity",
    "study_kappa": "study-level Cohen's kappa",
}


def plot_ap_per_class(ap_per_class: Mapping[str, float | None], path: str | os.PathLike,
                      title: str = "AP@0.4 per class") -> Path:
    """Horizontal bar chart of per-class AP; classes without ground truth are listed as excluded."""
    names = [n for n, v in ap_per_class.items() if v is not None]
    values = [float(ap_per_class[n]) for n in names]
    excluded = [n for n, v in ap_per_class.items() if v is None]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(names), 3) + 1.2))
    ax.barh(names[::-1], values[::-1], color="#3b7dd8")
    for y, v in enumerate(values[::-1]):
        ax.text(min(v + 0.01, 0.93), y, f"{v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP")
    ax.set_title(title)
    if excluded:
        fig.text(0.01, 0.01, f"no ground truth (excluded): {', '.join(excluded)}", fontsize=6, wrap=True)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


#: rows of the readers table: verdict key, label, how a value is shown
_VERDICT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("readers", "readers", "int"),
    ("images", "images", "int"),
    ("unanimous_share", "images whose readers agree on normal vs abnormal", "share"),
    ("abnormal_share", "abnormal images", "share"),
    ("panels", "panels (reader sets that read the same images)", "int"),
    ("largest_panel", "the largest panel", "str"),
    ("largest_panel_image_share", "its share of the images", "share"),
    ("largest_panel_abnormal_share", "abnormal among its images", "share"),
    ("others_abnormal_share", "abnormal among everyone else's images", "share"),
    ("style_groups", "style groups (class mix and box size)", "list"),
    ("too_few_boxes", "readers with too few boxes to compare", "int"),
    ("outliers", "outliers", "list"),
    ("human_baseline", "human baseline (mAP40 vs the co-readers' fusion, images with a box)", "num"),
)


def _verdict_cell(v: Any, kind: str) -> str:
    if v is None or (kind == "list" and not v):
        return "none" if kind == "list" else "-"
    if kind == "share":
        return f"{v:.1%}"
    if kind == "num":
        return f"{v:.3f}"
    if kind == "list":
        return ", ".join(v)
    return str(v)


def readers_section(verdicts: Mapping[str, Mapping[str, Any] | None], readers_dir: Path, base: Path) -> list[str]:
    """The readers tool's verdict on the synthetic readers (``verdicts["synthetic"]``), beside its verdict on the real
    VinBigData train.csv (``verdicts["real"]``, vindr-cxr only) so the reader sees what the synthetic world has and
    lacks (:func:`detx.evaluation.reader_agreement.readers_verdict` makes both)."""
    synthetic, real = verdicts.get("synthetic"), verdicts.get("real")
    if not synthetic:
        return []
    lines = ["## The readers: synthetic beside real", "",
             f"`tools/readers.py` on the demo's synthetic reader CSV (`{_rel(readers_dir, base)}/`)"
             + (" and on the real Kaggle VinBigData train.csv (its verdict is committed in "
                "`detx/synthetic/vinbigdata_readers.json`, written by `tools/real_stats.py`)." if real else "."), ""]
    lines += ["| | synthetic (this demo) |" + (" real VinBigData train.csv |" if real else ""),
              "|---|---|" + ("---|" if real else "")]
    for key, label, kind in _VERDICT_ROWS:
        row = f"| {label} | {_verdict_cell(synthetic.get(key), kind)} |"
        lines.append(row + (f" {_verdict_cell(real.get(key), kind)} |" if real else ""))
    lines.append("")
    if real:
        lines += ["Real readers read in panels (one trio reads most abnormal images), draw in styles and agree far less "
                  "with each other than the demo's synthetic ones; the generator's `--profile vinbigdata` draws that "
                  "world (docs/synthetic.md).", ""]
    agreement = readers_dir / "agreement.png"
    if agreement.exists():
        lines += [f"![reader agreement]({_rel(agreement, base)})", ""]
    return lines


def lung_crops_section(facts: Mapping[str, Any], p: Mapping[str, Path], numbers: Mapping[str, float | None],
                       base: Path) -> list[str]:
    """The report's comparison of the CNN on lung crops with the CNN on whole images (``--lung-crops``)."""
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def ci(v: Any) -> str:
        return f" ({v[0]:.3f}-{v[1]:.3f})" if v else ""

    whole_ci = (json.loads(Path(p["cnn_val_metrics"]).read_text()).get("image_level", {}).get("ci") or {}).get("auc")
    n, kept = facts["held_out_images"], facts["area_kept"]
    same = ("the same held-out images" if facts["same_held_out_images"]
            else f"**not the same held-out images** ({n['whole']} whole, {n['crops']} crops)")
    lines = ["## The CNN on lung crops beside the CNN on whole images", "",
             f"The same images, generated again with the lung fields as drawn, prepared cropped to the lung box with a "
             f"margin of {facts['margin']:.0%} (`--crop lungs`; the crops kept {kept['mean']:.0%} of an image on "
             f"average, {kept['min']:.0%}-{kept['max']:.0%}), and the same CNN command trained on fold 0; both scored "
             f"on {same}, {n['crops']} images. In brackets: bootstrap 95% intervals.", "",
             "| input | P(abnormal) AUC | mean per-class AUC |", "|---|---|---|",
             f"| whole image | {f(numbers.get('cnn_auc'))}{ci(whole_ci)} | {f(numbers.get('cnn_auc_macro'))} |",
             f"| lung crop | {f(numbers.get('cnn_auc_lung_crops'))}{ci(facts.get('cnn_auc_ci95'))} | "
             f"{f(numbers.get('cnn_auc_macro_lung_crops'))} |", ""]
    if facts.get("crop_problems"):
        lines += [f"Crop problems (prepare's summary): {facts['crop_problems']}.", ""]
    whole_roc, crop_roc = Path(p["cnn_val_plots"]) / "roc.png", Path(p["lung_cnn_val_plots"]) / "roc.png"
    if whole_roc.exists() and crop_roc.exists():
        lines += ["| whole image | lung crop |", "|---|---|",
                  f"| ![whole-image CNN ROC]({_rel(whole_roc, base)}) | ![lung-crop CNN ROC]({_rel(crop_roc, base)}) |",
                  ""]
    return lines


def write_demo_report(settings: Any, p: Mapping[str, Path], numbers: Mapping[str, float | None],
                      timings: Mapping[str, float], readers: Mapping[str, Mapping[str, Any] | None] | None = None,
                      lung_crops: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.md`` (and ``ap_per_class.png``) beside the demo outputs; return the report path. ``readers``:
    the readers tool's verdicts (``{"synthetic": ..., "real": ...}``) for the readers section; ``lung_crops``: the
    facts of the lung-crop comparison (``detx.workflows.demo.lung_crop_facts``), for its section."""
    report: Path = p["report"]
    base = report.parent
    val = json.loads(Path(p["val_metrics"]).read_text())
    ap_png = plot_ap_per_class(val.get("AP_per_class", {}), base / "ap_per_class.png",
                               title="Held-out fold 0: AP@0.4 per class (challenge metric)")
    lines = [
        f"# detx demo report ({settings.dataset}, synthetic)",
        "",
        f"{settings.n_train} synthetic training images ({settings.folds} folds, trained on fold 0's "
        f"{settings.folds - 1}/{settings.folds}, evaluated on the held-out fold), {settings.n_test} test images, "
        f"PNG size {settings.size} px, {settings.max_iter} iterations of the tiny config on the CPU, TTA "
        f"{', '.join(settings.tta) or 'none'}.",
        "",
        "| number | value |",
        "|---|---|",
    ]
    for k, v in numbers.items():
        lines.append(f"| {NUMBER_LABELS.get(k, k)} | {'n/a' if v is None else f'{v:.3f}'} |")
    lines += ["", "## Training", ""]
    curves = Path(p["train"]) / "curves.png"
    if curves.exists():
        lines += [f"![train and validation loss, mAP]({_rel(curves, base)})", ""]
    lines += ["## Held-out fold: per-class AP", "", f"![AP per class]({_rel(ap_png, base)})", ""]
    plots = Path(p["val_plots"])
    for name, title in (("pr_curves.png", "Precision-recall curves"), ("froc.png", "FROC"),
                        ("roc.png", "Image-level ROC")):
        if (plots / name).exists():
            lines += [f"## {title}", "", f"![{title}]({_rel(plots / name, base)})", ""]
    cnn_roc = Path(p["cnn_val_plots"]) / "roc.png"
    if cnn_roc.exists():
        lines += ["## The image classifier (CNN) beside the detection-derived P(abnormal)", "",
                  "Left: the CNN's P(abnormal); right: P(abnormal) from the detector's boxes (max rule), on the same "
                  "held-out images.", "", "| CNN | from detections |", "|---|---|",
                  f"| ![CNN ROC]({_rel(cnn_roc, base)}) | ![detection ROC]({_rel(plots / 'roc.png', base)}) |", ""]
    if lung_crops:
        lines += lung_crops_section(lung_crops, p, numbers, base)
    heat_dir = Path(p["heatmaps"])
    if (heat_dir / "summary.json").exists():
        summary = json.loads((heat_dir / "summary.json").read_text())
        game = summary.get("pointing_game")
        shown = sorted(heat_dir.glob("*.png"))[:4]
        lines += ["## Heatmaps (Grad-CAM) and the pointing game", "",
                  f"Pointing game: {'n/a' if game is None else f'{game:.2f}'} ({summary.get('hits', 0)} of "
                  f"{summary.get('num_labelled', 0)} labelled abnormal images have the heatmap's peak, the green "
                  "cross, inside a radiologist's box, drawn white).", ""]
        lines += [f"![{h.stem}]({_rel(h, base)})" for h in shown]
        lines.append("")
    if readers:
        lines += readers_section(readers, Path(p["readers"]), base)
    overlays = sorted(Path(p["overlays"]).glob("*.png")) if Path(p["overlays"]).exists() else []
    if overlays:
        lines += ["## Predictions vs ground truth (held-out fold)", "",
                  "Solid boxes: predictions (score >= the overlay threshold); dashed: ground truth.", ""]
        lines += [f"![{o.stem}]({_rel(o, base)})" for o in overlays]
        lines.append("")
    lines += ["## Files", "",
              f"- submission: `{_rel(Path(p['submission']), base)}` (Kaggle format, original DICOM pixels)",
              f"- held-out metrics: `{_rel(Path(p['val_metrics']), base)}`; test metrics: "
              f"`{_rel(Path(p['test_metrics']), base)}`",
              f"- image-level classifier from detections: `{_rel(Path(p['classifier']), base)}`; CNN classifier: "
              f"`{_rel(Path(p['cls_train']), base)}/`",
              f"- training: `{_rel(Path(p['train']), base)}/` (metrics.json, model_best.pth, model_final.pth)",
              "", "## Step timings", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {secs:.0f}{' (reused)' if secs == 0 else ''} |" for name, secs in timings.items()]
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def write_mura_report(settings: Any, p: Mapping[str, Path], numbers: Mapping[str, float | None],
                      timings: Mapping[str, float]) -> Path:
    """``report.md`` of the MURA demo: the numbers, per body part, the ROC and the training curves."""
    report: Path = p["report"]
    base = report.parent
    metrics = json.loads(Path(p["valid_metrics"]).read_text())
    lines = [
        "# detx demo report (MURA layout, synthetic)", "",
        f"{settings.n_train} training images ({settings.folds} folds grouped by patient, trained on fold 0), "
        f"{settings.n_test} images in the official valid split, {settings.cls_max_iter} iterations of the tiny "
        "classifier on the CPU. A study is scored by the mean of its images' probabilities (the MURA protocol).",
        "", "| number | value |", "|---|---|",
    ]
    for k, v in numbers.items():
        lines.append(f"| {NUMBER_LABELS.get(k, k)} | {'n/a' if v is None else f'{v:.3f}'} |")
    parts = metrics.get("per_body_part") or {}
    if parts:
        lines += ["", "## Per body part (study level)", "", "| body part | studies | AUC | sensitivity | specificity | "
                  "kappa |", "|---|---|---|---|---|---|"]
        for bp, m in parts.items():
            cells = ["n/a" if m.get(k) is None else f"{m[k]:.3f}" for k in ("auc", "sensitivity", "specificity",
                                                                          "kappa")]
            lines.append(f"| {bp} | {m['num_studies']} | " + " | ".join(cells) + " |")
    roc = Path(p["valid_plots"]) / "roc.png"
    curves = Path(p["cls_train"]) / "curves.png"
    for path, title in ((roc, "Image-level ROC"), (curves, "Training")):
        if path.exists():
            lines += ["", f"## {title}", "", f"![{title}]({_rel(path, base)})"]
    lines += ["", "## Step timings", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {secs:.0f}{' (reused)' if secs == 0 else ''} |" for name, secs in timings.items()]
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
