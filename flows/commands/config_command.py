"""`geor config show [--config P] [key=value ...]` prints the resolved configuration as YAML
(credentials in URIs masked; the output is itself a valid ``--config`` file); `geor config
reference` prints the configuration reference that docs/configuration.md holds, rendered from the
schema (geor_core/config/reference.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from flows.commands.config_args import add_config_arguments, config_from_args
from geor_core.uris import redact_uri

EXAMPLES = """examples:
  geor config show --config demo grpo.beta=0.02
  geor config reference > docs/configuration.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config as YAML, credentials in URIs masked")
    add_config_arguments(show)
    actions.add_parser("reference", help="print the configuration reference (docs/configuration.md)")


def _redacted(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _redacted(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_redacted(value) for value in node]
    return redact_uri(node) if isinstance(node, str) else node


def run(args: argparse.Namespace) -> int:
    if args.action == "reference":
        from geor_core.config.reference import render_reference

        sys.stdout.write(render_reference())
        return 0
    cfg = config_from_args(args)
    sys.stdout.write(yaml.safe_dump(_redacted(cfg.to_dict()), sort_keys=False))
    return 0
