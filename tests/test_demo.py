"""The demo pipeline (``make demo``) on a very small synthetic set: every step, every report file, and reuse."""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata

import pandas as pd
import pytest
from conftest import TRAINED_TINY_OPTS, load_script

from detx.workflows.demo import DATASETS, DemoSettings, build_steps, paths, run_demo

# Small and quick: the tiny config at 128 px for a handful of iterations (the real demo trains for minutes).
TINY_OPTS = tuple(v for i, v in enumerate(TRAINED_TINY_OPTS)
                  if not ({TRAINED_TINY_OPTS[i - (i % 2)]} & {"SOLVER.MAX_ITER", "TEST.EVAL_PERIOD", "DETX.FOLD",
                                                               "SOLVER.CHECKPOINT_PERIOD"}))


def tiny_settings(out, dataset="vindr-cxr") -> DemoSettings:
    return DemoSettings(out=out, dataset=dataset, n_train=12, n_test=3, min_size=96, max_size=160, size=128,
                        folds=2, max_iter=4, eval_period=4, cls_max_iter=4, workers=1, extra_train_opts=TINY_OPTS)


@pytest.mark.slow
def test_demo_writes_every_report_file_and_reuses_them(tmp_path, capsys):
    s = tiny_settings(tmp_path / "demo")
    result = run_demo(s, quiet=True)
    p = paths(s)
    report = p["report"].read_text()
    for f in (p["report"], s.out / "ap_per_class.png", p["train"] / "curves.png", p["val_plots"] / "pr_curves.png",
              p["val_plots"] / "froc.png", p["val_plots"] / "roc.png", p["classifier"], p["test_metrics"]):
        assert f.exists(), f
        if f.suffix == ".png":
            assert f.name in report or f.parent.name in report, f"{f.name} not linked from report.md"
    assert list(p["overlays"].glob("*.png")), "no prediction-vs-truth overlays"
    # the CNN classifier: trained, evaluated beside the detection-derived P(abnormal), heatmaps, and the test
    # submission's No-finding entries from it
    for f in (p["cls_train"] / "model_best.pth", p["cnn_val_plots"] / "roc.png", p["heatmaps"] / "summary.json",
              p["det_test_metrics"]):
        assert f.exists(), f
    assert "cnn_plots/roc.png" in report and "Pointing game" in report and "heatmaps/" in report
    # the readers tool's verdict on the synthetic readers, beside the committed one on the real train.csv
    assert (p["readers"] / "readers.json").exists() and "## The readers: synthetic beside real" in report
    assert "| the largest panel | " in report and "| R8+R9+R10 |" in report and "readers/agreement.png" in report
    assert {"cnn_auc", "pointing_game", "test_auc_detection"} <= set(result["numbers"])
    sub = pd.read_csv(p["submission"])
    assert len(sub) == s.n_test and sub.PredictionString.str.contains(" 0 0 1 1").all()
    val = json.loads(p["val_metrics"].read_text())
    assert result["numbers"]["mAP40"] == pytest.approx(val["mAP40"])
    out = capsys.readouterr().out
    assert f"mAP40 {val['mAP40']:.3f}" in out.splitlines()
    # results.json: the same numbers, bootstrap 95% intervals of the headline ones, the environment
    results = json.loads(p["results"].read_text())
    assert results["numbers"] == result["numbers"] and results["environment"]["torch"] == metadata.version("torch")
    for key in ("mAP40", "auc", "test_mAP40", "test_auc", "test_auc_detection"):
        lo, hi = results["ci95"][key]
        assert 0.0 <= lo <= hi <= 1.0, key
    assert f"mAP40_ci95 {results['ci95']['mAP40'][0]:.3f} {results['ci95']['mAP40'][1]:.3f}" in out.splitlines()

    # A second run reuses every output and prints the same numbers; results.json keeps what making them took.
    assert results["seconds"] > 0 and results["seconds"] == pytest.approx(sum(results["step_seconds"].values()))
    again = run_demo(s, quiet=True)
    assert set(again["timings"].values()) == {0.0}
    assert again["numbers"] == result["numbers"]
    assert json.loads(p["results"].read_text())["step_seconds"] == results["step_seconds"]

    # --lung-crops adds to the same folder: every step above is reused, the CNN is trained again on lung crops of the
    # same images and scored on the same held-out ones, beside the whole-image CNN
    crops = run_demo(dataclasses.replace(s, lung_crops=True), quiet=True)
    lung_steps = [k for k, v in crops["timings"].items() if v > 0]
    assert lung_steps and all(k.startswith("lung crops:") for k in lung_steps)
    assert {k: v for k, v in crops["numbers"].items() if "lung" not in k} == result["numbers"]
    lung_metrics = json.loads(p["lung_cnn_val_metrics"].read_text())
    assert crops["numbers"]["cnn_auc_lung_crops"] == lung_metrics["image_level"]["auc"]
    facts = json.loads(p["results"].read_text())["lung_crops"]
    assert facts["same_held_out_images"] and facts["held_out_images"]["crops"] == lung_metrics["num_images"]
    assert 0.0 < facts["area_kept"]["min"] <= facts["area_kept"]["mean"] < 1.0
    # the demo's own time stays what it was; the comparison's is kept beside it
    after = json.loads(p["results"].read_text())
    assert after["seconds"] == results["seconds"]
    assert facts["seconds"] == pytest.approx(sum(v for k, v in after["step_seconds"].items() if k in lung_steps))
    meta = pd.read_csv(p["lung_prepared"] / "meta.csv")
    assert (meta.crop_x1 - meta.crop_x0 < meta.orig_width).all()  # cropped, not the whole image
    report = p["report"].read_text()
    assert "## The CNN on lung crops beside the CNN on whole images" in report
    assert "lung_crops/val/cnn_plots/roc.png" in report
    # the same images: the crops' generator run wrote the demo's own DICOMs again (and masks beside them)
    d = DATASETS[s.dataset]
    assert (p["lung_raw"] / d["train_csv"]).read_bytes() == (p["raw"] / d["train_csv"]).read_bytes()
    dicom = next((p["raw"] / d["train_dir"]).iterdir())
    assert (p["lung_raw"] / d["train_dir"] / dicom.name).read_bytes() == dicom.read_bytes()


def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    s = tiny_settings(tmp_path / "demo")
    train = paths(s)["train"]
    train.mkdir(parents=True)
    (train / "last_checkpoint").write_text("model_0003.pth")
    cmd = next(st for st in build_steps(s) if st.name.startswith("train")).cmd
    assert "--resume" in cmd
    (train / "model_final.pth").write_bytes(b"")
    (train / "model_best.pth").write_bytes(b"")
    step = next(st for st in build_steps(s) if st.name.startswith("train"))
    assert "--resume" not in step.cmd and step.done()


def test_demo_settings_refuse_impossible_values(tmp_path):
    with pytest.raises(ValueError, match="unknown demo dataset"):
        DemoSettings(out=tmp_path, dataset="mnist")
    with pytest.raises(ValueError, match="n_train"):
        DemoSettings(out=tmp_path, n_train=3, folds=4)
    with pytest.raises(ValueError, match="cls_pool"):
        DemoSettings(out=tmp_path, cls_pool="mean")
    with pytest.raises(ValueError, match="cls_feature"):
        DemoSettings(out=tmp_path, cls_feature="res3")
    for dataset in ("spinexr", "mura"):
        with pytest.raises(ValueError, match="lung_crops needs the chest demo"):
            DemoSettings.for_dataset(dataset, out=tmp_path, lung_crops=True)


def test_demo_folder_from_before_a_setting_was_recorded_is_reused(tmp_path):
    """A demo folder whose settings file predates cls_feature is the same demo when it pooled what the default pools
    (nothing to --fresh), and another one when the run asks for another stage."""
    from detx.workflows.demo import SETTINGS_FILE, check_settings

    for dataset in ("vindr-cxr", "mura"):
        s = DemoSettings.for_dataset(dataset, out=tmp_path / dataset)
        s.out.mkdir()
        old = {k: v for k, v in s.recorded().items() if k != "cls_feature"}
        (s.out / SETTINGS_FILE).write_text(json.dumps(old))
        check_settings(s)
        assert json.loads((s.out / SETTINGS_FILE).read_text())["cls_feature"] == s.cls_feature
        (s.out / SETTINGS_FILE).write_text(json.dumps(old))
        other = "res4" if s.cls_feature == "res5" else "res5"
        with pytest.raises(ValueError, match=f"cls_feature '{s.cls_feature}' -> '{other}'"):
            check_settings(DemoSettings.for_dataset(dataset, out=s.out, cls_feature=other))


@pytest.mark.parametrize("dataset", ["vindr-cxr", "mura"])
def test_demo_classifier_pools_as_set(tmp_path, dataset):
    for pool in ("lse", "avg"):
        steps = build_steps(DemoSettings(out=tmp_path / pool, dataset=dataset, cls_pool=pool))
        cmd = next(st for st in steps if "classifier" in st.name and "train_net.py" in " ".join(st.cmd)).cmd
        assert cmd[cmd.index("MODEL.CLASSIFIER.POOL") + 1] == pool


@pytest.mark.parametrize("dataset, default", [("vindr-cxr", "res5"), ("spinexr", "res5"), ("mura", "res4")])
def test_demo_classifier_pools_the_stage_set(tmp_path, dataset, default):
    """The chest and spine demos' CNN pools res5, MURA's res4 as its config does; --cls-feature overrides, and the
    backbone is built only up to the pooled stage."""
    for feature in (None, "res4", "res5"):
        s = DemoSettings.for_dataset(dataset, out=tmp_path / str(feature), cls_feature=feature)
        cmd = next(st for st in build_steps(s) if "train_net.py" in " ".join(st.cmd)
                   and "cls_train" in " ".join(st.cmd)).cmd
        want = feature or default
        assert cmd[cmd.index("MODEL.CLASSIFIER.IN_FEATURE") + 1] == want
        assert cmd[cmd.index("MODEL.RESNETS.OUT_FEATURES") + 1] == f"['{want}']"


@pytest.mark.parametrize("dataset", ["vindr-cxr", "spinexr"])
def test_demo_steps_point_at_real_scripts_and_configs(tmp_path, dataset):
    from detx.workflows.demo import REPO

    steps = build_steps(tiny_settings(tmp_path / "demo", dataset))
    files = [a for st in steps for a in st.cmd if a.endswith((".py", ".yaml")) and not a.startswith(str(tmp_path))]
    assert files and all((REPO / f).exists() for f in files if not f.startswith("/")), files
    assert any(f.endswith(f"{dataset.replace('-', '_')}_tiny.yaml") for f in files)


@pytest.mark.slow
def test_mura_demo_reports_study_level_auc_and_kappa(tmp_path, capsys):
    s = DemoSettings(out=tmp_path / "mura", dataset="mura", n_train=24, n_test=12, min_size=64, max_size=96,
                     size=64, folds=2, cls_max_iter=4, eval_period=4, workers=1)
    result = run_demo(s, quiet=True)
    p = paths(s)
    m = json.loads(p["valid_metrics"].read_text())
    assert result["numbers"]["study_auc"] == m["study_level"]["auc"]
    assert result["numbers"]["study_kappa"] == m["study_level"]["kappa"]
    report = p["report"].read_text()
    assert "Per body part" in report and "study-level Cohen's kappa" in report
    out = capsys.readouterr().out
    assert any(line.startswith("study_kappa ") for line in out.splitlines())


def test_dataset_defaults_and_overrides(tmp_path):
    """make demo DATASET=mura gets its own sizes and schedule; an option given on the command line wins, an unset one
    (None) keeps the dataset's default; the chest demo keeps the class defaults."""
    from detx.workflows.demo import DATASET_DEFAULTS

    mura = DemoSettings.for_dataset("mura", out=tmp_path, n_train=None, cls_max_iter=None)
    assert (mura.n_train, mura.n_test, mura.cls_max_iter, mura.eval_period) == (1200, 300, 1000, 250)
    assert (mura.cls_pool, DemoSettings.for_dataset("mura", out=tmp_path, cls_pool="lse").cls_pool) == ("avg", "lse")
    assert DATASET_DEFAULTS["mura"]["n_train"] == mura.n_train
    assert DemoSettings.for_dataset("mura", out=tmp_path, n_train=48).n_train == 48
    chest = DemoSettings.for_dataset("vindr-cxr", out=tmp_path)
    assert (chest.n_train, chest.cls_max_iter) == (DemoSettings.n_train, DemoSettings.cls_max_iter)
    mura_cmd = next(st for st in build_steps(mura) if "train_net.py" in " ".join(st.cmd)).cmd
    assert mura_cmd[mura_cmd.index("SOLVER.MAX_ITER") + 1] == "1000"


def test_mura_recipe_study_trains_the_demo_command(tmp_path):
    """benchmarks/mura_recipe.py changes only the output folder and the variant's options of the MURA demo's own
    training command (later detectron2 options win)."""
    bench = load_script("benchmarks/mura_recipe.py")
    s = DemoSettings.for_dataset("mura", out=tmp_path / "demo", seed=1)
    demo_cmd = [str(c) for c in next(st for st in build_steps(s) if "train_net.py" in " ".join(map(str, st.cmd))).cmd]
    cmd = bench.training_cmd(s, tmp_path / "lse", ["MODEL.CLASSIFIER.POOL", "lse", "SOLVER.LR_SCHEDULER_NAME", "X"])
    assert cmd[cmd.index("OUTPUT_DIR") + 1] == str(tmp_path / "lse")
    assert cmd[:cmd.index("OUTPUT_DIR")] == demo_cmd[:demo_cmd.index("OUTPUT_DIR")]
    assert cmd[-4:] == ["MODEL.CLASSIFIER.POOL", "lse", "SOLVER.LR_SCHEDULER_NAME", "X"]
    assert bench.VARIANTS["demo"] == [] and all(v and len(v) % 2 == 0 for k, v in bench.VARIANTS.items() if k != "demo")
    assert demo_cmd[demo_cmd.index("MODEL.CLASSIFIER.POOL") + 1] == "avg" and demo_cmd[demo_cmd.index("SEED") + 1] == "1"


def test_chest_cls_recipe_study_trains_and_scores_the_demo_commands(tmp_path):
    """benchmarks/chest_cls_recipe.py trains the chest demo's own classifier command (output folder and the variant's
    options changed, never resumed) and scores each variant with the demo's TTA, its larger test set generated with
    another seed than the demo's."""
    bench = load_script("benchmarks/chest_cls_recipe.py")
    s = DemoSettings.for_dataset("vindr-cxr", out=tmp_path / "demo", seed=2, **bench.BASE)
    p = paths(s)
    (p["cls_train"]).mkdir(parents=True)
    (p["cls_train"] / "last_checkpoint").write_text("model_0000099.pth")  # the demo would resume: the study must not
    demo_cmd = [str(c) for c in bench.classifier_step(s).cmd]
    assert "--resume" in demo_cmd and demo_cmd[demo_cmd.index("MODEL.WEIGHTS") + 1] == str(p["train"] / "model_best.pth")
    cmd = bench.training_cmd(s, tmp_path / "r", ["SOLVER.BASE_LR", "0.005"])
    assert "--resume" not in cmd and cmd[cmd.index("OUTPUT_DIR") + 1] == str(tmp_path / "r")
    assert cmd[-2:] == ["SOLVER.BASE_LR", "0.005"]
    expected = [c for c in demo_cmd if c != "--resume"]
    expected[expected.index("OUTPUT_DIR") + 1] = str(tmp_path / "r")
    assert cmd[:len(expected)] == expected
    assert bench.VARIANTS[bench.BEFORE] == []
    assert all(v and len(v) % 2 == 0 for k, v in bench.VARIANTS.items() if k != bench.BEFORE)
    assert len({bench.slug(k) for k in bench.VARIANTS}) == len(bench.VARIANTS)
    # the demo's default CNN is the measured variant: the base command with its options trains the same
    chosen = bench.training_cmd(s, tmp_path / "r", bench.VARIANTS["400 iterations, stem to res3 frozen"])
    default = [str(c) for c in bench.classifier_step(DemoSettings.for_dataset("vindr-cxr", out=tmp_path / "demo",
                                                                              seed=2)).cmd if c != "--resume"]
    default[default.index("OUTPUT_DIR") + 1] = str(tmp_path / "r")

    def options(c: list[str]) -> dict[str, str]:  # detectron2's KEY VALUE overrides, the later one winning
        i = c.index("DETX.DATA_ROOT")
        return dict(zip(c[i::2], c[i + 1::2]))

    assert options(chosen) == {**options(default), "SOLVER.CHECKPOINT_PERIOD": str(10 ** 9)}
    assert options(default)["SOLVER.MAX_ITER"] == "400" and options(default)["MODEL.BACKBONE.FREEZE_AT"] == "3"
    scoring = bench.scoring_cmds(s, tmp_path / "r", tmp_path / "large")
    for key in ("classify held-out", "classify test", "classify large test"):
        c = scoring[key]
        assert c[c.index("--tta") + 1:c.index("--tta") + 1 + len(s.tta)] == list(s.tta)
        assert c[c.index("--classifier-weights") + 1] == str(tmp_path / "r" / "model_best.pth")
    gen = bench.large_test_cmds(s, tmp_path / "large", 50, 7)["generate"]
    assert gen[gen.index("--seed") + 1] == "7" and gen[gen.index("--n-test") + 1] == "50"
    with pytest.raises(SystemExit, match="the demo's own seed"):
        bench.main(["--out", str(tmp_path / "demo"), "--seed", "2", "--large-seed", "2", "--variants", bench.BEFORE])


def test_a_benchmark_training_runs_once_and_keeps_its_cost(tmp_path):
    """benchmarks/logged_run.py's trained_once: runs the command when its run has no model_final.pth, records the CPU
    seconds beside it, and on a second call reuses the run (the command is not run again) with the recorded cost."""
    import sys

    lr = load_script("benchmarks/logged_run.py")
    run, log = tmp_path / "run", tmp_path / "log.txt"
    code = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True); "
            "(p / 'model_final.pth').write_text('x'); open(sys.argv[2], 'a').write('ran\\n')")
    cmd = [sys.executable, "-c", code, str(run), str(tmp_path / "count")]
    first = lr.trained_once(cmd, run, log)
    assert first is not None and first >= 0 and (run / "cpu_seconds.txt").read_text() == f"{first}\n"
    assert lr.trained_once(cmd, run, log) == first
    assert (tmp_path / "count").read_text() == "ran\n"
    # the same run folder asked for with another command: refused, not reused under the other command's name
    with pytest.raises(SystemExit, match="another command"):
        lr.trained_once([*cmd, "SOLVER.BASE_LR", "0.5"], run, log)
    (run / "cpu_seconds.txt").unlink()  # a run finished before its cost was kept: reused, cost unknown
    assert lr.trained_once(cmd, run, log) is None and (tmp_path / "count").read_text() == "ran\n"
