#!/usr/bin/env python
"""Regenerate docs/results.md from the results files a run wrote, so every quoted number comes from a file.

    python tools/results_doc.py [--demo output/demo/results.json] [--spread SPREAD.json] [--test-size TS.json]
        [--mura-spread MURA_SPREAD.json] [--check]

``--demo`` copies a demo run's ``results.json`` (``make demo``) to ``docs/results/demo.json``; ``--spread`` copies
the output of ``benchmarks/demo_spread.py --json`` to ``docs/results/demo_spread.json`` (``--mura-spread``: of
``demo_spread.py --dataset mura``, to ``demo_mura_spread.json``); then ``docs/results.md`` is
written from ``docs/results/*.json``, and the spread's table also into benchmarks/RESULTS.md, between the lines
``<!-- demo-spread:begin -->`` and ``<!-- demo-spread:end -->`` (the rest of that file is left as it is).
``--check`` writes nothing and exits 1 when either is not what the files say (tests/test_results_doc.py checks the
same, and that the README quotes the same numbers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from detx.core.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "results.md"
BENCH_RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SPREAD_BEGIN = "<!-- demo-spread:begin -->"
SPREAD_END = "<!-- demo-spread:end -->"

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


def render(demo: dict, spread: dict | None, test_size: dict | None = None, mura_spread: dict | None = None) -> str:
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
        f"detectron2 {env['detectron2']}"
        + (f"; CPU {env['cpu']} (torch kernels {env.get('torch_cpu_capability') or 'n/a'})" if env.get("cpu") else "")
        + ".",
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
        lines += ["", "## The demo's spread (`benchmarks/demo_spread.py`)", "", *spread_lines(spread)]
        differ = settings_differences(demo, spread)
        if differ:
            lines += ["", "These runs were made with other demo settings than the run above: " + differ + "."]
    if test_size:
        lines += ["", "## The same models on a larger test set (`benchmarks/demo_test_size.py`)", "",
                  *test_size_lines(test_size)]
    if mura_spread:
        lines += ["", "## The MURA demo across seeds (`benchmarks/demo_spread.py --dataset mura`)", "",
                  *spread_lines(mura_spread)]
    return "\n".join(lines) + "\n"


def settings_differences(demo: dict, spread: dict) -> str:
    """The demo settings (other than the seed and the additive ones, which change no number of the demo's own) in
    which the spread's runs differ from the demo's run, as "`name` theirs -> the demo's" (a setting their version did
    not record has the value it had then, :func:`~detx.workflows.demo.with_unrecorded`); empty when none."""
    from detx.workflows.demo import ADDITIVE_SETTINGS, with_unrecorded

    now = with_unrecorded(demo["settings"])
    for k in ("seed", *ADDITIVE_SETTINGS):
        now.pop(k, None)
    seen: dict[str, set] = {}
    for run in spread["runs"]:
        theirs = with_unrecorded(run.get("settings") or {}, now.get("dataset", "vindr-cxr"))
        for k, v in now.items():
            if theirs.get(k, "not recorded") != v:
                seen.setdefault(k, set()).add(json.dumps(theirs.get(k, "not recorded")))
    return "; ".join(f"`{k}` {' / '.join(sorted(seen[k]))} -> {json.dumps(now[k])}" for k in now if k in seen)


def test_size_lines(t: dict) -> list[str]:
    """One demo's models scored on a larger test set, whole and in disjoint subsets of each size."""
    ci = t.get("mAP40_ci95")
    env = t.get("environment") or {}
    where = f" ({env['cpu']})" if env.get("cpu") else ""
    lines = [f"The models of a demo run with seed {t['demo_seed']}{where} on {t['images']} newly generated test images "
             f"(generator seed {t['test_seed']}): mAP40 {fmt(t['mAP40'])}"
             + (f" (bootstrap 95% interval {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
             + f", image-level AUC {fmt(t['auc'])}. On the demo's own test set the same models scored mAP40 "
             f"{fmt(t['demo_test_mAP40'])} and AUC {fmt(t['demo_test_auc'])}. The same predictions, scored on "
             "disjoint random subsets of the new images:", "",
             "| subset size | subsets | mAP40 min-max | mAP40 sd | mAP40 mean | AUC min-max | AUC sd |",
             "|---|---|---|---|---|---|---|"]
    for n, f in t["subsets"].items():
        m, a = f["mAP40"], f["auc"]
        lines.append(f"| {n} | {m['n']} | {m['min']:.3f}-{m['max']:.3f} | {m['sd']:.3f} | {m['mean']:.3f} | "
                     f"{a['min']:.3f}-{a['max']:.3f} | {a['sd']:.3f} |")
    return lines


def spread_lines(spread: dict) -> list[str]:
    """The spread's description and its table (one row per run, then the spread): docs/results.md's section and
    benchmarks/RESULTS.md's marked block both come from here."""
    lines = [f"{spread['description']}", "",
             "| run | " + " | ".join(f"`{k}`" for k in spread["keys"]) + " | minutes |",
             "|---|" + "---|" * (len(spread["keys"]) + 1)]
    for run in spread["runs"]:
        lines.append(f"| {run['name']} | " + " | ".join(fmt(run["numbers"].get(k)) for k in spread["keys"])
                     + f" | {run['seconds'] / 60:.1f} |")
    lines.append("| **spread (max - min)** | " + " | ".join(fmt(spread["spread"].get(k)) for k in spread["keys"])
                 + " | |")
    return lines


def spread_block(spread: dict) -> str:
    """What benchmarks/RESULTS.md holds between :data:`SPREAD_BEGIN` and :data:`SPREAD_END`."""
    return "\n" + "\n".join(spread_lines(spread)) + "\n\n"


def replace_marked(text: str, block: str, begin: str = SPREAD_BEGIN, end: str = SPREAD_END) -> str:
    """``text`` with what lies between its ``begin`` and ``end`` lines replaced by ``block``; the rest as it was.

    Raises:
        ValueError: the marker lines are not there once each, ``begin`` first.
    """
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"need one {begin!r} line and, after it, one {end!r} line (found {len(starts)} and "
                         f"{len(ends)})")
    return "".join(lines[:starts[0] + 1]) + block + "".join(lines[ends[0]:])


def load() -> tuple[dict, dict | None, dict | None, dict | None]:
    """docs/results/'s demo.json and, where they exist, demo_spread.json, demo_test_size.json and
    demo_mura_spread.json."""
    demo = json.loads((RESULTS / "demo.json").read_text())
    optional = [RESULTS / "demo_spread.json", RESULTS / "demo_test_size.json", RESULTS / "demo_mura_spread.json"]
    spread, test_size, mura_spread = (json.loads(f.read_text()) if f.exists() else None for f in optional)
    return demo, spread, test_size, mura_spread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default=None, help="a demo run's results.json to copy to docs/results/demo.json")
    p.add_argument("--spread", default=None, help="benchmarks/demo_spread.py's JSON to copy to docs/results/")
    p.add_argument("--test-size", default=None,
                   help="benchmarks/demo_test_size.py's JSON to copy to docs/results/demo_test_size.json")
    p.add_argument("--mura-spread", default=None,
                   help="benchmarks/demo_spread.py --dataset mura's JSON to copy to docs/results/demo_mura_spread.json")
    p.add_argument("--check", action="store_true", help="exit 1 when docs/results.md is out of date; write nothing")
    args = p.parse_args(argv)
    if not args.check:
        RESULTS.mkdir(parents=True, exist_ok=True)
        if args.demo:
            shutil.copyfile(args.demo, RESULTS / "demo.json")
        if args.spread:
            shutil.copyfile(args.spread, RESULTS / "demo_spread.json")
        if args.test_size:
            shutil.copyfile(args.test_size, RESULTS / "demo_test_size.json")
        if args.mura_spread:
            shutil.copyfile(args.mura_spread, RESULTS / "demo_mura_spread.json")
    demo, spread, test_size, mura_spread = load()
    outputs = {DOC: render(demo, spread, test_size, mura_spread)}
    if spread:
        try:
            outputs[BENCH_RESULTS] = replace_marked(BENCH_RESULTS.read_text(), spread_block(spread))
        except ValueError as e:
            print(f"{BENCH_RESULTS}: {e}", file=sys.stderr)
            return 1
    if args.check:
        stale = [path for path, text in outputs.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path} is out of date: run python tools/results_doc.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        atomic_write_text(path, text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
