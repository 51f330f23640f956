#!/usr/bin/env python
"""Prepare VinDr-CXR for detx: DICOM + reader CSV -> PNGs, meta.csv and fused COCO JSON with folds.

Kaggle VinBigData:   python datasets/prepare_vindr_cxr.py --csv vinbigdata/train.csv --dicom-dir vinbigdata/train \\
                         --out prepared/vindr_cxr_1024
PhysioNet 1.0.0:     python datasets/prepare_vindr_cxr.py --csv vindr-cxr/1.0.0/annotations/annotations_train.csv \\
                         --dicom-dir vindr-cxr/1.0.0/train --out prepared/vindr_cxr_physionet_1024
Test set (no CSV):   python datasets/prepare_vindr_cxr.py --dicom-dir vinbigdata/test --out prepared/vindr_cxr_test

See datasets/README.md for the expected layouts.
"""

import argparse
import logging
import sys

from detx.data.prepare import add_prepare_arguments, prepare_from_args

DATASET = "vindr-cxr"


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
