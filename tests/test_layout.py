"""The package is laid out as the data flows (docs/architecture.md): imports only go down.

    cli.py, entry.py, runner.py, api.py, syncing.py   (top: may import anything below)
    output/                             (analysis, store, core)
    analysis/                           (sources, store, core)
    sources/                            (store, core)
    store/                              (core)
    core: config, errors, forked, lists, model, periods, progress, demo (data)   (core only)

Every import counts, including those inside functions and ``if TYPE_CHECKING:`` blocks: a
lazy import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "replytime"
CORE = {"config", "errors", "forked", "lists", "model", "periods", "progress",
        "demo"}  # demo: package data (the example mailbox), no code
TOP = {"api", "cli", "entry", "runner", "syncing", "__init__"}
LAYERS = ["core", "store", "sources", "analysis", "output", "top"]


def layer_of(module: str) -> str:
    """``replytime.analysis.matcher`` -> ``analysis``; ``replytime.config`` -> ``core``."""
    parts = module.split(".")
    assert parts[0] == "replytime", module
    if len(parts) == 1:
        return "top"  # the package itself (its lazy public names reach everything)
    head = parts[1]
    if head in CORE:
        return "core"
    if head in TOP:
        return "top"
    assert head in LAYERS, f"{module}: not in any layer of tests/test_layout.py"
    return head


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import of a replytime module in ``path``."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names
                      if a.name.split(".")[0] == "replytime"]
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] == "replytime"):
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def target_of(module: str, name: str | None) -> str:
    """``from replytime.analysis import metrics`` imports the module ``...analysis.metrics``."""
    if name and PACKAGE.parent.joinpath(*f"{module}.{name}".split(".")).with_suffix(".py").exists():
        return f"{module}.{name}"
    return module


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    assert len(MODULES) > 30
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_only_go_down(path: Path) -> None:
    here = module_name(path)
    mine = LAYERS.index(layer_of(here))
    upward = []
    for line, module, name in imports_of(path):
        if module == "replytime" and name == "__version__":
            continue  # the version string, not the package's lazy public names
        target = target_of(module, name)
        if LAYERS.index(layer_of(target)) > mine:
            upward.append(f"{path.name}:{line} imports {target} ({layer_of(target)})")
    assert not upward, f"{here} ({layer_of(here)}) imports upward: {upward}"


def test_no_import_circles() -> None:
    """No two modules need each other, directly or through others (lazy imports count)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        here = module_name(path)
        graph[here] = {target_of(m, n) for _, m, n in imports_of(path)
                       if target_of(m, n) != "replytime"} - {here}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its own modules is not a circle.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_each_subpackage_says_what_it_owns_and_may_import() -> None:
    for sub in ("sources", "store", "analysis", "output"):
        doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
        assert doc and "May import" in doc, sub


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk itself: an upward import in a store module is reported."""
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from replytime.analysis.matcher import Roster\n")
    (line, module, name), = imports_of(fake)
    assert (line, target_of(module, name)) == (2, "replytime.analysis.matcher")
    assert LAYERS.index(layer_of("replytime.analysis.matcher")) > LAYERS.index("store")
