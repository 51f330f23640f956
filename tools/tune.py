#!/usr/bin/env python
"""Search learning rate, augmentation strength and schedule for any detx config with Optuna (TPE): every trial is a
normal tools/train_net.py run in OUT/trial_<n>, scored by the best DETX.BEST_METRIC of its metrics.json. The study is
kept in OUT/optuna.db (SQLite): run the same command again to resume or to add trials (--trials is the total).

    python tools/tune.py --config-file configs/classification/mura_densenet169.yaml --out output/tune_mura \\
        --trials 30 DETX.DATA_ROOT data/prepared/mura_512 DETX.FOLD 0 SOLVER.MAX_ITER 3000
    python tools/tune.py --config-file configs/quick_schedules/vindr_cxr_tiny.yaml --out output/tune_tiny \\
        --trials 2 --space lr aug DETX.DATA_ROOT output/demo/prepared MODEL.DEVICE cpu SOLVER.MAX_ITER 50

Writes OUT/trials.csv (every trial: parameters, value, state) and OUT/best.json (the best trial, its OUTPUT_DIR and
the overrides that reproduce it). A trial whose training fails is recorded as failed (its stderr in
OUT/trial_<n>/tune_stderr.txt) and the search goes on. Exit status: 0 done, 2 bad arguments or no trial completed.
See docs/tune.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detx.cli import add_version, exits, parse_with_overrides, setup_logging
from detx.workflows.tune import SPACES, TuneOptions, run_tune


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="CFG", help="any detx config (detector or classifier)")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder: optuna.db, trial_<n>/, trials.csv")
    p.add_argument("--trials", type=int, default=20, help="completed trials wanted in total (default 20)")
    p.add_argument("--metric", default=None, help="metrics.json key to optimize (default the config's "
                   "DETX.BEST_METRIC, e.g. vinbigdata/mAP40 or cls/auc)")
    p.add_argument("--direction", choices=["maximize", "minimize"], default=None,
                   help="default: minimize a *loss* metric, else maximize")
    p.add_argument("--space", nargs="+", choices=SPACES, default=list(SPACES),
                   help="what to search: lr, aug (strength), schedule (step/cosine, warm-up) (default all)")
    p.add_argument("--lr-range", nargs=2, type=float, default=[1e-4, 5e-2], metavar=("LOW", "HIGH"),
                   help="log-uniform SOLVER.BASE_LR range (default 1e-4 5e-2)")
    p.add_argument("--steps-at", type=float, default=0.8, help="the step schedule's LR drop, as a fraction of "
                   "SOLVER.MAX_ITER (default 0.8)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (default sqlite:///OUT/optuna.db)")
    p.add_argument("--study-name", default="detx", help="study name in the storage (default detx)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop starting trials after S seconds")
    add_version(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="train_net overrides for every trial (DETX.DATA_ROOT, DETX.FOLD, SOLVER.MAX_ITER, ...)")
    return p


@exits
def main(args: argparse.Namespace) -> int:
    res = run_tune(TuneOptions(
        config_file=args.config_file, out=args.out, trials=args.trials, opts=args.opts, metric=args.metric,
        direction=args.direction, lr_range=tuple(args.lr_range), space=tuple(args.space), steps_at=args.steps_at,
        seed=args.seed, storage=args.storage, study_name=args.study_name, timeout_s=args.timeout,
        train_script=str(Path(__file__).resolve().parent / "train_net.py")))
    print(f"ran {res['ran']} trial(s); {res['trials_complete']} complete, {res['trials_failed']} failed")
    print(f"best: trial {res['trial']} {res['metric']} = {res['value']:.4f} ({res['output_dir']})")
    print("  " + " ".join(res["overrides"] or []))
    print(f"written: {Path(args.out) / 'trials.csv'}, {Path(args.out) / 'best.json'}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(parse_with_overrides(get_parser())))
