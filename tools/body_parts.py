#!/usr/bin/env python
"""The per-body-part report of a prepared MURA dataset: studies, images and the abnormal share per part, train vs
valid (a bar plot), and with --pred (a classification CSV of tools/predict.py) the study-level AUC, a Youden threshold
per part and the sensitivity / specificity at it beside the global threshold.

    python tools/body_parts.py --data data/prepared/mura_512 --out output/mura_parts
    python tools/body_parts.py --data data/prepared/mura_512 --pred output/mura_valid.csv --out output/mura_parts

Writes DIR/body_parts.csv, DIR/body_parts.png, DIR/body_parts.json. Images of an unknown body part are named and
counted, and skipped (--strict: exit 1). Exit status: 0 done, 1 an unknown part under --strict, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from detx.cli import add_version, exits, setup_logging
from detx.workflows.body_parts import body_part_report


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared MURA dataset (datasets/prepare_mura.py)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--pred", default=None, metavar="CSV", help="classification CSV (image_id, p_abnormal)")
    p.add_argument("--no-plot", action="store_true", help="skip body_parts.png")
    p.add_argument("--strict", action="store_true", help="stop (exit 1) at the first image of an unknown body part")
    add_version(p)
    return p


@exits
def main(args: argparse.Namespace) -> int:
    report = body_part_report(args.data, args.out, args.pred, strict=args.strict, plot=not args.no_plot)
    print(report.format())
    for path in report.files:
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(get_parser().parse_args()))
