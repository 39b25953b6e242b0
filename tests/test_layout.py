"""House rules that code review would otherwise have to catch: import direction, docstrings, file
size and citations of documents the repository does not hold."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"geor_core": set(), "tasks": {"geor_core"}, "flows": {"tasks", "geor_core"}}
FORBIDDEN_IN_CORE = {"ray"}
MAX_LINES = 400  # no .py file of SIZED_FOLDERS is longer
SIZED_FOLDERS = ("geor_core", "tasks", "flows", "tests", "benchmarks", "configs")
ROOT_PACKAGES = {"config"}  # geor_core packages that belong to the root, not domains
# geor_core's domains and the ones each may import; the root modules (config, errors, uris,
# ownership) import no domain.
CORE_GROUPS = {
    "geo": set(),
    "data": {"geo"},
    "scoring": {"geo"},
    "training": {"geo", "data", "scoring"},
    "registry": set(),
}


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


def _core_imports(path: Path) -> set[str]:
    """The geor_core domains (or "root") that a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "geor_core" and len(parts) > 1:
                found.add(parts[1] if parts[1] in CORE_GROUPS else "root")
    return found


def _core_group(path: Path) -> str:
    """The domain a geor_core module belongs to, or "root" (its top level and ROOT_PACKAGES)."""
    core = ROOT / "geor_core"
    top = path.relative_to(core).parts[0]
    return top if top in CORE_GROUPS else "root"


def _tracked() -> list[Path]:
    """The repository's own files: those git tracks or would add (untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_core_domains_import_in_one_direction():
    """geor_core is grouped by domain; imports between domains follow CORE_GROUPS (no cycles)."""
    core = ROOT / "geor_core"
    grouped = {path.parent.name for path in core.glob("*/__init__.py")} - ROOT_PACKAGES
    assert grouped == set(CORE_GROUPS), f"domains on disk {sorted(grouped)} != {sorted(CORE_GROUPS)}"
    for path in _modules("geor_core"):
        own = _core_group(path)
        allowed = {"root"} if own == "root" else {"root", own} | CORE_GROUPS[own]
        wrong = _core_imports(path) - allowed
        assert not wrong, f"{path.relative_to(ROOT)} imports geor_core domains {wrong}; allowed {allowed}"


def test_no_module_shares_its_name_with_one_in_another_layer():
    names: dict[str, set[str]] = {}
    for package in LAYERS:
        for path in _modules(package):
            if path.stem != "__init__":
                names.setdefault(path.stem, set()).add(package)
    shared = {name: layers for name, layers in names.items() if len(layers) > 1}
    assert not shared, f"module names used in more than one layer: {shared}"


def test_every_module_says_what_it_is_for():
    missing = [
        str(path.relative_to(ROOT))
        for package in (*LAYERS, "tests", "benchmarks", "configs")
        for path in _modules(package)
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_no_python_file_is_longer_than_the_limit():
    """Small single-purpose files: a module past MAX_LINES lines is split along a seam."""
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in _tracked()
        if path.suffix == ".py" and path.relative_to(ROOT).parts[0] in SIZED_FOLDERS
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"files over {MAX_LINES} lines (split them): {too_long}"


def test_no_file_cites_a_document_the_repository_does_not_hold():
    """The docs stand on their own: design facts are cited from README.md or docs/, never from an
    outside design document."""
    outside = "DESIGN" + ".md"  # spelled in two parts so this file does not cite it
    citing = sorted(
        str(path.relative_to(ROOT)) for path in _tracked() if outside.encode() in path.read_bytes()
    )
    assert not citing, f"files citing {outside}, which is not in the repository: {citing}"
