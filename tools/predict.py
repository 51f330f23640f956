#!/usr/bin/env python
"""Predict a submission CSV (image_id,PredictionString; boxes in original DICOM pixels) with one or more
detectron2 checkpoints, test-time augmentation and WBF ensembling, plus an image-level classifier.

    python tools/predict.py --config-file configs/vindr_cxr/faster_rcnn_R_50_FPN.yaml \\
        --weights output/fold0/model_best.pth output/fold1/model_best.pth \\
        --input data/vindr_cxr_1024/annotations/test.json --out submission.csv --tta hflip
    python tools/predict.py --config-file CFG --weights W --input dicoms/ --out submission.csv \\
        --classifier classifier.json --nofinding-low 0.05 --nofinding-high 0.95 MODEL.DEVICE cuda
    python tools/predict.py --exported model_fold0.ts model_fold1.onnx --input dicoms/ --out submission.csv
    python tools/predict.py --classifier-config CFG --classifier-weights W --input one_image.dcm   # one sentence
    python tools/predict.py --config-file CFG --weights W --input dicoms/ --out submission.csv --num-gpus 4
    python tools/predict.py --config-file faster/config.yaml retinanet/config.yaml cascade/config.yaml \\
        --weights faster/model_best.pth retinanet/model_best.pth cascade/model_best.pth --model-weights 2 1 1 \\
        --input test.json --out submission.csv --tta hflip      # different detectors, fused with WBF

Every row carries the No-finding entry `<len(classes)> p 0 0 1 1` with p = 1 - P(abnormal). The 2-class
filter on P = P(abnormal): P < --nofinding-low -> the row is only `<nf> 1 0 0 1 1`; low <= P <
--nofinding-high -> boxes kept with confidences multiplied by P; P >= high -> boxes unchanged.
The classification CSV (image_id, p_abnormal, label, status, per-class max confidence) is written beside the
submission as <out stem>.classification.csv (or --classification-out). An image that cannot be decoded is
written as `<nf> 1 0 0 1 1` with a warning (--strict: exit 1), marked `status unreadable` in the classification
CSV, listed in <out stem>.problems.csv and counted in the closing line. PNGs of unknown original size (no
meta.csv) are refused unless --png-frame. Exit status: 0 done, 1 an unreadable image with --strict, 2 bad
arguments or input.

--input FILE (one DICOM or PNG) answers in a sentence ("X-ray 0a1b is abnormal (P(abnormal) 0.912, threshold 0.5).
Findings: ..."); --out/--classification-out are then optional, --json prints the whole answer (boxes in original
pixels, per-class probabilities), the same as Python's detx.XrayPredictor(...).predict(FILE).
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, parse_with_overrides, setup_logging
from detx.core.image_scores import RULES
from detx.inference.ensemble import CONF_TYPES
from detx.workflows.predict import LaunchOptions, PredictOptions, run_predict


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", nargs="+", default=[], metavar="CFG",
                   help="detector yaml: one for all --weights, or one per weights file, in the same order (different "
                        "detectors, e.g. Faster R-CNN, RetinaNet and Cascade R-CNN, may be mixed)")
    p.add_argument("--weights", nargs="+", default=[], metavar="W",
                   help="detector checkpoint(s) (.pth); several are WBF-fused")
    p.add_argument("--classifier-config", nargs="+", default=[], metavar="CFG",
                   help="image classifier yaml (META_ARCHITECTURE DetxClassifier): one for all, or one per weights file")
    p.add_argument("--classifier-weights", nargs="+", default=[], metavar="W",
                   help="image classifier checkpoint(s); their probabilities are averaged (and over --tta views). "
                        "Its P(abnormal) gives the No-finding entry and drives the 2-class filter; without a "
                        "detector only --classification-out is written")
    p.add_argument("--exported", nargs="+", action="extend", default=[], metavar="FILE",
                   help="files written by tools/export.py (TorchScript or ONNX; detectors and/or image classifiers, "
                        "told apart by their metadata); may be repeated and mixed with checkpoints. Detectors are "
                        "WBF-fused with the --weights ones, classifiers averaged with the --classifier-weights ones")
    p.add_argument("--score-scaling", action="store_true",
                   help="multiply each box's confidence by the classifier's probability of its class")
    p.add_argument("--input", required=True,
                   help="a prepared COCO JSON (original sizes from its images), a DICOM folder (searched recursively: "
                        "*.dicom, *.dcm, or any file with the DICM marker, e.g. UID-named PACS exports) or a PNG "
                        "folder (original sizes from a meta.csv beside it, else the PNG size)")
    p.add_argument("--out", default=None, help="submission CSV to write (atomically); needed with a detector")
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
                   help="image-level CSV (default: <out stem>.classification.csv beside --out)")
    p.add_argument("--vis-dir", default=None, metavar="DIR",
                   help="write overlays (colour per class; ground truth dashed white for a labelled JSON)")
    p.add_argument("--vis-num", type=int, default=16, help="overlays to draw, spread over the input (default 16)")
    p.add_argument("--vis-score", type=float, default=0.3, help="draw boxes from this confidence (default 0.3)")
    p.add_argument("--png-frame", action="store_true",
                   help="accept PNGs whose original size is unknown (no meta.csv): their boxes are written in PNG "
                        "pixels, listed in <out stem>.problems.csv (without it such an input is refused)")
    p.add_argument("--dicom-size", type=int, default=None,
                   help="longest side DICOMs are decoded to, as in preparation (default: the size the model was "
                        "trained on, DETX.IMAGE_SIZE in its config.yaml; a difference is warned about)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default DATALOADER.NUM_WORKERS)")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA (AMP is on by default there)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="save each batch's raw predictions here; a rerun skips images already predicted by every "
                        "model and view (resume an interrupted run)")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="prediction processes per machine (detectron2 launch; on the CPU, processes over gloo): the "
                        "images are shared out and the main process writes the outputs (default 1)")
    p.add_argument("--num-machines", type=int, default=1, help="machines (default 1)")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (default 0)")
    p.add_argument("--dist-url", default="auto",
                   help="rendezvous of the processes, tcp://HOST:PORT of machine 0 (default auto: a free local port, "
                        "one machine only)")
    p.add_argument("--strict", action="store_true", help="stop (exit 1) at the first image that cannot be read")
    p.add_argument("--body-part", default=None, help="--input FILE: the body part to name in the sentence (MURA: "
                   "XR_HUMERUS; default: read from a MURA path)")
    p.add_argument("--json", action="store_true", help="--input FILE: also print the whole answer as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_version(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.DEVICE cpu TEST.DETECTIONS_PER_IMAGE 200")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_overrides(get_parser(), argv)


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
        strict=args.strict, progress=not args.quiet, cache_dir=args.cache_dir,
        classifier_configs=args.classifier_config, classifier_weights=args.classifier_weights,
        score_scaling=args.score_scaling, exported=args.exported, png_frame=args.png_frame)
    summary = run_predict(options, LaunchOptions(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url))
    failed = summary["failed"]
    if "answers" in summary:  # one image file: the answer in a sentence
        import json

        from detx.inference.answer import ImageAnswer

        for d in summary["answers"]:
            answer = ImageAnswer.from_dict(d)
            if args.body_part:
                answer.body_part = args.body_part
            print(answer.sentence(min_score=args.vis_score))
            if args.json:
                print(json.dumps(answer.to_dict()))
        for image_id, why in failed.items():
            print(f"error: image {image_id} cannot be read: {why}", file=sys.stderr)
        return 1 if failed else 0
    cnn = f", {summary['classifiers']} image classifier(s)" if summary["classifiers"] else ""
    if failed:
        cnn += f", {len(failed)} unreadable written as no finding"
    if summary.get("processes", 1) > 1:
        cnn += f", {summary['processes']} processes"
    if summary["classification"] is None:
        print(f"machine {args.machine_rank} predicted its share of {summary['num_images']} images; machine 0 "
              "writes the outputs")
    elif summary["out"]:
        print(f"wrote {summary['out']} ({summary['num_images']} images, {len(summary['sets'])} prediction set(s) "
              f"fused: {', '.join(summary['sets'])}{cnn}) and {summary['classification']}")
    else:
        print(f"wrote {summary['classification']} ({summary['num_images']} images{cnn})")
    if failed:
        print(f"warning: {len(failed)} of {summary['num_images']} image(s) could not be read and were written as no "
              f"finding (status unreadable in the classification CSV; listed in {summary['problems']}): "
              f"{', '.join(list(failed)[:10])}", file=sys.stderr)
    if summary.get("png_frame"):
        print(f"warning: the boxes of {summary['png_frame']} image(s) are in PNG pixels, not original DICOM pixels "
              f"(--png-frame; listed in {summary['problems']})", file=sys.stderr)
    if summary["vis"]:
        empty = summary.get("vis_empty", 0)
        note = f"; {empty} show no box at or above --vis-score {summary['vis_score']:g}" if empty else ""
        print(f"{len(summary['vis'])} overlay(s) in {args.vis_dir}{note}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(parse_args()))
