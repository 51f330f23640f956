"""Hyperparameter search with Optuna for any detx config: learning rate, augmentation strength and schedule.

Each trial is an ordinary ``tools/train_net.py`` run (a subprocess) in its own ``OUT/trial_<n>`` with the trial's
overrides after the user's, scored by the best value of the config's ``DETX.BEST_METRIC`` (or ``metric``) in its
``metrics.json`` (the value ``model_best.pth`` follows). The study lives in an SQLite file (``OUT/optuna.db``), so an
interrupted search resumes: a rerun runs only the trials still missing, and a trial that was running when the search
died is retried (Optuna's heartbeat). ``OUT/trials.csv`` lists every trial, ``OUT/best.json`` the best one with the
overrides that reproduce it.

The search space (:func:`suggest`):

- ``SOLVER.BASE_LR``: log-uniform in ``lr_range``;
- augmentation strength ``a`` in [0, 1], scaling detx's albumentations together: ``DETX.AUG.AFFINE_PROB = a``,
  ``SHIFT_LIMIT = 0.125 a``, ``SCALE_LIMIT = 0.2 a``, ``ROTATE_LIMIT = 20 a``, ``BRIGHTNESS_CONTRAST_PROB = a``,
  ``BRIGHTNESS_LIMIT = CONTRAST_LIMIT = 0.4 a`` (a = 0.5 is close to the defaults);
- schedule: ``WarmupMultiStepLR`` (a step at ``steps_at`` of the run, x0.1) or ``WarmupCosineLR``, and the warm-up
  length as a fraction of ``SOLVER.MAX_ITER``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detx.core.errors import InputError
from detx.core.io import atomic_write_text, write_json
from detx.engine.config import get_detx_cfg

logger = logging.getLogger(__name__)

__all__ = ["TuneOptions", "aug_overrides", "best_metric", "run_tune", "suggest"]

SPACES = ("lr", "aug", "schedule")


@dataclass
class TuneOptions:
    """What ``tools/tune.py`` takes (see its ``--help``)."""

    config_file: str
    out: str
    trials: int = 20
    opts: list[str] = field(default_factory=list)
    metric: str | None = None
    direction: str | None = None
    lr_range: tuple[float, float] = (1e-4, 5e-2)
    space: tuple[str, ...] = SPACES
    steps_at: float = 0.8
    seed: int = 0
    storage: str | None = None
    study_name: str = "detx"
    timeout_s: float | None = None
    train_script: str = ""
    python: str = sys.executable


def aug_overrides(a: float) -> list[str]:
    """The ``DETX.AUG`` overrides of augmentation strength ``a`` in [0, 1] (module docstring)."""
    if not 0.0 <= a <= 1.0:
        raise InputError(f"augmentation strength {a} outside [0, 1]")
    vals = {"AFFINE_PROB": a, "SHIFT_LIMIT": 0.125 * a, "SCALE_LIMIT": 0.2 * a, "ROTATE_LIMIT": 20.0 * a,
            "BRIGHTNESS_CONTRAST_PROB": a, "BRIGHTNESS_LIMIT": 0.4 * a, "CONTRAST_LIMIT": 0.4 * a}
    return [x for k, v in vals.items() for x in (f"DETX.AUG.{k}", f"{v:.6g}")]


def suggest(trial: Any, options: TuneOptions, max_iter: int) -> list[str]:
    """The train_net overrides of one Optuna trial."""
    opts: list[str] = []
    if "lr" in options.space:
        lo, hi = options.lr_range
        opts += ["SOLVER.BASE_LR", f"{trial.suggest_float('base_lr', lo, hi, log=True):.6g}"]
    if "aug" in options.space:
        opts += ["DETX.AUG.ENABLED", "True", *aug_overrides(trial.suggest_float("aug_strength", 0.0, 1.0))]
    if "schedule" in options.space:
        sched = trial.suggest_categorical("schedule", ["step", "cosine"])
        warm = trial.suggest_float("warmup_fraction", 0.0, 0.2)
        opts += ["SOLVER.WARMUP_ITERS", str(int(round(warm * max_iter)))]
        if sched == "cosine":
            opts += ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.STEPS", "()"]
        else:
            step = max(1, min(max_iter - 1, int(round(options.steps_at * max_iter))))
            opts += ["SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", f"({step},)"]
    return opts


def best_metric(metrics_json: str | os.PathLike, metric: str, maximize: bool = True) -> float:
    """The best finite value of ``metric`` in a train_net ``metrics.json`` (JSON lines).

    Raises:
        InputError: no such file, or the metric never logged (a wrong name, or no evaluation ran).
    """
    path = Path(metrics_json)
    if not path.is_file():
        raise InputError(f"{path} does not exist: the trial wrote no metrics")
    values, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        seen.update(row)
        v = row.get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            values.append(float(v))
    if not values:
        close = sorted(k for k in seen if metric.split("/")[0] in k)[:8]
        raise InputError(f"{path} never logs {metric!r} (evaluation off, or another name? e.g. {close})")
    return max(values) if maximize else min(values)


def _train(options: TuneOptions, out_dir: Path, trial_opts: list[str]) -> subprocess.CompletedProcess:
    cmd = [options.python, options.train_script, "--config-file", options.config_file, *options.opts, *trial_opts,
           "OUTPUT_DIR", str(out_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "tune_stdout.txt", "w") as so, open(out_dir / "tune_stderr.txt", "w") as se:
        return subprocess.run(cmd, stdout=so, stderr=se, text=True)


def run_tune(options: TuneOptions) -> dict[str, Any]:
    """Run (or resume) the search; returns ``best.json``'s content plus ``ran`` (trials run by this call).

    Raises:
        InputError: a bad option or config, or every trial failed.
    """
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    if not options.train_script or not Path(options.train_script).is_file():
        raise InputError(f"train script {options.train_script!r} not found")
    if options.trials < 1:
        raise InputError(f"--trials {options.trials} must be at least 1")
    bad = set(options.space) - set(SPACES)
    if bad or not options.space:
        raise InputError(f"--space {sorted(bad) or '(empty)'}: choose among {list(SPACES)}")
    lo, hi = options.lr_range
    if not 0 < lo < hi:
        raise InputError(f"--lr-range {lo} {hi}: need 0 < low < high")
    cfg = get_detx_cfg(options.config_file, options.opts)  # fails early, naming a wrong key or file
    metric = options.metric or str(cfg.DETX.BEST_METRIC)
    direction = options.direction or ("minimize" if "loss" in metric else "maximize")
    if direction not in ("maximize", "minimize"):
        raise InputError(f"--direction {direction!r}: maximize or minimize")
    max_iter = int(cfg.SOLVER.MAX_ITER)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    url = options.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna's words since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:  # Optuna >= 4.9 names the retry of a stale (interrupted) trial so
            from optuna.storages import RetryHeartbeatStaleTrialCallback

            retry = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
        except ImportError:
            from optuna.storages import RetryFailedTrialCallback

            retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}
        storage = RDBStorage(url, heartbeat_interval=30, grace_period=90, **retry)
    study = optuna.create_study(study_name=options.study_name, storage=storage, load_if_exists=True,
                                direction=direction, sampler=optuna.samplers.TPESampler(seed=options.seed))
    done = [t for t in study.trials if t.state.is_finished()]
    todo = max(0, options.trials - len([t for t in done if t.state == optuna.trial.TrialState.COMPLETE]))
    logger.info("study %s in %s: %d finished trial(s), %d to run (metric %s, %s)", options.study_name, url,
                len(done), todo, metric, direction)

    def objective(trial: optuna.Trial) -> float:
        trial_opts = suggest(trial, options, max_iter)
        out_dir = out / f"trial_{trial.number:03d}"
        trial.set_user_attr("output_dir", str(out_dir))
        trial.set_user_attr("overrides", trial_opts)
        proc = _train(options, out_dir, trial_opts)
        if proc.returncode != 0:
            tail = (out_dir / "tune_stderr.txt").read_text()[-1500:]
            trial.set_user_attr("error", tail)
            raise RuntimeError(f"trial {trial.number}: train_net.py exited {proc.returncode}; see {out_dir}/"
                               f"tune_stderr.txt:\n{tail}")
        value = best_metric(out_dir / "metrics.json", metric, direction == "maximize")
        logger.info("trial %d: %s = %.4f (%s)", trial.number, metric, value, " ".join(trial_opts))
        return value

    if todo:
        study.optimize(objective, n_trials=todo, timeout=options.timeout_s, catch=(RuntimeError, InputError),
                       gc_after_trial=True)
    frame = study.trials_dataframe()
    atomic_write_text(out / "trials.csv", frame.to_csv(index=False))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        errors = [t.user_attrs.get("error", "") for t in study.trials][-1:]
        raise InputError(f"no trial of study {options.study_name} completed; last error: {errors}")
    best = study.best_trial
    result = {"metric": metric, "direction": direction, "value": best.value, "trial": best.number,
              "params": best.params, "output_dir": best.user_attrs.get("output_dir"),
              "overrides": best.user_attrs.get("overrides"), "trials_complete": len(complete),
              "trials_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
              "storage": url, "study": options.study_name}
    write_json(out / "best.json", result, indent=2)
    return {**result, "ran": todo}
