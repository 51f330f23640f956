#!/usr/bin/env python
"""Evaluate a submission CSV against ground truth: the VinBigData challenge metric (VOC mAP at IoU > 0.4),
COCO numbers, FROC and image-level normal/abnormal metrics. Prints a per-class table, writes a JSON. A reader CSV
with rad_id also gives the human baseline: each reader's mAP40 against the fusion of the other readers, pooled over the
images with a box.

    python tools/evaluate.py --gt train.csv --pred submission.csv --out metrics.json --plots plots/
    python tools/evaluate.py --gt OUT/annotations/val_fold0.json --pred submission.csv
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, setup_logging
from detx.core.io import write_json
from detx.workflows.evaluate import default_workers, evaluate_files, format_table


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True,
                   help="ground truth: a reader CSV (Kaggle train.csv, PhysioNet annotations_*.csv or VinDr-SpineXR "
                        "annotations, sniffed from the header) or a prepared COCO JSON (*.json)")
    p.add_argument("--pred", required=True, help="submission CSV: image_id,PredictionString, original pixels")
    p.add_argument("--gt-fusion", default="wbf", choices=["wbf", "nms", "none"],
                   help="how the readers' boxes of a reader CSV become one ground truth (default: wbf)")
    p.add_argument("--gt-fusion-iou", type=float, default=0.4, help="IoU that clusters readers' boxes (default 0.4)")
    p.add_argument("--iou-thr", type=float, default=0.4,
                   help="a detection matches when IoU > this (challenge metric, FROC, coco_mAP40; default 0.4)")
    p.add_argument("--threshold", type=float, default=None,
                   help="image-level operating point on P(abnormal) (default: Youden-optimal on these images)")
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    p.add_argument("--plots", default=None, metavar="DIR", help="write pr_curves.png, froc.png, roc.png here")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes sharing the COCO evaluation's categories (default: CPU count, at most 4)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad entry or missing/extra image (default: skip it with a warning)")
    add_version(p)
    return p


@exits
def main(args: argparse.Namespace) -> int:
    result = evaluate_files(args.gt, args.pred, gt_fusion=args.gt_fusion, iou_thr=args.iou_thr,
                            strict=args.strict, fusion_iou_thr=args.gt_fusion_iou, threshold=args.threshold,
                            workers=args.workers)
    print(format_table(result.metrics))
    if args.out:
        write_json(args.out, result.metrics, indent=2)
        print(f"metrics written to {args.out}")
    if args.plots:
        from detx.viz.metrics_plots import plot_evaluation  # matplotlib only when plots are asked for

        for path in plot_evaluation(result.curves, args.plots, args.iou_thr):
            print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(get_parser().parse_args()))
