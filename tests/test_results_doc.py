"""Numbers are regenerated, not typed: docs/results.md is what the results files say, and the README quotes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from detx.core.predictions import Predictions

ROOT = Path(__file__).resolve().parent.parent
QUOTE = re.compile(r"`(\w+) (\d+\.\d{3})`(?: \(95% CI (\d+\.\d{3})-(\d+\.\d{3})\))?")


def test_results_md_is_generated_from_the_results_files():
    doc = load_script("tools/results_doc.py")
    assert (ROOT / "docs" / "results.md").read_text() == doc.render(*doc.load())


def test_readme_quotes_the_demo_results_file():
    demo = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
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
    minutes = re.search(r"A demo run .*? took (\d+) min", readme)
    assert minutes and int(minutes.group(1)) == int(demo["seconds"] // 60)


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


@pytest.mark.parametrize("key", ["mAP40", "test_mAP40"])
def test_results_doc_lists_the_headline_numbers(key):
    text = (ROOT / "docs" / "results.md").read_text()
    demo = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    assert f"| `{key}` |" in text and f"{demo['numbers'][key]:.3f}" in text
