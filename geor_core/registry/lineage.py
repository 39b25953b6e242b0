"""Lineage: what data and what code a run used, as short stable hashes.

``data_fingerprint(uri)`` hashes a dataset's completion marker when it has one, else its file
listing (names and sizes): it never reads the data itself. ``code_version()`` is the git commit
of the checkout the package lives in (with ``-dirty`` and a source hash when package files have
uncommitted changes), else a hash of the package source files. A flow exports its value as
``GEOR_CODE_VERSION`` so that Ray workers, which run from a copy without ``.git``, report the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

from geor_core import uris

CODE_VERSION_ENV = "GEOR_CODE_VERSION"
PROJECT_PACKAGES = ("geor_core", "tasks", "flows", "configs")
SOURCE_SUFFIXES = (".py", ".yaml")
_HASH_CHARS = 16


def data_fingerprint(uri: str) -> str:
    """A stable 16-hex-digit hash of a dataset: its completion marker, else its listing."""
    marker = uris.read_marker(uri)
    if marker is not None:
        material = {"marker": marker}
    else:
        fs, path = uris.filesystem(uri)
        if not fs.exists(path):
            raise FileNotFoundError(f"cannot fingerprint {uri}: nothing is there")
        if fs.isfile(path):
            listing = {Path(path).name: fs.size(path)}
        else:
            listing = {
                os.path.relpath(name, path): info.get("size")
                for name, info in fs.find(path, detail=True).items()
            }
        material = {"listing": sorted(listing.items())}
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:_HASH_CHARS]


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def source_hash(root: Path | None = None) -> str:
    """A hash of the project's package sources (``.py`` and ``.yaml``) under ``root``."""
    root = root or _project_root()
    digest = hashlib.sha256()
    for package in PROJECT_PACKAGES:
        package_dir = root / package
        if not package_dir.is_dir():
            continue
        for file in sorted(package_dir.rglob("*")):
            if file.suffix in SOURCE_SUFFIXES and "__pycache__" not in file.parts:
                digest.update(file.relative_to(root).as_posix().encode() + b"\0")
                digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:_HASH_CHARS]


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version() -> str:
    """``GEOR_CODE_VERSION`` if set; else the git commit (``<sha>-dirty-<src>`` when the packages
    have uncommitted changes); else ``src-<hash of the package sources>``."""
    return os.environ.get(CODE_VERSION_ENV) or _detected_code_version()


@functools.lru_cache(maxsize=1)
def _detected_code_version() -> str:
    root = _project_root()
    toplevel = _git(root, "rev-parse", "--show-toplevel")
    commit = _git(root, "rev-parse", "--verify", "-q", "HEAD") if toplevel else None
    if commit and Path(toplevel).resolve() == root:
        changes = _git(root, "status", "--porcelain", "--", *PROJECT_PACKAGES)
        return commit if changes == "" else f"{commit}-dirty-{source_hash(root)}"
    return f"src-{source_hash(root)}"
