"""The `geor` entry points: console script and `python -m flows`, help, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_version_prints_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"geor {version('geor')}"


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["sfft"], "did you mean 'sft'?"),
        (["evalute"], "did you mean 'evaluate'?"),
        (["models", "lst"], "'list'?"),
    ],
)
def test_a_mistyped_command_suggests_the_nearest(capsys, argv, suggestion):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert suggestion in capsys.readouterr().err


def test_every_command_help_ends_with_examples(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        _, marker, examples = out.rpartition("\nexamples:\n")
        assert marker, f"`geor {name} --help` has no examples"
        lines = [line.strip() for line in examples.splitlines() if line.strip()]
        assert 1 <= len(lines) <= 2 and all(line.startswith(f"geor {name}") for line in lines), lines


def test_commands_are_listed_in_workflow_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    workflow = ["make-world", "prepare", "sft", "mine-hard", "grpo", "evaluate", "pipeline", "demo"]
    positions = [out.index(f"\n    {name} ") for name in workflow]
    assert positions == sorted(positions), out


def test_config_help_names_the_default_and_the_presets(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: tiny" in out and "qwen2.5-vl-7b" in out and "test" in out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "default: demo" in " ".join(capsys.readouterr().out.split())
