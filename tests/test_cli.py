"""The `geor` entry points: console script and `python -m flows`, help, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from flows.cli import COMMANDS, main


def test_python_dash_m_flows_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "flows", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert name in out


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert name in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    try:
        main(["no-such-command"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err
