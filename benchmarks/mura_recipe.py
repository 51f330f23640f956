#!/usr/bin/env python
"""Why the MURA demo's classifier learns or stays at chance: its pooling, pixel scaling, rate and augmentation, one
at a time.

The MURA demo (``make demo DATASET=mura``) trains the tiny ResNet from scratch (there is no detector to start from).
This script generates and prepares one MURA demo set (``--seed``, the demo's own commands and sizes) and trains the
demo's classifier command on it once per variant, each changing one thing from the demo:

- ``demo``: average pooling, ImageNet-like pixel scaling, no random brightness/contrast (configs/quick_schedules/
  mura_cls_tiny.yaml with the MURA demo's defaults);
- ``lse pooling``: log-sum-exp pooling of the class activation map (the chest demo's default);
- ``pixel std 1``: detectron2's default ``MODEL.PIXEL_STD`` of 1 (inputs of about +-120 instead of +-2);
- ``rate 0.02, step at 250``: the chest tiny config's schedule instead of a constant 0.005;
- ``brightness/contrast``: ``DETX.AUG.BRIGHTNESS_CONTRAST_PROB 0.5`` (the global default).

It prints the held-out fold's AUC of P(abnormal) at every evaluation and the CPU seconds of each training
(docs/classifiers.md, "Goals on the demos"):

    python benchmarks/mura_recipe.py --seed 3 --out output/mura_recipe --json output/mura_recipe.json

The prepared set and finished trainings are reused when their files exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from logged_run import run_logged, slug, trained_once, variant_cmd  # noqa: E402

from detx.viz.curves import read_metrics, series  # noqa: E402
from detx.workflows.demo import DemoSettings, mura_steps  # noqa: E402

#: variant -> the overrides appended to the demo's training command (later options win)
VARIANTS: dict[str, list[str]] = {
    "demo": [],
    "lse pooling": ["MODEL.CLASSIFIER.POOL", "lse"],
    "pixel std 1": ["MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
    "rate 0.02, step at 250": ["SOLVER.BASE_LR", "0.02", "SOLVER.STEPS", "(250,)"],
    "brightness/contrast": ["DETX.AUG.BRIGHTNESS_CONTRAST_PROB", "0.5"],
}


def training_cmd(s: DemoSettings, out: Path, overrides: list[str]) -> list[str]:
    """The MURA demo's classifier training command, writing to ``out`` (no resume), with ``overrides`` appended."""
    return variant_cmd(mura_steps(s)[2].cmd, out, overrides)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/mura_recipe", help="work folder (default output/mura_recipe)")
    p.add_argument("--seed", type=int, default=3, help="the demo seed: data and initialisation (default 3)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help=f"which to train (default all: {', '.join(VARIANTS)})")
    p.add_argument("--json", default=None, help="write the curves here")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    s = DemoSettings.for_dataset("mura", out=out, seed=args.seed)
    log = out / "log.txt"
    generate, prepare = mura_steps(s)[:2]
    for step in (generate, prepare):
        if not step.done():
            run_logged(step.cmd, log)
    rows = {}
    for name in args.variants:
        run = out / slug(name)
        cpu = trained_once(training_cmd(s, run, VARIANTS[name]), run, log)
        iters, aucs = series(read_metrics(run / "metrics.json"), "cls/auc")
        rows[name] = {"iterations": iters, "auc": aucs, "cpu_s": cpu}
    print(f"MURA demo set, seed {args.seed}: held-out fold 0 AUC of P(abnormal) at each evaluation "
          f"({s.cls_max_iter} iterations, {s.n_train} training images)")
    for name, r in rows.items():
        curve = ", ".join(f"{a:.3f}@{i}" for i, a in zip(r["iterations"], r["auc"]))
        cpu = "not recorded" if r["cpu_s"] is None else f"{r['cpu_s']:.0f} s"
        print(f"  {name:<26} {curve}   CPU {cpu}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "settings": s.recorded(), "variants": VARIANTS,
                                               "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
