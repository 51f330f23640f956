#!/usr/bin/env python
"""How much the demo's headline numbers move with the seed (and with the environment): its spread.

Runs the whole demo (``python -m detx.workflows.demo``: training + evaluation) once per seed and per Python
environment, each into its own folder, reads each run's ``results.json`` and prints per number the values and the
spread (max - min); the issue's bar is a spread within 0.05 of the held-out mAP40 and the classifier's AUC.
A second environment (``--python``) compares, e.g., the locked install against a copy with another OpenCV:

    python benchmarks/demo_spread.py --seeds 0 1 2 [--python /tmp/venv-lock/bin/python /tmp/venv-cv51/bin/python]
        [--out output/demo_spread] [--json spread.json] [--n-train N --max-iter N --cls-max-iter N --size N]

A finished run (its results.json exists with the same settings) is reused, so an interrupted spread resumes;
``--finished-only`` reports on the runs of the grid that have finished and names the others (the runs can be
started by hand, in any order, as ``python -m detx.workflows.demo --out OUT/env<E>_seed<S> --seed S --quiet``).
``--add FILE...`` adds runs made elsewhere (another machine: the same seed and lock train another model on
another CPU): a demo's ``results.json`` or an earlier ``--json`` file, whose runs are kept as they are.
``python tools/results_doc.py --spread spread.json`` puts the figures into docs/results.md and the table of
benchmarks/RESULTS.md ("The demo's spread", between its demo-spread markers).

``--dataset mura`` spreads the MURA demo instead (``make demo DATASET=mura``: its image- and study-level AUC and
the study-level kappa; default ``--out output/demo_spread_mura``); ``python tools/results_doc.py --mura-spread
spread.json`` puts it into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from detx.workflows.demo import DATASETS

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("mAP40", "cnn_auc", "auc", "test_mAP40", "test_auc_detection")
#: the numbers spread per demo dataset (the spine demo reports what the chest one does)
DATASET_KEYS = {"mura": ("image_auc", "study_auc", "study_kappa")}
BAR = 0.05


def env_name(python: str) -> str:
    """A short name of an environment: its OpenCV version, asked from that Python."""
    out = subprocess.run([python, "-c", "import cv2, numpy; print(cv2.__version__, numpy.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    return f"opencv {out[0]}, numpy {out[1]}"


def run_environment(results: dict) -> str | None:
    """The environment a demo's results.json records: OpenCV, numpy and the CPU (None when it records no OpenCV)."""
    env = results.get("environment") or {}
    cv = env.get("opencv-python-headless")
    if not cv:
        return None
    cv = ".".join(cv.split(".")[:3])  # 4.12.0.88 -> 4.12.0, as cv2.__version__ says it
    cpu = f", {env['cpu']} ({env.get('torch_cpu_capability') or 'n/a'})" if env.get("cpu") else ""
    return f"opencv {cv}, numpy {env.get('numpy')}{cpu}"


def dataset_of(settings: dict) -> str:
    """The demo dataset a run's settings record (runs recorded before the option: the chest demo)."""
    return settings.get("dataset") or "vindr-cxr"


def keys_of(dataset: str) -> tuple[str, ...]:
    """The numbers spread for a demo dataset."""
    return DATASET_KEYS.get(dataset, KEYS)


def as_run(r: dict, seed: int, name: str) -> dict:
    """One row of the spread from a demo's results.json."""
    return {"name": f"seed {seed}, {name}", "seed": seed, "environment": name,
            "numbers": {k: r["numbers"].get(k) for k in keys_of(dataset_of(r["settings"]))}, "ci95": r.get("ci95", {}),
            "seconds": r.get("seconds", 0.0), "settings": r["settings"]}


def added_runs(paths: list[str]) -> list[dict]:
    """The runs of ``--add``: a demo results.json is one run; an earlier spread JSON gives its runs unchanged."""
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "runs" in data:
            runs += data["runs"]
        elif "numbers" in data and "settings" in data:
            name = run_environment(data)
            if name is None:
                raise SystemExit(f"{path}: its environment records no OpenCV version")
            runs.append(as_run(data, int(data["settings"]["seed"]), name))
        else:
            raise SystemExit(f"{path}: neither a demo results.json nor a demo_spread JSON")
    return runs


def run_one(python: str, seed: int, out: Path, extra: list[str], keys: tuple[str, ...] = KEYS) -> dict:
    results = out / "results.json"
    t = time.monotonic()
    cmd = [python, "-m", "detx.workflows.demo", "--out", str(out), "--seed", str(seed), "--quiet", *extra]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed (exit {proc.returncode}) for seed {seed} with {python}:\n{proc.stderr[-3000:]}")
    r = json.loads(results.read_text())
    print(f"  seed {seed}: " + ", ".join(f"{k} {r['numbers'].get(k) or float('nan'):.3f}" for k in keys)
          + f"  ({time.monotonic() - t:.0f} s)", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="vindr-cxr", choices=sorted(DATASETS),
                   help="which demo (make demo DATASET=...)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--python", nargs="+", default=[sys.executable], help="the environments' Python executables")
    p.add_argument("--out", default=None,
                   help="one demo folder per run below this (default output/demo_spread, output/demo_spread_mura)")
    p.add_argument("--json", default=None, help="write the runs and the spread here")
    p.add_argument("--finished-only", action="store_true",
                   help="only the runs whose results.json exists; the others are named as not run")
    p.add_argument("--add", nargs="+", default=[], metavar="FILE",
                   help="runs made elsewhere: a demo results.json, or an earlier --json file (its runs as they are)")
    p.add_argument("--python-none", action="store_true",
                   help="run nothing here: only the --add runs (e.g. to merge another machine's run)")
    for opt in ("--n-train", "--max-iter", "--cls-max-iter", "--size", "--eval-period"):
        p.add_argument(opt, type=int, default=None, help="passed to the demo")
    args = p.parse_args()
    keys = keys_of(args.dataset)
    if args.out is None:
        args.out = "output/demo_spread" + ("" if args.dataset == "vindr-cxr" else f"_{args.dataset.replace('-', '')}")
    extra = ["--dataset", args.dataset] + [x for opt in ("n_train", "max_iter", "cls_max_iter", "size", "eval_period")
             if getattr(args, opt) is not None for x in (f"--{opt.replace('_', '-')}", str(getattr(args, opt)))]
    runs, missing = [], []
    for e, python in enumerate([] if args.python_none else args.python):
        name = env_name(python)
        for seed in args.seeds:
            if args.finished_only and not (Path(args.out) / f"env{e}_seed{seed}" / "results.json").exists():
                missing.append(f"seed {seed}, {name}")
                continue
            r = run_one(python, seed, Path(args.out) / f"env{e}_seed{seed}", extra, keys)
            runs.append(as_run(r, seed, run_environment(r) or name))
    runs += added_runs(args.add)
    other = sorted({dataset_of(r["settings"]) for r in runs} - {args.dataset})
    if other:
        raise SystemExit(f"runs of the {', '.join(other)} demo cannot join a --dataset {args.dataset} spread")
    if not runs:
        raise SystemExit("no runs: nothing finished and nothing added")
    differ = {k for r in runs for k in set(r["settings"]) | set(runs[0]["settings"])
              if k != "seed" and r["settings"].get(k) != runs[0]["settings"].get(k)}
    if differ:
        raise SystemExit(f"the runs were made with other demo settings ({', '.join(sorted(differ))}): their spread "
                         "would not be the seed's and the environment's")
    seeds = sorted({r["seed"] for r in runs})
    envs = list(dict.fromkeys(r["environment"] for r in runs))
    spread = {}
    for k in keys:
        vals = [r["numbers"][k] for r in runs if r["numbers"][k] is not None]
        spread[k] = max(vals) - min(vals) if vals else None
    print(f"\nspread (max - min) over {len(runs)} runs ({len(seeds)} seeds, {len(envs)} environments):")
    if missing:
        print(f"  not run: {'; '.join(missing)}")
    for k in keys:
        vals = [r["numbers"][k] for r in runs]
        ok = "" if spread[k] is None else ("  within 0.05" if spread[k] <= BAR else "  ABOVE 0.05")
        print(f"  {k:20s} " + " ".join("  n/a" if v is None else f"{v:.3f}" for v in vals)
              + f"   spread {'n/a' if spread[k] is None else f'{spread[k]:.3f}'}{ok}")
    if args.json:
        settings = runs[0]["settings"] if runs else {}
        description = (("The MURA demo (make demo DATASET=mura): " if args.dataset == "mura" else "")
                       + f"{len(runs)} runs of {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) in {len(envs)} "
                       f"environment(s) ({'; '.join(envs)}); demo settings: n_train {settings.get('n_train')}, size {settings.get('size')}, "
                       + (f"n_test {settings.get('n_test')}, cls_pool {settings.get('cls_pool')}, " if args.dataset == "mura"
                          else f"max_iter {settings.get('max_iter')}, ")
                       + f"cls_max_iter {settings.get('cls_max_iter')}. Spread = max - min over the runs; "
                       + ("the goal is a study-level AUC of at least 0.85 with every seed." if args.dataset == "mura"
                          else "the bar is 0.05.")
                       + (f" {len(runs)} of {len(runs) + len(missing)} runs of the grid finished; not run: "
                          f"{'; '.join(missing)}." if missing else ""))
        Path(args.json).write_text(json.dumps({"description": description, "dataset": args.dataset,
                                               "keys": list(keys), "runs": runs,
                                               "spread": spread}, indent=2))


if __name__ == "__main__":
    main()
