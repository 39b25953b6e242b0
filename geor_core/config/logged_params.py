"""A config as MLflow params: dotted ``section.key -> value`` pairs with secret-looking keys left out
and the credentials of URIs masked."""

from __future__ import annotations

import re
from typing import Any

from geor_core import uris
from geor_core.config.sections import GeorConfig

SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}


def is_secret_key(key: str) -> bool:
    """True when a (dotted) key names a secret; such values are never logged."""
    words = re.split(r"[^a-z0-9]+", key.rsplit(".", 1)[-1].lower())
    return any(word in SECRET_WORDS for word in words)


def flat_params(cfg: GeorConfig, sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted ``section.key -> value`` pairs, secret-looking keys removed and the credentials of
    URIs masked (for MLflow params)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif not is_secret_key(prefix):
            out[prefix] = uris.redact_uri(node) if isinstance(node, str) else node

    data = cfg.to_dict()
    for name in sections or tuple(data):
        walk(name, data[name])
    return out
