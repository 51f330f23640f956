#!/usr/bin/env python
"""Prepare VinDr-CXR for detx: DICOM + reader CSV -> PNGs, meta.csv and fused COCO JSON with folds.

Kaggle VinBigData:   python datasets/prepare_vindr_cxr.py --csv vinbigdata/train.csv --dicom-dir vinbigdata/train \\
                         --out prepared/vindr_cxr_1024
PhysioNet 1.0.0:     python datasets/prepare_vindr_cxr.py --csv vindr-cxr/1.0.0/annotations/annotations_train.csv \\
                         --dicom-dir vindr-cxr/1.0.0/train --out prepared/vindr_cxr_physionet_1024
Test set (no CSV):   python datasets/prepare_vindr_cxr.py --dicom-dir vinbigdata/test --out prepared/vindr_cxr_test

See datasets/README.md for the expected layouts.
"""

import sys

from detx.cli import prepare_main

DATASET = "vindr-cxr"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 the first problem under --strict, 2 bad arguments or input."""
    return prepare_main(DATASET, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
