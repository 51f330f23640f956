#!/usr/bin/env python
"""Prepare MURA v1.1 (musculoskeletal radiographs, normal/abnormal per study) for detx: PNGs, meta.csv and COCO JSON
without boxes, folds of the train split grouped by patient, the official valid split as annotations/valid.json.

    python datasets/prepare_mura.py --root data/raw --out data/prepared/mura_512 --size 512 --folds 5

--root holds MURA-v1.1/ (or is it). See datasets/README.md and the README's MURA section.
"""

import sys

from detx.cli import prepare_main

DATASET = "mura"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 the first problem under --strict, 2 bad arguments or input."""
    return prepare_main(DATASET, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
