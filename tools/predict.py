#!/usr/bin/env python
"""Predict a submission CSV (image_id,PredictionString; boxes in original DICOM pixels) with one or more
detectron2 checkpoints, test-time augmentation and WBF ensembling, plus an image-level classifier.

    python tools/predict.py --config-file configs/vindr_cxr/faster_rcnn_R_50_FPN.yaml \\
        --weights output/fold0/model_best.pth output/fold1/model_best.pth \\
        --input data/vindr_cxr_1024/annotations/test.json --out submission.csv --tta hflip
    python tools/predict.py --config-file CFG --weights W --input dicoms/ --out submission.csv \\
        --classifier classifier.json --nofinding-low 0.05 --nofinding-high 0.95 MODEL.DEVICE cuda
    python tools/predict.py --config-file faster/config.yaml retinanet/config.yaml cascade/config.yaml \\
        --weights faster/model_best.pth retinanet/model_best.pth cascade/model_best.pth --model-weights 2 1 1 \\
        --input test.json --out submission.csv --tta hflip      # different detectors, fused with WBF

Every row carries the No-finding entry `<len(classes)> p 0 0 1 1` with p = 1 - P(abnormal). The 2-class
filter on P = P(abnormal): P < --nofinding-low -> the row is only `<nf> 1 0 0 1 1`; low <= P <
--nofinding-high -> boxes kept with confidences multiplied by P; P >= high -> boxes unchanged.
classification.csv (image_id, p_abnormal, label, per-class max confidence) is written beside the
submission. An image that cannot be decoded is written as `<nf> 1 0 0 1 1` with a warning (--strict:
exit 1). Exit status: 0 done, 1 an unreadable image with --strict, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import re
import sys

from detx.cli import add_version, exits, setup_logging
from detx.core.image_scores import RULES
from detx.inference.ensemble import CONF_TYPES
from detx.workflows.predict import PredictOptions, run_predict


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", nargs="+", required=True, metavar="CFG",
                   help="detectron2/detx yaml: one for all --weights, or one per weights file, in the same order "
                        "(different detectors, e.g. Faster R-CNN, RetinaNet and Cascade R-CNN, may be mixed)")
    p.add_argument("--weights", nargs="+", required=True, metavar="W", help="checkpoint(s) (.pth); several are WBF-fused")
    p.add_argument("--input", required=True,
                   help="a prepared COCO JSON (original sizes from its images), a DICOM folder (searched recursively: "
                        "*.dicom, *.dcm, or any file with the DICM marker, e.g. UID-named PACS exports) or a PNG "
                        "folder (original sizes from a meta.csv beside it, else the PNG size)")
    p.add_argument("--out", required=True, help="submission CSV to write (atomically)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--tta", nargs="*", default=[], metavar="T",
                   help="test-time views fused with WBF: 'hflip' and/or 'scale=N' (shortest edge N), e.g. "
                        "--tta hflip scale=1280")
    p.add_argument("--model-weights", nargs="+", type=float, default=None, metavar="W",
                   help="WBF weight per --weights file (default all 1)")
    p.add_argument("--ensemble-iou", type=float, default=0.55, help="WBF IoU threshold (default 0.55)")
    p.add_argument("--ensemble-skip", type=float, default=0.0, help="WBF drops boxes below this score (default 0)")
    p.add_argument("--conf-type", default="avg", choices=CONF_TYPES, help="WBF fused confidence (default avg)")
    p.add_argument("--max-dets", type=int, default=None,
                   help="boxes kept per image after fusion (default TEST.DETECTIONS_PER_IMAGE)")
    p.add_argument("--classifier", default=None, metavar="JSON",
                   help="P(abnormal) from a classifier fitted by tools/fit_classifier.py (default: --rule)")
    p.add_argument("--rule", default="max", choices=RULES,
                   help="P(abnormal) from the detections without a classifier: max or noisy-or (default max)")
    p.add_argument("--classifier-csv", default=None, metavar="CSV",
                   help="external P(abnormal): CSV image_id,p_abnormal covering every input image")
    p.add_argument("--nofinding-low", type=float, default=0.0,
                   help="P(abnormal) below this: the row becomes '<nf> 1 0 0 1 1' (default 0: never)")
    p.add_argument("--nofinding-high", type=float, default=None,
                   help="P(abnormal) at or above this: boxes unchanged; between low and high box confidences are "
                        "multiplied by P(abnormal) (default: = --nofinding-low, no middle band)")
    p.add_argument("--classification-out", default=None, metavar="CSV",
                   help="image-level CSV (default: classification.csv beside --out)")
    p.add_argument("--vis-dir", default=None, metavar="DIR",
                   help="write overlays (colour per class; ground truth dashed white for a labelled JSON)")
    p.add_argument("--vis-num", type=int, default=16, help="overlays to draw, spread over the input (default 16)")
    p.add_argument("--vis-score", type=float, default=0.3, help="draw boxes from this confidence (default 0.3)")
    p.add_argument("--dicom-size", type=int, default=None,
                   help="longest side DICOMs are decoded to, as in preparation (default: the size the model was "
                        "trained on, DETX.IMAGE_SIZE in its config.yaml; a difference is warned about)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default DATALOADER.NUM_WORKERS)")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA (AMP is on by default there)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="save each batch's raw predictions here; a rerun skips images already predicted by every "
                        "model and view (resume an interrupted run)")
    p.add_argument("--strict", action="store_true", help="stop (exit 1) at the first image that cannot be read")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_version(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.DEVICE cpu TEST.DETECTIONS_PER_IMAGE 200")
    return p


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, with the ``KEY VALUE`` overrides split off first: the list options (--weights ...) would
    otherwise swallow them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = next((i for i, t in enumerate(argv) if _CONFIG_KEY.match(t)), len(argv))
    args = get_parser().parse_args(argv[:cut])
    args.opts = list(args.opts) + argv[cut:]
    return args


@exits
def main(args: argparse.Namespace) -> int:
    options = PredictOptions(
        config_files=args.config_file, weights=args.weights, input=args.input, out=args.out, opts=args.opts,
        batch_size=args.batch_size, tta=args.tta, model_weights=args.model_weights, ensemble_iou=args.ensemble_iou,
        ensemble_skip=args.ensemble_skip, conf_type=args.conf_type, max_dets=args.max_dets,
        classifier=args.classifier, rule=args.rule, classifier_csv=args.classifier_csv,
        nofinding_low=args.nofinding_low, nofinding_high=args.nofinding_high,
        classification_out=args.classification_out, vis_dir=args.vis_dir, vis_num=args.vis_num,
        vis_score=args.vis_score, dicom_size=args.dicom_size, num_workers=args.workers, amp=not args.no_amp,
        strict=args.strict, progress=not args.quiet, cache_dir=args.cache_dir)
    summary = run_predict(options)
    failed = summary["failed"]
    print(f"wrote {summary['out']} ({summary['num_images']} images, {len(summary['sets'])} prediction set(s) "
          f"fused: {', '.join(summary['sets'])}) and {summary['classification']}")
    if failed:
        print(f"warning: {len(failed)} image(s) could not be read and were written as no finding: "
              f"{', '.join(list(failed)[:10])}", file=sys.stderr)
    if summary["vis"]:
        print(f"{len(summary['vis'])} overlay(s) in {args.vis_dir}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(parse_args()))
