#!/usr/bin/env python
"""Export a trained detector or image classifier to TorchScript or ONNX, for inference without detx's Python code.

    python tools/export.py --config-file output/r50_fold0/config.yaml --weights output/r50_fold0/model_best.pth \\
        --format torchscript --out output/r50_fold0/model.ts
    python tools/export.py --config-file output/cls_r50_fold0/config.yaml \\
        --weights output/cls_r50_fold0/model_best.pth --format onnx --out output/cls_r50_fold0/model.onnx

The file carries detx's metadata (kind, class names, INPUT.FORMAT, the resize rule, DETX.IMAGE_SIZE, the score
threshold, ...): `tools/predict.py --exported FILE` runs it like the checkpoint, and the README's "Deployment"
section gives the pre/post-processing contract for other languages. The export runs the written file beside the
eager model on a sample image and keeps it only if they agree (same detections, scores within 1e-3, corners within
1 px). Exit status: 0 done, 2 bad arguments or input (an unknown format, weights that do not fit the config, an
operator ONNX cannot export, named; a file that disagrees with the eager model).
"""

from __future__ import annotations

import argparse
import re
import sys

from detx.cli import add_version, exits, setup_logging
from detx.inference.export import FORMATS
from detx.workflows.export import ExportOptions, run_export


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="CFG", help="the model's yaml (its training config.yaml)")
    p.add_argument("--weights", required=True, metavar="W", help="the checkpoint (.pth) to export")
    p.add_argument("--format", required=True, choices=FORMATS, help="torchscript or onnx")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (atomically)")
    p.add_argument("--sample-image", default=None, metavar="IMAGE",
                   help="a PNG or DICOM to trace on and check with (default: synthetic noise at the test size)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the written file beside the eager model on the sample image")
    add_version(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.DEVICE cpu MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.01")
    return p


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = next((i for i, t in enumerate(argv) if _CONFIG_KEY.match(t)), len(argv))
    args = get_parser().parse_args(argv[:cut])
    args.opts = list(args.opts) + argv[cut:]
    return args


@exits
def main(args: argparse.Namespace) -> int:
    summary = run_export(ExportOptions(config_file=args.config_file, weights=args.weights, format=args.format,
                                       out=args.out, opts=args.opts, sample_image=args.sample_image,
                                       verify=not args.no_verify))
    print(f"wrote {summary['out']} ({summary['format']} {summary['kind']}, {summary['classes']} classes, "
          f"{summary['bytes'] / 1e6:.1f} MB)")
    check = summary["verify"]
    if check is not None:
        if summary["kind"] == "detector":
            detail = (f"{check['exported']} vs {check['reference']} detections, {check['unmatched']} unmatched, "
                      f"max box diff {check['max_box_diff']:.3g} px, max score diff {check['max_score_diff']:.3g}")
        else:
            detail = f"max probability diff {check['max_prob_diff']:.3g}"
        print(f"exported model agrees with the eager model on a {'x'.join(map(str, summary['input']))} sample: "
              f"{detail}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(parse_args()))
