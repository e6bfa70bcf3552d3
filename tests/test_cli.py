"""`referloop --help`, and `--help` on every command and sub-command, answers with its usage."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from referloop.cli import app

# Wide and plain, so that option names are never wrapped or coloured apart.
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `command` (a click command; Typer vendors its own click), as
    the words that reach it."""
    paths = [path]
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        paths += command_paths(sub, (*path, name))
    return paths


ALL_COMMANDS = command_paths(typer.main.get_command(app))


def test_the_tree_holds_the_commands_the_readme_names() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    for expected in (
        "serve",
        "worker",
        "migrate",
        "create-staff",
        "seed-demo",
        "outbox status",
        "audit verify",
    ):
        assert expected in names, sorted(names)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "referloop")
def test_help_exits_0_with_usage(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], prog_name="referloop")
    assert result.exit_code == 0, result.output
    assert f"Usage: {' '.join(('referloop', *path))} " in " ".join(result.output.split())


def test_serve_takes_workers_and_port() -> None:
    result = runner.invoke(app, ["serve", "--help"], prog_name="referloop")
    assert result.exit_code == 0, result.output
    assert "--workers" in result.output and "--port" in result.output


def test_the_installed_command_answers_help() -> None:
    """The real entry point, in a process of its own (imports, console script wiring)."""
    result = subprocess.run(
        [sys.executable, "-m", "referloop", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "serve" in result.stdout
