#!/usr/bin/env python
"""Overlays of an existing submission against the ground truth: the fused boxes (white, dashed) or, with --readers,
each reader's own boxes (a colour per reader, dashed); predictions solid in their class colour with their
confidence, from --score.

    python tools/visualize.py --pred submission.csv --input data/vindr_cxr_1024/annotations/val_fold0.json \\
        --out vis/ --worst 20
    python tools/visualize.py --pred submission.csv --input dicoms/ --gt train.csv --readers \\
        --image-ids 9a5094b2563a1ef3ff50dc5c7ff71345 --out vis/

Images: what tools/predict.py --input takes (a prepared JSON, a DICOM folder, a PNG folder with its meta.csv).
Ground truth: --gt (a reader CSV, fused like evaluation, or a prepared JSON), else the labelled --input JSON.
Which images: --image-ids, else the --worst N by per-image error = missed ground-truth boxes + false-positive
predictions at or above --score (matched within a class at IoU > --iou-thr by the challenge's rule). Writes
OUT/<image_id>.png and OUT/errors.csv (every image's counts, worst first).
Exit status: 0 done, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, setup_logging
from detx.workflows.visualize import VisualizeOptions, run_visualize


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="submission CSV (image_id,PredictionString, original pixels)")
    p.add_argument("--input", required=True, help="the images: a prepared JSON, a DICOM folder or a PNG folder")
    p.add_argument("--gt", default=None,
                   help="reader CSV or prepared JSON (default: the --input JSON's own ground truth)")
    p.add_argument("--readers", action="store_true",
                   help="draw each reader's own boxes, a colour per reader (needs a reader CSV with rad_id)")
    p.add_argument("--image-ids", nargs="+", default=[], metavar="ID", help="the images to draw")
    p.add_argument("--worst", type=int, default=16,
                   help="without --image-ids: the N images of highest per-image error (default 16)")
    p.add_argument("--score", type=float, default=0.3,
                   help="predictions drawn and counted from this confidence (default 0.3)")
    p.add_argument("--iou-thr", type=float, default=0.4, help="a prediction finds a box at IoU > this (default 0.4)")
    p.add_argument("--gt-fusion", default="wbf", choices=["wbf", "nms", "none"],
                   help="fusion of a reader CSV's boxes into the ground truth (default wbf)")
    p.add_argument("--dicom-size", type=int, default=1024, help="longest side DICOMs are decoded to (default 1024)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_version(p)
    return p


@exits
def main(args: argparse.Namespace) -> int:
    summary = run_visualize(VisualizeOptions(
        pred=args.pred, input=args.input, out=args.out, gt=args.gt, readers=args.readers, image_ids=args.image_ids,
        worst=args.worst, score_thr=args.score, iou_thr=args.iou_thr, gt_fusion=args.gt_fusion,
        dicom_size=args.dicom_size))
    what = "each reader's boxes" if summary["truth"] == "readers" else "the fused ground truth"
    print(f"{len(summary['written'])} overlay(s) against {what} in {args.out}; per-image errors in "
          f"{summary['errors_csv']}")
    for e in summary["selected"][:10]:
        print(f"  {e['image_id']}: error {e['error']} ({e['missed']} of {e['gt_boxes']} GT missed, "
              f"{e['false_positives']} of {e['pred_boxes']} predictions false)")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(get_parser().parse_args()))
