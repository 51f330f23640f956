#!/usr/bin/env python
"""Write the real VinBigData annotation aggregates (detx/synthetic/vinbigdata_stats.json) the generator draws from,
and the readers tool's verdict on the same file (detx/synthetic/vinbigdata_readers.json) the demo report quotes.

Reads the real Kaggle VinBigData train.csv shipped in the torchxrayvision wheel (a [dev] extra) and writes facts
about its annotations, not the annotations (detx.synthetic.real_stats, docs/synthetic.md):

    python tools/real_stats.py [--csv PATH] [--out detx/synthetic/vinbigdata_stats.json]
        [--readers-out detx/synthetic/vinbigdata_readers.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from detx.core.errors import DetxError
from detx.core.io import atomic_write_text
from detx.evaluation.reader_agreement import readers_verdict
from detx.synthetic.real_stats import REAL_READERS_PATH, REAL_STATS_PATH, annotation_stats, read_kaggle_csv
from detx.workflows.readers import analyse_readers


def setup(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=None, help="Kaggle train.csv (default: torchxrayvision's vinbigdata-train.csv.gz)")
    parser.add_argument("--out", default=str(REAL_STATS_PATH), help="output JSON")
    parser.add_argument("--readers-out", default=str(REAL_READERS_PATH),
                        help="output JSON of the readers tool's verdict (tools/readers.py on the same CSV)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args.csv is None:
        # located, not imported: torchxrayvision is a [dev] extra, and importing it would load torch models' code
        spec = importlib.util.find_spec("torchxrayvision")
        if spec is None or spec.origin is None:
            print("error: torchxrayvision (a [dev] extra) is not installed; pass --csv", file=sys.stderr)
            return 2
        csv = Path(spec.origin).parent / "data" / "vinbigdata-train.csv.gz"
        source = f"torchxrayvision {importlib.metadata.version('torchxrayvision')} data/{csv.name}"
    else:
        csv, source = Path(args.csv), Path(args.csv).name
    try:
        stats = annotation_stats(read_kaggle_csv(csv), source=source)
        with tempfile.TemporaryDirectory() as tmp:
            verdict = real_readers_verdict(csv, Path(tmp))
    except DetxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, json.dumps(stats, indent=1) + "\n")
    atomic_write_text(args.readers_out, json.dumps({"source": source, **verdict}, indent=1) + "\n")
    print(f"wrote {args.readers_out}: largest panel {verdict['largest_panel']}, style groups "
          f"{', '.join(verdict['style_groups'])}, human baseline {verdict['human_baseline']}")
    print(f"wrote {args.out}: {stats['images']} images, {stats['finding_boxes']} boxes, normal fraction "
          f"{stats['normal_fraction']}")
    return 0


def real_readers_verdict(csv: Path, tmp: Path) -> dict:
    """The readers tool (its defaults, no plots) on ``csv``, reduced to its verdict, floats to 4 decimals."""
    analyse_readers(csv, tmp, plots=False)
    verdict = readers_verdict(json.loads((tmp / "readers.json").read_text()))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in verdict.items()}


if __name__ == "__main__":
    sys.exit(main(setup()))
