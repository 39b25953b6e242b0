"""The reference rule: which image references a manifest may name, and the URI each one becomes.

A manifest's image references are data, not instructions: each is checked on its text alone,
before anything is opened, and gets a reason code when it breaks the rule ("" = allowed):

- ``image_path_invalid``: a control character (NUL, a line break, ...), or a ``file://`` URI
  without an absolute path.
- ``image_scheme_not_allowed``: its scheme is not in ``prepare.allowed_schemes`` (default
  ``file`` and ``s3``; ``http`` / ``https`` / others only when listed). Plain paths, relative or
  absolute, and ``file://`` URIs are the ``file`` scheme.
- ``image_outside_root``: a local path (a relative reference joined to the base folder, ``..``
  folded) that lies outside every allowed root (the manifest's folder and ``prepare.images_root``),
  or that lies inside one but resolves, through symlinks, outside all of them. A relative
  reference that climbs above a remote base (``s3://...``) with ``..`` is outside too.
  Symlinks are followed one at a time, and a link that leads out of the roots is not followed.

Only a path already inside a root is looked at on disk (``lstat`` of its file and its folders,
to follow symlinks); a rejected reference is never opened nor stat'ed, so keep versus reject
never tells whether a file outside the roots exists. Remote references of an allowed scheme are
kept as written. Allowed local references become absolute, normalised paths.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geor_core.config import ConfigError

IMAGE_PATH_INVALID = "image_path_invalid"
IMAGE_SCHEME_NOT_ALLOWED = "image_scheme_not_allowed"
IMAGE_OUTSIDE_ROOT = "image_outside_root"
REASON_CODES = (IMAGE_PATH_INVALID, IMAGE_SCHEME_NOT_ALLOWED, IMAGE_OUTSIDE_ROOT)
LOCAL_SCHEME = "file"

_MAX_LINKS = 40  # symlinks followed for one path, as the kernel does
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SCHEME_NAME = re.compile(r"^[a-z][a-z0-9+.\-]*$")
_INVALID_TEXT = re.compile("[\x00-\x1f\x7f]")
# not a plain relative reference: absolute, with a scheme, a ``..`` part or a control character
_NOT_PLAIN = r"^/|^[A-Za-z][A-Za-z0-9+.\-]*://|(^|/)\.\.(/|$)|[\x00-\x1f\x7f]"


@dataclass(frozen=True)
class ReferenceRule:
    """Where a manifest file's image references may point; build it with ``reference_rule``."""

    allowed_schemes: frozenset[str]
    base: str  # relative references are joined to it: an absolute local folder or a remote prefix
    roots: tuple[str, ...]  # absolute, normalised local folders that local references must stay in

    @functools.cached_property
    def real_roots(self) -> tuple[str, ...]:
        """The roots with their symlinks resolved."""
        return tuple(os.path.realpath(root) for root in self.roots)


def reference_rule(allowed_schemes: Iterable[str], base: str, roots: Iterable[str]) -> ReferenceRule:
    """The rule for references joined to ``base`` and kept inside ``roots`` (local folders; empty
    and remote entries are ignored). ConfigError for a scheme name that is not one."""
    schemes = [str(s).strip().lower() for s in allowed_schemes]
    bad = [s for s in schemes if not _SCHEME_NAME.match(s)]
    if bad:
        raise ConfigError(
            f"prepare.allowed_schemes: got {bad!r}; expected URI scheme names such as file, s3, https"
        )
    local_roots = tuple(dict.fromkeys(_local_path(root) for root in roots if root and not _is_remote(root)))
    base = base if _is_remote(base) else _local_path(base)
    return ReferenceRule(frozenset(schemes), base.rstrip("/") or "/", local_roots)


def _is_remote(uri: str) -> bool:
    match = _SCHEME.match(uri)
    return bool(match) and match.group(1).lower() != LOCAL_SCHEME


def _local_path(uri: str) -> str:
    return posixpath.normpath(os.path.abspath(os.path.expanduser(uri.removeprefix("file://"))))


def resolve_references(
    references: pa.Array | pa.ChunkedArray, rule: ReferenceRule
) -> tuple[pa.Array, np.ndarray]:
    """(URIs, reasons) for an array of references: reason "" and the URI to read when allowed, else
    a reason code and ""; an empty or null reference gives "" and "" (the caller decides what
    that means). Plain relative references are joined and checked a batch at a time; the rest one
    by one."""
    if isinstance(references, pa.ChunkedArray):
        references = references.combine_chunks()
    n = len(references)
    refs = pc.fill_null(references.cast(pa.string()), "")
    plain = pc.invert(pc.match_substring_regex(refs, _NOT_PLAIN)).to_numpy(zero_copy_only=False)
    plain &= pc.not_equal(refs, "").to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(plain)
    if rows.size:
        relative = refs if rows.size == n else refs.take(pa.array(rows))
        if pc.any(pc.starts_with(relative, "./")).as_py():
            relative = pc.replace_substring_regex(relative, r"^(\./)+", "")
        joined, joined_reasons = _joined(
            pc.binary_join_element_wise(rule.base.rstrip("/") + "/", relative, ""), rule
        )
        if rows.size == n:
            return joined, joined_reasons
    uris = np.full(n, "", dtype=object)
    reasons = np.full(n, "", dtype=object)
    if rows.size:
        uris[rows], reasons[rows] = joined.to_numpy(zero_copy_only=False), joined_reasons
    for i in np.flatnonzero(~plain):
        uris[i], reasons[i] = _resolve_one(refs[i].as_py(), rule)
    return pa.array(uris, pa.string()), reasons


def _joined(paths: pa.Array, rule: ReferenceRule) -> tuple[pa.Array, np.ndarray]:
    """Relative references without ``..``, joined to the base: remote ones need only an allowed
    scheme; local ones lie inside the base (so inside a root) on their text, and are checked for
    symlinks a folder at a time (its path resolved, its symlinks listed: one ``scandir``)."""
    n = len(paths)
    scheme = rule.base.split("://", 1)[0].lower() if _is_remote(rule.base) else LOCAL_SCHEME
    if scheme not in rule.allowed_schemes:
        return pa.array([""] * n, pa.string()), np.full(n, IMAGE_SCHEME_NOT_ALLOWED, dtype=object)
    ok = np.ones(n, dtype=bool)
    if scheme == LOCAL_SCHEME:
        split = pc.split_pattern(paths, "/", max_splits=1, reverse=True)
        folders = pc.list_element(split, 0).dictionary_encode()
        in_folder = folders.indices.to_numpy(zero_copy_only=False)
        for index, folder in enumerate(folders.dictionary.to_pylist()):
            real = _resolved_folder(folder or "/", rule)
            if real is None:
                ok[in_folder == index] = False
                continue
            links = _symlinks_in(real)
            if links:
                names = pc.list_element(split, 1)
                linked = (in_folder == index) & pc.is_in(names, pa.array(sorted(links))).to_numpy(False)
                for i in np.flatnonzero(linked):
                    ok[i] = _resolved(posixpath.join(real, names[i].as_py()), rule) is not None
    if ok.all():
        return paths, np.full(n, "", dtype=object)
    reasons = np.where(ok, "", IMAGE_OUTSIDE_ROOT).astype(object)
    return pc.if_else(pa.array(ok), paths, ""), reasons


def _resolve_one(reference: str, rule: ReferenceRule) -> tuple[str, str]:
    """(URI, reason) for one reference of any form (see ``resolve_references``)."""
    if not reference:
        return "", ""
    if _INVALID_TEXT.search(reference):
        return "", IMAGE_PATH_INVALID
    match = _SCHEME.match(reference)
    if match:
        scheme = match.group(1).lower()
        if scheme not in rule.allowed_schemes:
            return "", IMAGE_SCHEME_NOT_ALLOWED
        if scheme != LOCAL_SCHEME:
            return reference, ""
        path = reference[match.end() :]
        if not path.startswith("/"):
            return "", IMAGE_PATH_INVALID
        return _local(path, rule)
    if reference.startswith("/"):
        return (
            _local(reference, rule)
            if LOCAL_SCHEME in rule.allowed_schemes
            else ("", IMAGE_SCHEME_NOT_ALLOWED)
        )
    relative = posixpath.normpath(reference)
    if _is_remote(rule.base):
        scheme = rule.base.split("://", 1)[0].lower()
        if scheme not in rule.allowed_schemes:
            return "", IMAGE_SCHEME_NOT_ALLOWED
        if relative == ".." or relative.startswith("../"):
            return "", IMAGE_OUTSIDE_ROOT
        return f"{rule.base}/{relative}", ""
    if LOCAL_SCHEME not in rule.allowed_schemes:
        return "", IMAGE_SCHEME_NOT_ALLOWED
    return _local(f"{rule.base.rstrip('/')}/{relative}", rule)


def _local(path: str, rule: ReferenceRule) -> tuple[str, str]:
    """An absolute local path: allowed when it lies inside a root, on its text and after symlinks."""
    path = posixpath.normpath(path)
    if not _inside(path, rule.roots):
        return "", IMAGE_OUTSIDE_ROOT  # decided on the text: nothing outside a root is looked at
    return (path, "") if _resolved(path, rule) is not None else ("", IMAGE_OUTSIDE_ROOT)


def _resolved(path: str, rule: ReferenceRule) -> str | None:
    """``path`` (inside a root on its text) with its symlinks resolved one link at a time, or None
    as soon as a link leads out of every root: only paths inside a root are ever looked at."""
    pairs = (*zip(rule.roots, rule.real_roots, strict=True), *((real, real) for real in rule.real_roots))
    for _ in range(_MAX_LINKS):
        match = next(((root, real) for root, real in pairs if _inside(path, (root,))), None)
        if match is None:
            return None
        root, current = match
        parts = [part for part in path[len(root.rstrip("/")) :].split("/") if part]
        for i, part in enumerate(parts):
            current = posixpath.join(current, part)
            if os.path.islink(current):
                target = posixpath.join(posixpath.dirname(current), os.readlink(current), *parts[i + 1 :])
                path = posixpath.normpath(target)
                break
        else:
            return current
    return None  # a loop of links


@functools.lru_cache(maxsize=4096)
def _resolved_folder(folder: str, rule: ReferenceRule) -> str | None:
    """``_resolved`` for a folder, once per folder (photos share few folders)."""
    return _resolved(folder, rule)


@functools.lru_cache(maxsize=1024)
def _symlinks_in(folder: str) -> frozenset[str]:
    """The names of the symlinks in a folder (none when it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return frozenset(entry.name for entry in entries if entry.is_symlink())
    except OSError:
        return frozenset()


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    """``path`` is one of ``roots`` or lies below one (on the text)."""
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)
