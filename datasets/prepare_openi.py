#!/usr/bin/env python
"""Prepare the Indiana University chest X-ray collection (Open-i) for detx: PNGs, meta.csv (study_id, label =
abnormal by MeSH, view), reports.csv, COCO JSON without boxes carrying each image's findings as image_labels, and
folds grouped by study.

    python datasets/prepare_openi.py --reports data/raw/NLMCXR_reports.tgz --images data/raw/NLMCXR_png \\
        --metadata data/raw/nlmcxr_dicom_metadata.csv.gz --out data/prepared/openi_512 --size 512 --folds 5

Label rule: a study is normal iff its MeSH major terms are exactly 'normal'. See docs/openi.md.
"""

import sys

from detx.cli import prepare_main

DATASET = "openi"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 the first problem under --strict, 2 bad arguments or input."""
    return prepare_main(DATASET, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
