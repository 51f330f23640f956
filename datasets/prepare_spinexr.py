#!/usr/bin/env python
"""Prepare VinDr-SpineXR 1.0.0 for detx: DICOM + annotations -> PNGs, meta.csv and fused COCO JSON with folds.

Folds keep all images of a study together. Train:
    python datasets/prepare_spinexr.py --csv vindr-spinexr/1.0.0/annotations/train.csv \\
        --dicom-dir vindr-spinexr/1.0.0/train_images --out prepared/spinexr_1024
Test (annotated, for evaluation): the same with annotations/test.csv and test_images, --folds 0.

See datasets/README.md for the expected layout.
"""

import sys

from detx.cli import prepare_main

DATASET = "spinexr"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 the first problem under --strict, 2 bad arguments or input."""
    return prepare_main(DATASET, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
