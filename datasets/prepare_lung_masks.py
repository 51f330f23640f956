#!/usr/bin/env python
"""Prepare a lung-mask dataset for the lung-field segmenter: images + left/right lung masks -> PNGs, meta.csv and COCO
JSON (categories 'left lung', 'right lung', polygon segmentations and boxes) with folds.

Montgomery:   python datasets/prepare_lung_masks.py --layout montgomery --images MontgomerySet --out prepared/lungs_mc
Shenzhen:     python datasets/prepare_lung_masks.py --layout shenzhen --images ChinaSet --out prepared/lungs_sz
JSRT + SCR:   python datasets/prepare_lung_masks.py --layout folders --images jsrt_png --masks scr/masks \\
                  --out prepared/lungs_jsrt
Synthetic:    python -m detx.synthetic --out syn --n-train 40 --n-test 8 --lung-masks
              python datasets/prepare_lung_masks.py --layout folders --images syn/train \\
                  --masks syn/lung_masks/train --out prepared/lungs_syn --size 256

Bad pairs (missing mask, another size, unreadable, empty) are named in problems.csv and skipped; --strict stops at
the first with exit status 1. See docs/lung-fields.md.
"""

import sys

from detx.cli import prepare_main

DATASET = "lungs"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 the first problem under --strict, 2 bad arguments or input."""
    return prepare_main(DATASET, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
