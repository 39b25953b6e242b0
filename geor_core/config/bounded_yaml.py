"""Bounded YAML reading for configs and override values: a document over ``MAX_YAML_BYTES``, one
whose aliases expand to more than ``MAX_YAML_NODES`` nodes (a "billion laughs"), an alias that
refers to itself, or nesting deeper than Python can follow is a ConfigError, so no config can hang
or exhaust memory."""

from __future__ import annotations

from typing import Any

import yaml

from geor_core.config.fields import ConfigError

MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # after alias expansion; the shipped presets have a few hundred


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document whose aliases expand past ``MAX_YAML_NODES`` nodes or
    refer to themselves, before anything is built from it."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_nodes(node, {}, set())
        return node


class _YamlTooLarge(yaml.YAMLError):
    pass


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """The nodes ``node`` stands for once every alias is expanded (each node measured once)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _YamlTooLarge("an alias refers to the collection that contains it")
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    size = 1
    for child in children:
        size += _expanded_nodes(child, sizes, open_nodes)
        if size > MAX_YAML_NODES:
            raise _YamlTooLarge(f"its aliases expand to more than {MAX_YAML_NODES} values")
    open_nodes.discard(key)
    sizes[key] = size
    return size


def load_yaml(text: str, what: str) -> Any:
    """YAML text -> plain data, bounded (see the module docstring); ``what`` names it in errors."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} has {len(text)} characters; a config may have at most {MAX_YAML_BYTES}")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: builds plain data only
    except _YamlTooLarge as exc:
        raise ConfigError(f"{what} is refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None
