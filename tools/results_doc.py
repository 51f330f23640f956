#!/usr/bin/env python
"""Regenerate docs/results.md from the results files a run wrote, so every quoted number comes from a file.

    python tools/results_doc.py [--demo output/demo/results.json] [--spread SPREAD.json] [--check]

``--demo`` copies a demo run's ``results.json`` (``make demo``) to ``docs/results/demo.json``; ``--spread`` copies
the output of ``benchmarks/demo_spread.py --json`` to ``docs/results/demo_spread.json``; then ``docs/results.md`` is
written from ``docs/results/*.json``. ``--check`` writes nothing and exits 1 when docs/results.md is not what the
files say (tests/test_results_doc.py runs it, and checks that the README quotes the same numbers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "results.md"

LABELS = {
    "mAP40": "held-out fold, challenge metric (mAP@0.4)",
    "auc": "held-out fold, image-level AUC, P(abnormal) from the detections",
    "cnn_auc": "held-out fold, image-level AUC of the tiny CNN classifier",
    "test_mAP40": "synthetic test set, challenge metric",
    "test_auc": "synthetic test set, image-level AUC, No-finding entries from the CNN",
    "test_auc_detection": "synthetic test set, image-level AUC, P(abnormal) from the detections",
}


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render(demo: dict, spread: dict | None) -> str:
    """The text of docs/results.md from the demo's results.json (and the spread's JSON, when there is one)."""
    env = demo["environment"]
    lines = [
        "# Results (generated: do not edit)",
        "",
        "Written by `python tools/results_doc.py` from `docs/results/*.json`, the files the runs themselves wrote "
        "(`make demo` -> `output/demo/results.json`; `python benchmarks/demo_spread.py --json`). "
        "The README quotes these numbers and `tests/test_results_doc.py` checks that it does.",
        "",
        "## The demo (`make demo`)",
        "",
        f"One run with seed {demo['settings']['seed']}, {demo['seconds'] / 60:.1f} min in all; environment: Python "
        f"{env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, numpy {env['numpy']}, "
        f"opencv-python-headless {env['opencv-python-headless']}, albumentations {env['albumentations']}, "
        f"detectron2 {env['detectron2']}.",
        "",
        f"| number | what | value | bootstrap 95% interval ({demo['n_boot']} resamples of the images) |",
        "|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        ci = demo["ci95"].get(key)
        lines.append(f"| `{key}` | {label} | {fmt(demo['numbers'].get(key))} | "
                     f"{'n/a' if not ci else f'{ci[0]:.3f}-{ci[1]:.3f}'} |")
    other = [k for k in demo["numbers"] if k not in LABELS]
    lines += ["", "Other numbers of the same run: " + ", ".join(f"`{k} {fmt(demo['numbers'][k])}`" for k in other)
              + "."]
    if spread:
        lines += ["", "## The demo's spread (`benchmarks/demo_spread.py`)", "",
                  f"{spread['description']}", "",
                  "| run | " + " | ".join(f"`{k}`" for k in spread["keys"]) + " | minutes |",
                  "|---|" + "---|" * (len(spread["keys"]) + 1)]
        for run in spread["runs"]:
            lines.append(f"| {run['name']} | " + " | ".join(fmt(run["numbers"].get(k)) for k in spread["keys"])
                         + f" | {run['seconds'] / 60:.1f} |")
        lines.append("| **spread (max - min)** | " + " | ".join(fmt(spread["spread"].get(k)) for k in spread["keys"])
                     + " | |")
    return "\n".join(lines) + "\n"


def load() -> tuple[dict, dict | None]:
    demo = json.loads((RESULTS / "demo.json").read_text())
    spread_file = RESULTS / "demo_spread.json"
    return demo, json.loads(spread_file.read_text()) if spread_file.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default=None, help="a demo run's results.json to copy to docs/results/demo.json")
    p.add_argument("--spread", default=None, help="benchmarks/demo_spread.py's JSON to copy to docs/results/")
    p.add_argument("--check", action="store_true", help="exit 1 when docs/results.md is out of date; write nothing")
    args = p.parse_args(argv)
    if not args.check:
        RESULTS.mkdir(parents=True, exist_ok=True)
        if args.demo:
            shutil.copyfile(args.demo, RESULTS / "demo.json")
        if args.spread:
            shutil.copyfile(args.spread, RESULTS / "demo_spread.json")
    text = render(*load())
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python tools/results_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
