"""Numbers are regenerated, not typed: docs/results.md is what the results files say, and the README quotes them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from detx.core.predictions import Predictions

ROOT = Path(__file__).resolve().parent.parent
QUOTE = re.compile(r"`(\w+) (\d+\.\d{3})`(?: \(95% CI (\d+\.\d{3})-(\d+\.\d{3})\))?")
DEMO = ROOT / "docs" / "results" / "demo.json"
SPREAD = ROOT / "docs" / "results" / "demo_spread.json"
BENCH_RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# Until a demo run on the locked environment is recorded (make demo; python tools/results_doc.py --demo
# output/demo/results.json), there is nothing to compare the README with.
recorded = pytest.mark.skipif(not DEMO.exists(), reason="no demo run recorded in docs/results/demo.json yet")


def _demo_results(seconds: float = 375.0) -> dict:
    numbers = {"mAP40": 0.6181, "auc": 0.9, "cnn_auc": 0.7, "test_mAP40": 0.6049, "test_auc": 0.615,
               "test_auc_detection": 0.98, "pointing_game": 0.0}
    return {"numbers": numbers, "ci95": {"mAP40": [0.51234, 0.70111], "test_mAP40": None}, "n_boot": 1000,
            "seconds": seconds, "settings": {"seed": 0},
            "environment": {"python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2.2.6",
                            "opencv-python-headless": "4.12.0.88", "albumentations": "2.0.8",
                            "detectron2": "0.6 (detectron2-pure)"}}


def test_render_hand_made_results():
    doc = load_script("tools/results_doc.py")
    spread = {"description": "3 seeds", "keys": ["mAP40", "cnn_auc"], "spread": {"mAP40": 0.04, "cnn_auc": None},
              "runs": [{"name": "seed 0", "numbers": {"mAP40": 0.6, "cnn_auc": None}, "seconds": 360.0},
                       {"name": "seed 1", "numbers": {"mAP40": 0.64, "cnn_auc": None}, "seconds": 390.0}]}
    text = doc.render(_demo_results(), spread)
    assert "| `mAP40` | held-out fold, challenge metric (mAP@0.4) | 0.618 | 0.512-0.701 |" in text
    assert "| `test_mAP40` | synthetic test set, challenge metric | 0.605 | n/a |" in text
    assert "opencv-python-headless 4.12.0.88" in text and "6.2 min" in text and "`pointing_game 0.000`" in text
    assert "| seed 1 | 0.640 | n/a | 6.5 |" in text and "| **spread (max - min)** | 0.040 | n/a | |" in text


def test_spread_runs_with_other_settings_are_named():
    """Runs of the spread made with other demo settings than the demo's run are named under the table: a setting
    their version did not record counts as the value it had then (cls_feature: res5)."""
    doc = load_script("tools/results_doc.py")
    demo = _demo_results()
    demo["settings"] = {"seed": 0, "cls_pool": "lse", "cls_feature": "res4"}
    runs = [{"name": f"seed {s}", "numbers": {"mAP40": 0.6}, "seconds": 60.0, "settings": {"seed": s, "cls_pool": p}}
            for s, p in ((1, "lse"), (2, "avg"))]
    spread = {"description": "2 seeds", "keys": ["mAP40"], "spread": {"mAP40": 0.0}, "runs": runs}
    assert doc.settings_differences(demo, spread) == '`cls_pool` "avg" -> "lse"; `cls_feature` "res5" -> "res4"'
    assert "other demo settings than the run above: `cls_pool`" in doc.render(demo, spread)
    for run in runs:
        run["settings"].update(cls_pool="lse", cls_feature="res4")
    assert doc.settings_differences(demo, spread) == ""
    assert "other demo settings" not in doc.render(demo, spread)
    # an additive setting (the lung-crop comparison) changes none of the demo's own numbers: not a difference
    demo["settings"]["lung_crops"] = True
    assert doc.settings_differences(demo, spread) == ""


def test_render_test_size_and_cpu():
    """The larger-test-set section and the CPU in the environment line, from hand-made files."""
    doc = load_script("tools/results_doc.py")
    demo = _demo_results()
    demo["environment"].update(cpu="AMD EPYC", torch_cpu_capability="AVX512")
    bench = load_script("benchmarks/demo_test_size.py")
    figs = bench.subset_figures([0.5, 0.7, 0.6])
    assert (figs["min"], figs["max"], figs["n"]) == (0.5, 0.7, 3)
    assert figs["mean"] == pytest.approx(0.6) and figs["sd"] == pytest.approx(0.1)
    test_size = {"demo_seed": 0, "test_seed": 100, "images": 400, "mAP40": 0.5321, "mAP40_ci95": [0.5126, 0.5795],
                 "auc": 0.8266, "demo_test_mAP40": 0.6339, "demo_test_auc": 0.8225, "environment": demo["environment"],
                 "subsets": {"40": {"mAP40": figs, "auc": bench.subset_figures([0.8, 0.9])}}}
    text = doc.render(demo, None, test_size)
    assert "; CPU AMD EPYC (torch kernels AVX512)." in text
    assert "(AMD EPYC) on 400 newly generated test images (generator seed 100): mAP40 0.532 (bootstrap 95% " \
           "interval 0.513-0.580), image-level AUC 0.827" in text
    assert "| 40 | 3 | 0.500-0.700 | 0.100 | 0.600 | 0.800-0.900 | 0.071 |" in text


@recorded
def test_results_md_is_generated_from_the_results_files():
    doc = load_script("tools/results_doc.py")
    assert (ROOT / "docs" / "results.md").read_text() == doc.render(*doc.load())


@pytest.mark.skipif(not SPREAD.exists(), reason="no spread recorded in docs/results/demo_spread.json yet")
def test_benchmark_results_spread_is_generated_from_the_spread_file():
    doc = load_script("tools/results_doc.py")
    spread = json.loads(SPREAD.read_text())
    text = BENCH_RESULTS.read_text()
    begin = text.index(doc.SPREAD_BEGIN + "\n") + len(doc.SPREAD_BEGIN) + 1
    assert text[begin:text.index(doc.SPREAD_END)] == doc.spread_block(spread)
    assert "\n".join(doc.spread_lines(spread)) in (ROOT / "docs" / "results.md").read_text()  # the same table


@recorded
def test_results_doc_replaces_only_the_marked_block(tmp_path, monkeypatch):
    doc = load_script("tools/results_doc.py")
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    spread = {"description": "2 seeds", "keys": ["mAP40"], "spread": {"mAP40": 0.1},
              "runs": [{"name": "seed 0", "numbers": {"mAP40": 0.5}, "seconds": 60.0},
                       {"name": "seed 1", "numbers": {"mAP40": 0.6}, "seconds": 66.0}]}
    (results / "demo_spread.json").write_text(json.dumps(spread))
    before = f"# hand-kept\n\n| a table | 0.123 |\n\n{doc.SPREAD_BEGIN}\n"
    after = f"{doc.SPREAD_END}\n\nnotes, typed by hand: 0.456\n"
    bench = tmp_path / "RESULTS.md"
    bench.write_text(before + "| stale | 0.999 |\n" + after)
    monkeypatch.setattr(doc, "RESULTS", results)
    monkeypatch.setattr(doc, "DOC", tmp_path / "results.md")
    monkeypatch.setattr(doc, "BENCH_RESULTS", bench)

    assert doc.main(["--check"]) == 1
    assert doc.main([]) == 0
    assert bench.read_text() == before + doc.spread_block(spread) + after
    assert "| seed 1 | 0.600 | 1.1 |" in bench.read_text() and "stale" not in bench.read_text()
    assert doc.main(["--check"]) == 0
    assert doc.main([]) == 0 and bench.read_text() == before + doc.spread_block(spread) + after  # idempotent

    bench.write_text("no markers\n")
    assert doc.main([]) == 1 and bench.read_text() == "no markers\n"
    with pytest.raises(ValueError):
        doc.replace_marked(f"{doc.SPREAD_END}\n{doc.SPREAD_BEGIN}\n", "x\n")


@recorded
def test_readme_quotes_the_demo_results_file():
    demo = json.loads(DEMO.read_text())
    readme = (ROOT / "README.md").read_text()
    quoted = {}
    for m in QUOTE.finditer(readme):
        if m.group(1) in demo["numbers"]:
            quoted[m.group(1)] = m
    assert {"mAP40", "test_mAP40", "cnn_auc", "test_auc_detection"} <= set(quoted), "the README's demo paragraph"
    for key, m in quoted.items():
        assert m.group(2) == f"{demo['numbers'][key]:.3f}", f"README quotes {key} {m.group(2)}"
        if m.group(3):
            lo, hi = demo["ci95"][key]
            assert (m.group(3), m.group(4)) == (f"{lo:.3f}", f"{hi:.3f}"), f"README's interval of {key}"
    took = re.search(r"A demo run .*? took (\d+\.\d) min \((\d+) s\)", readme)
    assert took and took.groups() == (f"{demo['seconds'] / 60:.1f}", f"{demo['seconds']:.0f}"), "the demo's time"
    lungs = re.search(r"`LUNG_CROPS=1` adds (\d+\.\d) min \((\d+) s\)", readme)
    secs = demo["lung_crops"]["seconds"]
    assert lungs and lungs.groups() == (f"{secs / 60:.1f}", f"{secs:.0f}"), "the lung-crop comparison's time"


def test_bootstrap_map_interval():
    from detx.evaluation.vinbigdata import bootstrap_map_ci, vinbigdata_map

    rng = np.random.default_rng(0)
    gt, perfect, noisy = {}, {}, {}
    for k in range(30):
        boxes = rng.uniform(0, 50, (2, 2))
        boxes = np.hstack([boxes, boxes + 20])
        classes = np.array([k % 3, (k + 1) % 3])
        gt[f"im{k}"] = (boxes, classes)
        perfect[f"im{k}"] = Predictions(boxes, np.array([0.9, 0.8]), classes)
        noisy[f"im{k}"] = Predictions(boxes + rng.normal(0, 6, boxes.shape), rng.uniform(0, 1, 2), classes)
    assert bootstrap_map_ci(gt, perfect, num_classes=3, n_boot=50) == (1.0, 1.0)
    lo, hi = bootstrap_map_ci(gt, noisy, num_classes=3, n_boot=200)
    point = vinbigdata_map(gt, noisy, num_classes=3)["mAP"]
    assert 0.0 < lo < point < hi < 1.0
    assert bootstrap_map_ci(gt, noisy, num_classes=3, n_boot=200) == (lo, hi)  # seeded
    assert bootstrap_map_ci({}, {}, n_boot=5) is None




def test_demo_spread_adds_runs_made_elsewhere(tmp_path, monkeypatch, capsys):
    """--add merges another machine's results.json (named by its OpenCV, numpy and CPU) with an earlier spread's runs
    and refuses runs made with other demo settings."""
    spread_mod = load_script("benchmarks/demo_spread.py")
    settings = {"seed": 0, "n_train": 160, "size": 256, "max_iter": 300, "cls_max_iter": 240}
    earlier = {"description": "x", "keys": list(spread_mod.KEYS), "spread": {}, "runs": [
        {"name": "seed 0, opencv 4.12.0, numpy 2.2.6", "seed": 0, "environment": "opencv 4.12.0, numpy 2.2.6",
         "numbers": dict.fromkeys(spread_mod.KEYS, 0.6), "ci95": {}, "seconds": 600.0, "settings": settings}]}
    other = _demo_results()
    other["numbers"].update(mAP40=0.5, cnn_auc=0.8, auc=0.9, test_auc_detection=0.95)
    other["settings"] = dict(settings)
    other["environment"].update(cpu="AMD EPYC", torch_cpu_capability="AVX512")
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    (tmp_path / "results.json").write_text(json.dumps(other))
    out = tmp_path / "spread.json"
    monkeypatch.setattr("sys.argv", ["demo_spread.py", "--python-none", "--add", str(tmp_path / "earlier.json"),
                                     str(tmp_path / "results.json"), "--json", str(out)])
    spread_mod.main()
    got = json.loads(out.read_text())
    assert [r["name"] for r in got["runs"]] == ["seed 0, opencv 4.12.0, numpy 2.2.6",
                                                 "seed 0, opencv 4.12.0, numpy 2.2.6, AMD EPYC (AVX512)"]
    assert got["spread"]["mAP40"] == pytest.approx(0.1) and got["spread"]["test_mAP40"] == pytest.approx(0.6049 - 0.6)
    assert got["description"].startswith("2 runs of 1 seed(s) (0) in 2 environment(s)")
    other["settings"]["max_iter"] = 100
    (tmp_path / "results.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="max_iter"):
        spread_mod.main()


def test_demo_spread_of_the_mura_demo(tmp_path, monkeypatch):
    """--dataset mura spreads the MURA demo's own numbers (study-level AUC and kappa), renders as its own section of
    docs/results.md, and refuses a chest demo's run."""
    spread_mod = load_script("benchmarks/demo_spread.py")
    doc = load_script("tools/results_doc.py")
    settings = {"seed": 0, "dataset": "mura", "n_train": 1200, "n_test": 300, "size": 256, "cls_max_iter": 1000,
                "cls_pool": "avg"}
    files = []
    for seed, study in ((0, 0.95), (1, 0.9)):
        r = _demo_results()
        r["numbers"] = {"image_auc": study - 0.01, "study_auc": study, "study_kappa": 0.7, "study_sensitivity": 0.8}
        r["settings"] = {**settings, "seed": seed}
        files.append(tmp_path / f"mura{seed}.json")
        files[-1].write_text(json.dumps(r))
    out = tmp_path / "spread.json"
    argv = ["demo_spread.py", "--dataset", "mura", "--python-none", "--json", str(out), "--add"]
    monkeypatch.setattr("sys.argv", argv + [str(f) for f in files])
    spread_mod.main()
    got = json.loads(out.read_text())
    assert got["keys"] == ["image_auc", "study_auc", "study_kappa"] and got["dataset"] == "mura"
    assert got["spread"]["study_auc"] == pytest.approx(0.05) and got["spread"]["study_kappa"] == 0.0
    assert got["description"].startswith("The MURA demo") and "cls_pool avg" in got["description"]
    assert "study-level AUC of at least 0.85" in got["description"]
    text = doc.render(_demo_results(), None, None, got)
    assert "## The MURA demo across seeds" in text and "| seed 1, opencv 4.12.0, numpy 2.2.6 | 0.890 | 0.900 |" in text
    chest = _demo_results()
    chest["settings"] = {"seed": 0}
    (tmp_path / "chest.json").write_text(json.dumps(chest))
    monkeypatch.setattr("sys.argv", argv + [str(files[0]), str(tmp_path / "chest.json")])
    with pytest.raises(SystemExit, match="vindr-cxr demo cannot join"):
        spread_mod.main()


@pytest.mark.skipif(not (ROOT / "docs" / "results" / "demo_mura_spread.json").exists(),
                    reason="no MURA spread recorded in docs/results/demo_mura_spread.json yet")
def test_readme_quotes_the_mura_spread():
    """The README's MURA sentence gives the study-level AUC range and seed count of the recorded MURA spread."""
    spread = json.loads((ROOT / "docs" / "results" / "demo_mura_spread.json").read_text())
    values = [r["numbers"]["study_auc"] for r in spread["runs"]]
    m = re.search(r"study AUC (\d\.\d{3})-(\d\.\d{3}) with each of (\d+) seeds", (ROOT / "README.md").read_text())
    assert m, "the README's MURA demo sentence"
    assert (m.group(1), m.group(2), int(m.group(3))) == (f"{min(values):.3f}", f"{max(values):.3f}", len(values))
