"""The astro-edge command: help, version, and typed errors as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.cli import build_parser, main


def test_help_lists_the_subcommands() -> None:
    """--help works and names every registered subcommand."""
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--help"], capture_output=True, text=True, check=True)
    assert "astro-edge" in out.stdout
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        assert name in out.stdout


def test_unknown_subcommand_exits_2() -> None:
    """argparse refuses an unknown subcommand with exit code 2."""
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
