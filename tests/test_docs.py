"""The documentation: every shell block of README.md and docs/ is marked, parses against the scripts it calls, and
the runnable ones run on synthetic data; the site builds strictly; the README stays a front door.

How blocks are marked and checked: tests/docs_commands.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_commands import (
    ROOT,
    SHELL_LANGS,
    Block,
    Runner,
    blocks,
    check_command,
    doc_files,
    expanded_commands,
    marker_problems,
    output_matches,
)

ALL_BLOCKS = [b for path in doc_files() for b in blocks(path)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL_LANGS]


def test_every_shell_block_is_marked_run_or_skip_with_a_reason():
    problems = [p for b in ALL_BLOCKS for p in marker_problems(b)]
    assert not problems, "\n".join(problems)
    assert any(b.marker == "run" for b in SHELL_BLOCKS), "no documented command is run by the tests"


def test_every_documented_command_parses_against_its_script():
    problems = []
    checked = 0
    for block in SHELL_BLOCKS:
        for argv in expanded_commands(block):
            why = check_command(argv)
            checked += why is None
            if why:
                problems.append(f"{block.where}: {why}\n    {' '.join(argv)}")
    assert not problems, "\n".join(problems)
    assert checked >= 20, f"only {checked} commands were checked: is the recorder working?"


@pytest.mark.parametrize("argv, fragment", [
    (["python", "datasets/prepare_vindr_cxr.py", "--csv", "a.csv", "--dicom-dir", "d", "--out", "o", "--sizes", "256"],
     "--sizes"),
    (["python", "datasets/prepare_vindr_cxr.py", "--csv", "a.csv", "--dicom-folder", "d", "--out", "o"],
     "--dicom-folder"),
    (["python", "datasets/prepare_vindr_cxr.py", "--csv", "a.csv", "--dicom-dir", "d"], "--out"),
    (["python", "tools/train_net.py", "--config-file", "c.yaml", "DETX.DATA_ROT", "x"], "DETX.DATA_ROT"),
    (["python", "-m", "detx.synthetic", "--out", "o", "--n-train", "3", "--n-tests", "1"], "--n-tests"),
    (["make", "demos"], "demos"),
    (["make", "demo", "LUNG_CROP=1"], "LUNG_CROP"),
    (["python", "tools/no_such_tool.py", "--x"], "no such script"),
])
def test_a_renamed_flag_key_target_or_script_fails_the_check(argv, fragment):
    why = check_command(argv)
    assert why is not None and fragment in why, why


def test_the_check_accepts_what_is_right():
    assert check_command(["python", "datasets/prepare_vindr_cxr.py", "--csv", "a.csv", "--dicom-dir", "d",
                          "--out", "o", "--size", "256"]) is None
    assert check_command(["python", "tools/train_net.py", "--config-file", "c.yaml", "DETX.DATA_ROOT", "x",
                          "SOLVER.MAX_ITER", "20", "--resume"]) is None
    assert check_command(["make", "demo", "DATASET=mura"]) is None
    assert check_command(["make", "demo", "LUNG_CROPS=1"]) is None


def test_bash_expands_loops_and_braces_before_the_check(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: skip real-data: x -->\n```bash\nfor k in 0 1; do\n"
                    "  python tools/train_net.py --config-file c.yaml OUTPUT_DIR out$k \\\n"
                    "      DETX.FOLD $k\ndone\npython tools/predict.py --weights w{0,1}.pth --input i --out o\n```\n")
    (block,) = blocks(page)
    cmds = expanded_commands(block)
    assert cmds == [["python", "tools/train_net.py", "--config-file", "c.yaml", "OUTPUT_DIR", "out0", "DETX.FOLD", "0"],
                    ["python", "tools/train_net.py", "--config-file", "c.yaml", "OUTPUT_DIR", "out1", "DETX.FOLD", "1"],
                    ["python", "tools/predict.py", "--weights", "w0.pth", "w1.pth", "--input", "i", "--out", "o"]]


def test_an_unmarked_or_unexplained_block_is_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nls\n```\n\n<!-- docs-test: skip gpu -->\n```bash\nls\n```\n\n"
                    "<!-- docs-test: skip lazy: no -->\n```sh\nls\n```\n\n<!-- docs-test: run -->\n```text\nx\n```\n")
    problems = [p for b in blocks(page) for p in marker_problems(b)]
    assert len(problems) == 4, problems


def test_output_blocks_match_in_order_with_ellipsis():
    actual = "a\nb 0.5\nc\nd\n"
    assert output_matches("a\n...\nd\n", actual) is None
    assert output_matches("b 0.5\nc\n", actual) is None
    assert output_matches("c\nb 0.5\n", actual) == "b 0.5"
    assert output_matches("b 0.6\n", actual) == "b 0.6"


@pytest.mark.slow
def test_runnable_blocks_run_on_synthetic_data(tmp_path):
    runner = Runner(tmp_path / "work")
    last_output: tuple[Block, str] | None = None
    ran = 0
    for block in ALL_BLOCKS:
        if block.marker == "run" and block.lang in SHELL_LANGS:
            last_output = (block, runner.run(block))
            ran += 1
        elif block.marker == "output":
            assert last_output is not None, f"{block.where}: an output block with no run block before it"
            missing = output_matches(block.text, last_output[1])
            assert missing is None, (f"{block.where}: the line {missing!r} is not in the output of "
                                     f"{last_output[0].where}:\n{last_output[1][-3000:]}")
    assert ran > 0


def test_docs_site_builds_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


LINK = re.compile(r"\[[^\]]*\]\((?!https?://|mailto:)([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_readme_links_point_at_files_and_headings_that_exist():
    broken = []
    readme = ROOT / "README.md"
    for target in LINK.findall(readme.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        path = (readme.parent / path_part) if path_part else readme
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken, broken


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to docs/"
    text = "\n".join(lines)
    for needed in ("make demo", "make test", "docs/"):
        assert needed in text
