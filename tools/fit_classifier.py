#!/usr/bin/env python
"""Fit the image-level normal/abnormal classifier on out-of-fold detections and choose its threshold.

    python tools/fit_classifier.py --pred val_submission.csv --gt train.csv --out classifier.json
    python tools/fit_classifier.py --pred val_submission.csv --gt OUT/annotations/val_fold0.json \\
        --out classifier.json --threshold-method sensitivity --target-sensitivity 0.95
    python tools/predict.py ... --classifier classifier.json

Features per image come from its detections (per-class max confidence, max, noisy-or, top-3 mean,
counts above 0.1/0.3/0.5, classes above 0.3); labels are the fused ground truth (abnormal = a finding
box). Fit on predictions written without the 2-class filter. Prints AUC, F1, sensitivity and
specificity of the fitted model and of the `max` rule on the fitting data. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, setup_logging
from detx.core.image_scores import RULES
from detx.workflows.fit_classifier import fit_from_files


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="submission CSV of the fitting images (e.g. out-of-fold predictions)")
    p.add_argument("--gt", required=True, help="reader CSV (Kaggle / PhysioNet / SpineXR) or prepared COCO JSON")
    p.add_argument("--out", required=True, help="classifier JSON to write (atomically)")
    p.add_argument("--kind", default="logistic", choices=["logistic", *RULES],
                   help="logistic regression on the features, or a rule whose threshold only is fitted")
    p.add_argument("--threshold-method", default="youden", choices=["youden", "sensitivity"],
                   help="operating point: Youden's J, or the most specific point reaching --target-sensitivity")
    p.add_argument("--target-sensitivity", type=float, default=0.9, help="for --threshold-method sensitivity")
    p.add_argument("--C", type=float, default=1.0, dest="c", help="inverse L2 strength of the logistic regression")
    p.add_argument("--gt-fusion", default="wbf", choices=["wbf", "nms", "none"],
                   help="how a reader CSV's readers are fused (labels: abnormal when any box remains)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad submission entry or missing image")
    add_version(p)
    return p


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:.4f}"


@exits
def main(args: argparse.Namespace) -> int:
    clf, report = fit_from_files(args.pred, args.gt, args.kind, args.threshold_method, args.target_sensitivity,
                                 args.gt_fusion, args.strict, args.c)
    n_abn = report["fitted"]["num_abnormal"]
    print(f"{report['num_images']} images ({n_abn} abnormal), {len(report['classes'])} classes; "
          f"{report['coverage_text']}")
    print(f"{'':12s} {'AUC':>7s} {'thresh':>7s} {'F1':>7s} {'sens':>7s} {'spec':>7s}")
    for name, m in ((args.kind, report["fitted"]), ("max rule", report["max_rule"])):
        print(f"{name:12s} {_fmt(m['auc']):>7s} {_fmt(m['threshold']):>7s} {_fmt(m['f1']):>7s} "
              f"{_fmt(m['sensitivity']):>7s} {_fmt(m['specificity']):>7s}")
    clf.save(args.out)
    print(f"classifier written to {args.out} (threshold {clf.threshold:.4f}, {clf.threshold_method})")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(get_parser().parse_args()))
