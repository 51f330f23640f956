"""detectron2's model_zoo imports and finds its configs without pkg_resources (tools/fix_detectron2.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _fix_tool():
    return load_script("tools/fix_detectron2.py")


fix_tool = _fix_tool()

# The lines of detectron2's model_zoo.py (upstream a59f0563 and sal-detectron2 0.7.2) that use pkg_resources.
UPSTREAM = textwrap.dedent('''\
    # Copyright (c) Facebook, Inc. and its affiliates.
    import os
    from typing import Optional
    import pkg_resources
    import torch


    def get_config_file(config_path):
        cfg_file = pkg_resources.resource_filename(
            "fakezoo.model_zoo", os.path.join("configs", config_path)
        )
        if not os.path.exists(cfg_file):
            raise RuntimeError("{} not available in Model Zoo!".format(config_path))
        return cfg_file
    ''')


def test_model_zoo_imports_in_a_fresh_interpreter():
    """The installed environment: `from detectron2 import model_zoo` works, with or without pkg_resources."""
    code = ("import sys; sys.modules['pkg_resources'] = None\n"  # as with setuptools >= 81: no pkg_resources
            "from detectron2 import model_zoo\n"
            "print(model_zoo.get_config_file('COCO-Detection/retinanet_R_101_FPN_3x.yaml'))\n"
            "print(model_zoo.get_config_file('Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml'))\n"
            "print(model_zoo.get_checkpoint_url('COCO-Detection/retinanet_R_101_FPN_3x.yaml'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    retina, cascade, url = proc.stdout.split()
    assert Path(retina).is_file() and Path(cascade).is_file()
    assert url.endswith("COCO-Detection/retinanet_R_101_FPN_3x/190397697/model_final_971ab9.pkl")


def test_fix_replaces_only_the_import_and_keeps_the_call(tmp_path, monkeypatch):
    pkg = tmp_path / "fakezoo"
    (pkg / "model_zoo" / "configs" / "COCO-Detection").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model_zoo" / "__init__.py").write_text("")
    cfg = pkg / "model_zoo" / "configs" / "COCO-Detection" / "retinanet.yaml"
    cfg.write_text("MODEL: {}\n")
    module = pkg / "model_zoo" / "model_zoo.py"
    module.write_text(UPSTREAM)

    assert fix_tool.fix_model_zoo(module) is True
    fixed = module.read_text()
    assert "import pkg_resources" not in fixed and fix_tool.MARKER in fixed
    assert fixed.count("\n") == UPSTREAM.count("\n") + 5  # the one import line became the 6-line stand-in
    assert fix_tool.fix_model_zoo(module) is False  # a second run changes nothing
    assert module.read_text() == fixed

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # `import pkg_resources` would fail
    for name in ("fakezoo", "fakezoo.model_zoo", "fakezoo.model_zoo.model_zoo"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    model_zoo = importlib.import_module("fakezoo.model_zoo.model_zoo")

    assert Path(model_zoo.get_config_file("COCO-Detection/retinanet.yaml")) == cfg
    with pytest.raises(RuntimeError, match="not available in Model Zoo"):
        model_zoo.get_config_file("COCO-Detection/missing.yaml")


def test_fix_refuses_a_use_it_does_not_cover(tmp_path):
    module = tmp_path / "model_zoo.py"
    module.write_text(UPSTREAM + "\nVERSION = pkg_resources.get_distribution('detectron2').version\n")
    with pytest.raises(fix_tool.FixError, match="pkg_resources.get_distribution"):
        fix_tool.fix_model_zoo(module)
    assert "import pkg_resources" in module.read_text()  # left as it was
    assert fix_tool.main(["--path", str(module)]) == 1


def test_install_script_runs_the_fix_for_both_routes():
    """The fix is one step after either detectron2 install route, and the verification imports model_zoo."""
    text = (ROOT / "tools" / "install.sh").read_text()
    fix_at = text.index("tools/fix_detectron2.py\n")
    assert text.index('if [ "$which_d2" = "upstream" ]') < fix_at  # after both branches of the install step
    assert text.rindex('die "DETX_DETECTRON2 must be') < fix_at < text.index('STEP="verify the environment"')
    assert "from detectron2 import model_zoo" in text[text.index('STEP="verify the environment"'):]
