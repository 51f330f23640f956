#!/usr/bin/env python
"""Heatmaps of an image classifier (Grad-CAM, DeepLIFT or Integrated Gradients, with Captum) scored against the
radiologists' boxes by the pointing game.

    python tools/explain.py --config-file output/cls/config.yaml --weights output/cls/model_best.pth \\
        --input data/prepared/vinbigdata_1024/annotations/val_fold0.json --out output/heatmaps --method gradcam
    python tools/explain.py ... --class Cardiomegaly --max-images 50

Writes one overlay PNG per image (heat over the X-ray; ground-truth boxes and the peak drawn), DIR/heatmaps.csv
(image_id, class, p, peak_x, peak_y in original pixels, hit) and DIR/summary.json (pointing_game overall and per
class; null without ground truth). Exit status: 0 done, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, parse_with_overrides, setup_logging
from detx.inference.attribution import METHODS
from detx.workflows.explain import ExplainOptions, run_explain


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the image classifier's yaml (e.g. its OUTPUT_DIR/config.yaml)")
    p.add_argument("--weights", required=True, help="the classifier checkpoint (.pth)")
    p.add_argument("--input", required=True,
                   help="a prepared COCO JSON (its boxes are the ground truth of the pointing game), a DICOM folder or "
                        "a PNG folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="gradcam", choices=METHODS, help="attribution method (default gradcam)")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="the output to explain: 'abnormal' (default) or a class name of a multi-label classifier")
    p.add_argument("--max-images", type=int, default=None, help="explain only the first N images")
    p.add_argument("--dicom-size", type=int, default=None,
                   help="longest side DICOMs are decoded to (default: the size the model was trained on)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_version(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides, e.g. MODEL.DEVICE cpu")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_overrides(get_parser(), argv)


@exits
def main(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        print("error: --max-images must be at least 1", file=sys.stderr)
        return 2
    s = run_explain(ExplainOptions(args.config_file, args.weights, args.input, args.out, args.method, args.class_name,
                                   args.max_images, args.dicom_size, args.opts, not args.quiet))
    game = "n/a (no ground-truth boxes)" if s["pointing_game"] is None else \
        f"{s['pointing_game']:.3f} ({s['hits']} of {s['num_labelled']} labelled abnormal images)"
    print(f"{s['num_images']} heatmap(s) of '{s['target']}' ({s['method']}) in {args.out}; pointing game {game}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(parse_args()))
