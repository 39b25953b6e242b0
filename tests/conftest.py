"""Registers the shared session fixtures; each plugin module owns one family of them."""

pytest_plugins = ["tests.plugins.servers", "tests.plugins.models", "tests.plugins.training"]
