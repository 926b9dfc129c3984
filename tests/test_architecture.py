"""The layering the code relies on, checked on the source (STYLE.md "In this project")."""

import ast
from pathlib import Path

import pytest

from asrperf.engines.capabilities import ENGINES
from asrperf.engines.catalog import CATALOG

SRC = Path(__file__).resolve().parents[1] / "src" / "asrperf"


def _modules(folder: str = "") -> list[Path]:
    return sorted((SRC / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("folder, forbidden", [
    ("measure", ("asrperf.engines",)),
    ("report", ("asrperf.config", "asrperf.engines", "asrperf.scenarios", "asrperf.run", "torch")),
    ("results", ("asrperf.engines", "asrperf.scenarios", "asrperf.run", "asrperf.report", "torch")),
    ("data", ("asrperf.engines", "asrperf.scenarios", "asrperf.run", "asrperf.report")),
    ("load", ("asrperf.engines", "asrperf.scenarios", "asrperf.serve", "torch")),  # the load generator talks HTTP only
])
def test_imports_flow_one_way(folder, forbidden):
    bad = [(p.name, m) for p in _modules(folder) for m in _imports(p) if m.startswith(forbidden)]
    assert not bad, bad


def test_the_cli_reaches_engines_and_scenarios_only_through_run():
    # serve/ (the HTTP server around an engine) and load/ (HTTP only) are commands of their own (DESIGN.md)
    allowed = ("asrperf.config", "asrperf.errors", "asrperf.run", "asrperf.report", "asrperf.results", "asrperf.doctor",
               "asrperf.serve.command", "asrperf.load.command")
    bad = [m for m in _imports(SRC / "cli.py") if m.startswith("asrperf") and not m.startswith(allowed)]
    assert not bad, bad


def _names_compared(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """String literals from `names` that a comparison (==, !=, in, not in) tests against."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            hits += [(node.lineno, e.value) for e in elts if isinstance(e, ast.Constant) and e.value in names]
    return hits


def test_no_module_outside_engines_compares_an_engine_or_model_name():
    names = set(ENGINES) | set(CATALOG)
    bad = {p.relative_to(SRC).as_posix(): hits for p in _modules() if "engines" not in p.parts
           if (hits := _names_compared(p, names))}
    assert not bad, bad
