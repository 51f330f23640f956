"""tools/tune.py: the search space by hand, the metric reader, and a 2-trial CPU search on the tiny detector that
resumes from its SQLite storage."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY_CONFIG, load_script

from detx.core.errors import InputError
from detx.workflows.tune import TuneOptions, aug_overrides, best_metric, suggest

tune_tool = load_script("tools/tune.py")
TINY = ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "4",
        "TEST.EVAL_PERIOD", "4", "DETX.VAL_PERIOD", "4", "DETX.FOLD", "0", "DETX.CURVES", "False",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "128"]


def test_space_and_metric_reader(tmp_path):
    import optuna

    assert aug_overrides(0.5) == ["DETX.AUG.AFFINE_PROB", "0.5", "DETX.AUG.SHIFT_LIMIT", "0.0625",
                                  "DETX.AUG.SCALE_LIMIT", "0.1", "DETX.AUG.ROTATE_LIMIT", "10",
                                  "DETX.AUG.BRIGHTNESS_CONTRAST_PROB", "0.5", "DETX.AUG.BRIGHTNESS_LIMIT", "0.2",
                                  "DETX.AUG.CONTRAST_LIMIT", "0.2"]
    trial = optuna.trial.FixedTrial({"base_lr": 0.003, "aug_strength": 0.0, "schedule": "step",
                                     "warmup_fraction": 0.1})
    opts = suggest(trial, TuneOptions("cfg", "out"), max_iter=200)
    assert opts[:2] == ["SOLVER.BASE_LR", "0.003"]
    assert opts[opts.index("DETX.AUG.AFFINE_PROB") + 1] == "0"
    assert opts[-6:] == ["SOLVER.WARMUP_ITERS", "20", "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR",
                         "SOLVER.STEPS", "(160,)"]
    cos = suggest(optuna.trial.FixedTrial({"schedule": "cosine", "warmup_fraction": 0.0}),
                  TuneOptions("cfg", "out", space=("schedule",)), max_iter=50)
    assert cos == ["SOLVER.WARMUP_ITERS", "0", "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.STEPS", "()"]
    m = tmp_path / "metrics.json"
    m.write_text('{"iteration": 3, "vinbigdata/mAP40": 0.2, "val_total_loss": 3.0}\n'
                 '{"iteration": 5, "vinbigdata/mAP40": NaN}\n{"iteration": 8, "vinbigdata/mAP40": 0.35, '
                 '"val_total_loss": 2.5}\n')
    assert best_metric(m, "vinbigdata/mAP40") == 0.35
    assert best_metric(m, "val_total_loss", maximize=False) == 2.5
    with pytest.raises(InputError, match="never logs"):
        best_metric(m, "cls/auc")


def test_two_trials_then_resume(prepared_cxr_dir, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--config-file", TINY_CONFIG, "--out", str(out), "--trials", "2", "--lr-range", "0.001", "0.02",
            "DETX.DATA_ROOT", str(prepared_cxr_dir), *TINY]
    assert tune_tool.main(tune_tool.parse_with_overrides(tune_tool.get_parser(), args)) == 0
    assert "ran 2 trial(s); 2 complete" in capsys.readouterr().out
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"COMPLETE"}
    best = json.loads((out / "best.json").read_text())
    for row in trials.itertuples():
        trial_dir = out / f"trial_{row.number:03d}"
        # a normal train_net run: its resolved config holds the trial's learning rate, its metrics the value
        cfg = (trial_dir / "config.yaml").read_text()
        assert f"BASE_LR: {float(f'{row.params_base_lr:.6g}')}" in cfg
        assert row.value == pytest.approx(best_metric(trial_dir / "metrics.json", "vinbigdata/mAP40"))
    assert best["value"] == pytest.approx(trials["value"].max())
    assert best["metric"] == "vinbigdata/mAP40" and best["direction"] == "maximize"
    # resume: the same study, one more trial wanted -> one more run only
    args[args.index("--trials") + 1] = "3"
    assert tune_tool.main(tune_tool.parse_with_overrides(tune_tool.get_parser(), args)) == 0
    assert "ran 1 trial(s); 3 complete" in capsys.readouterr().out
    assert len(pd.read_csv(out / "trials.csv")) == 3
