"""House rules that code review would otherwise have to catch: import direction and docstrings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"geor_core": set(), "tasks": {"geor_core"}, "flows": {"tasks", "geor_core"}}
FORBIDDEN_IN_CORE = {"ray"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_flow_flows_to_tasks_to_core(package):
    own = set(LAYERS) - LAYERS[package] - {package}
    for path in _modules(package):
        roots = _imported_roots(path)
        assert not roots & own, (
            f"{path.relative_to(ROOT)} imports {roots & own} against flows -> tasks -> geor_core"
        )
        if package == "geor_core":
            assert not roots & FORBIDDEN_IN_CORE, f"{path.relative_to(ROOT)} imports Ray; geor_core must not"


def test_every_module_says_what_it_is_for():
    missing = [
        str(path.relative_to(ROOT))
        for package in (*LAYERS, "tests", "benchmarks", "configs")
        for path in _modules(package)
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not missing, f"modules without a docstring: {missing}"
