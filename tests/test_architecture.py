"""The package's shape: one-way layers, no import cycle between modules, every third-party import declared.

The layers contract lives in pyproject.toml ([tool.importlinter]) and is also run by `make test` as
`lint-imports`; these tests run it too, check that it can fail, and add what it does not check.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from importlib.metadata import packages_distributions
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = None
    if extra_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(extra_path)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, env=env)


def test_layers_contract_is_kept():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_layers_contract_catches_an_upward_function_level_import(tmp_path):
    # the same contract on a toy package whose bottom layer imports the top one inside a function
    pkg = tmp_path / "toy"
    for name in ("__init__", "top", "bottom"):
        (pkg / f"{name}.py").parent.mkdir(exist_ok=True)
        (pkg / f"{name}.py").write_text("")
    (pkg / "bottom.py").write_text("def f():\n    from toy import top  # upward\n    return top\n")
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.importlinter]
        root_package = "toy"
        [[tool.importlinter.contracts]]
        name = "toy layers"
        type = "layers"
        layers = ["toy.top", "toy.bottom"]
    """))
    proc = _lint_imports(tmp_path, extra_path=tmp_path)
    assert proc.returncode != 0 and "toy.bottom -> toy.top" in proc.stdout, proc.stdout + proc.stderr


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt) & modules))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("detx", cache_dir=None)
    modules = set(graph.modules)
    assert _cycles(graph, modules) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph, set(graph.modules)) == [["p.a", "p.b"]]


def _requirement_names(setup_py: Path) -> tuple[set[str], set[str]]:
    """(install_requires, extras_require["dev"]) distribution names from setup.py's literals, normalized."""
    tree = ast.parse(setup_py.read_text())
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in ("install_requires", "extras_require"):
            found[node.targets[0].id] = ast.literal_eval(node.value)

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    return names(found["install_requires"]), names(found["extras_require"]["dev"])


def _third_party_imports(paths: list[Path]) -> dict[str, set[str]]:
    """top-level module -> files importing it (function-level imports included), outside the stdlib and detx."""
    local = ({"detx", "tools", "conftest", "datasets", "benchmarks"} | {p.stem for p in (REPO / "benchmarks").glob("*.py")}
             | {p.stem for p in (REPO / "tests").glob("*.py")})  # the tests' own helper modules (docs_commands, ...)
    out: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    out.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return out


@pytest.mark.parametrize("where", ["package", "tests"])
def test_every_third_party_import_is_declared(where):
    runtime, dev = _requirement_names(REPO / "setup.py")
    if where == "package":
        files = [*(REPO / "detx").rglob("*.py"), *(REPO / "tools").glob("*.py"), *(REPO / "datasets").glob("*.py")]
        allowed = runtime
    else:
        files = [*(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
        allowed = runtime | dev
    dists = packages_distributions()
    undeclared = {}
    for module, users in sorted(_third_party_imports(files).items()):
        if module == "detectron2":  # installed by tools/install.sh (not on PyPI; README "Installation")
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if not names & allowed:
            undeclared[module] = (sorted(names), sorted(users)[:3])
    assert undeclared == {}, f"imported but not declared in setup.py: {undeclared}"
