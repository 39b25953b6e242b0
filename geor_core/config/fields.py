"""How a config key is declared (default, allowed choices or range, doc) and the error a bad value
raises. The metadata these helpers attach is what ``validation`` checks and what ``reference``
renders into docs/configuration.md, so the schema documents itself: every range, choice and doc
text sits next to its field in ``sections``. Every key is declared with one of these helpers and a
``doc`` (a test holds it)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or outside what is allowed."""


def _plain(default: Any, doc: str = "") -> Any:
    return field(default=default, metadata={"doc": doc})


def _choice(default: Any, *allowed: Any, doc: str = "") -> Any:
    return field(default=default, metadata={"choices": allowed, "doc": doc})


def _range(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "") -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "doc": doc})


def _list(default: list, doc: str = "") -> Any:
    return field(default_factory=lambda: list(default), metadata={"doc": doc})


def _dict(default: dict, doc: str = "") -> Any:
    return field(default_factory=lambda: dict(default), metadata={"doc": doc})
