#!/usr/bin/env python
"""Prepare VinDr-SpineXR 1.0.0 for detx: DICOM + annotations -> PNGs, meta.csv and fused COCO JSON with folds.

Folds keep all images of a study together. Train:
    python datasets/prepare_spinexr.py --csv vindr-spinexr/1.0.0/annotations/train.csv \\
        --dicom-dir vindr-spinexr/1.0.0/train_images --out prepared/spinexr_1024
Test (annotated, for evaluation): the same with annotations/test.csv and test_images, --folds 0.

See datasets/README.md for the expected layout.
"""

import argparse
import logging
import sys

from detx.data.prepare import add_prepare_arguments, prepare_from_args

DATASET = "spinexr"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser, DATASET)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare_from_args(args, DATASET)
    except (ValueError, OSError) as e:  # DataError (strict mode), bad options, missing files
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
