"""The documentation holds together: a short README whose command table is the CLI's, links in
README.md, docs/ and clusters/README.md that lead to a file and heading, and a runtime_env file
that `ray job submit --runtime-env` takes as it is. Unit tests: no Ray cluster, no network."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import yaml

from flows.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "clusters" / "README.md"]
RUNTIME_ENV = ROOT / "clusters" / "runtime_env.yaml"
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INDENTED_CODE = re.compile(r"^(?: {4}|\t).*$", re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
TABLE_COMMAND = re.compile(r"^\|\s*`geor ([a-z][a-z-]*)`\s*\|", re.M)


def _prose(text: str) -> str:
    """The text without code: fenced blocks, indented blocks and inline code spans."""
    return INLINE_CODE.sub("", INDENTED_CODE.sub("", FENCE.sub("", text)))


def _anchors(path: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file (lower case, punctuation dropped, spaces
    to hyphens, repeats numbered)."""
    seen: dict[str, int] = {}
    anchors = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


def test_readme_is_at_most_300_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_no_page_has_a_section_twice() -> None:
    """A repeated `## ` section is a merge left over, and links to it reach only the first copy."""
    repeated = {}
    for page in PAGES:
        sections = re.findall(r"^## (.+)$", FENCE.sub("", page.read_text()), re.M)
        twice = sorted({title for title in sections if sections.count(title) > 1})
        if twice:
            repeated[str(page.relative_to(ROOT))] = twice
    assert not repeated, repeated


def test_the_link_check_sees_links_and_headings() -> None:
    """The checks above are not vacuous: the README links into docs/ and anchors are computed."""
    assert any(t.startswith("docs/") for t in _links(README))
    assert "supervised-fine-tuning-geor-sft" in _anchors(ROOT / "docs" / "training.md")


def test_readme_command_table_is_the_clis_command_table() -> None:
    """One row per `geor` command: each a real one (flows/cli.py COMMANDS), none missing."""
    table = TABLE_COMMAND.findall(README.read_text())
    unknown = [name for name in table if name not in COMMANDS]
    assert not unknown, f"README lists commands flows/cli.py does not register: {unknown}"
    assert len(table) == len(set(table)), f"a command listed twice: {table}"
    missing = [name for name in COMMANDS if name not in table]
    assert not missing, f"README's command table lacks: {missing}"


# --- clusters/runtime_env.yaml ------------------------------------------------------------------


def test_runtime_env_file_is_what_ray_job_submit_accepts() -> None:
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load(RUNTIME_ENV.read_text())
    # what `ray job submit --runtime-env FILE` does with the file
    assert parse_runtime_env_args(runtime_env=str(RUNTIME_ENV)) == data
    unknown = set(data) - RuntimeEnv.known_fields
    assert not unknown, f"keys Ray's runtime_env does not know: {sorted(unknown)}"
    runtime_env = RuntimeEnv(**data)  # Ray's own validation: types of every field
    assert runtime_env.working_dir() == "."
    assert all(isinstance(v, str) for v in data["env_vars"].values())
    assert "pip" not in data and "conda" not in data, "the nodes carry the dependencies"
    assert "MLFLOW_TRACKING_URI" not in data["env_vars"], "would override the nodes' own server"


def test_runtime_env_uploads_the_sources_and_nothing_local(tmp_path: Path) -> None:
    """The zip Ray builds from working_dir and excludes (the code path of the upload): the
    package, presets and bundled data go; the venv, runs, git history and tests stay home."""
    from ray._private.ray_constants import GRPC_CPP_MAX_MESSAGE_SIZE
    from ray._private.runtime_env.packaging import create_package

    data = yaml.safe_load(RUNTIME_ENV.read_text())
    package = tmp_path / "working_dir.zip"
    create_package(
        str(ROOT / data["working_dir"]), package, include_gitignore=True, excludes=data["excludes"]
    )
    names = set(zipfile.ZipFile(package).namelist())
    for needed in ("flows/cli.py", "flows/__main__.py", "geor_core/config/sections.py", "configs/demo.yaml"):
        assert needed in names, f"{needed} would not reach the cluster"
    for local in (".venv/", "runs/", ".git/", "tests/", "benchmarks/"):
        assert not any(name.startswith(local) for name in names), f"{local} would be uploaded"
    assert package.stat().st_size < GRPC_CPP_MAX_MESSAGE_SIZE // 16, "the upload grew past 32 MiB"
