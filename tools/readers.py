#!/usr/bin/env python
"""Who the readers of a reader CSV are and how much they agree: the panels (which reader sets read which images),
per reader the images read, boxes per image, class mix, drawing style and style group, share called normal, the
challenge metric against the fusion of the other readers of its images (mAP40_vs_others, per class too), the paired
comparison with its co-readers, Cohen's kappa on normal/abnormal, and the outlier readers; the human baseline (on the
images with a box, overall and per panel) a model can be compared with. Rules and real output: docs/readers.md.

    python tools/readers.py --csv train.csv --out output/readers
    python tools/readers.py --csv train.csv --meta prepared/vindr_cxr_1024/meta.csv --out output/readers
    python tools/readers.py --csv annotations/train.csv --dataset spinexr --out output/spine_readers

Writes DIR/readers.csv, DIR/readers.json, DIR/kappa.csv, DIR/agreement.png and DIR/reader_class_heatmap.png.
Exit status: 0 done, 2 bad arguments or input (a CSV without rad_id, a --meta lacking images of the CSV); on bad
input nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, setup_logging
from detx.workflows.readers import analyse_readers, format_report


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True,
                   help="reader CSV with rad_id: Kaggle train.csv, PhysioNet annotations_train.csv or VinDr-SpineXR "
                        "annotations (sniffed from the header)")
    p.add_argument("--dataset", choices=["vindr-cxr", "spinexr"], default=None,
                   help="check that the CSV is of this dataset (default: whatever its header says)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--iou-thr", type=float, default=0.4,
                   help="a reader's box matches when IoU > this; also the IoU at which the others' boxes fuse "
                        "(default 0.4)")
    p.add_argument("--fusion", default="wbf", choices=["wbf", "nms", "none"],
                   help="how the other readers' boxes become one ground truth (default wbf)")
    p.add_argument("--fusion-iou", type=float, default=None,
                   help="IoU at which the other readers' boxes fuse (default: --iou-thr)")
    p.add_argument("--no-kaggle-classes", action="store_true",
                   help="PhysioNet: keep all 22 local labels instead of mapping them onto the Kaggle 14")
    p.add_argument("--meta", default=None, metavar="CSV",
                   help="meta.csv of a dataset prepared from this CSV (or a table image_id,width,height): box sizes "
                        "and positions relative to the image in the drawing styles (default: pixels)")
    p.add_argument("--no-plots", action="store_true", help="skip agreement.png and reader_class_heatmap.png")
    add_version(p)
    return p


@exits
def main(args: argparse.Namespace) -> int:
    report = analyse_readers(args.csv, args.out, dataset=args.dataset, iou_thr=args.iou_thr, fusion=args.fusion,
                             fusion_iou_thr=args.fusion_iou, kaggle_classes=not args.no_kaggle_classes,
                             plots=not args.no_plots, meta=args.meta)
    print(format_report(report))
    for path in report.files:
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(get_parser().parse_args()))
