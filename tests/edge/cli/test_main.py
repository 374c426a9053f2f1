"""The astro-edge command: help, version, and typed errors as one line with exit code 2."""

from __future__ import annotations

import json
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


def test_a_spool_the_node_cannot_open_exits_74_and_a_bad_config_2(tmp_path) -> None:
    """Exit codes by cause: a spool path inside a file (no disk can hold it) ends `astro-edge run`
    with 74 (EX_IOERR), which systemd restarts; a bad config with 2, which it does not."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool's folder should be")
    config = tmp_path / "node.toml"
    config.write_text(f'[spool]\npath = "{blocker / "spool.sqlite"}"\n[receive]\naddress = "tcp://127.0.0.1:0"\n')
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 74, out.stderr
    assert "cannot open the spool" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nworkers = 0\n")
    assert subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60).returncode == 2


def test_an_error_nobody_foresaw_exits_70_with_its_traceback_logged(monkeypatch, capsys) -> None:
    """An exception that is not one of the typed errors is the project's bug: one line on stderr,
    the traceback in the log (command.crashed) and exit code 70 (EX_SOFTWARE)."""
    import edge.cli.keys as keys_cli

    def broken(args) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(keys_cli, "_new", broken)
    code = main(["--log-json", "keys", "new", "--out", "x", "--name", "y"])
    err = capsys.readouterr().err
    assert code == 70
    assert "internal error ZeroDivisionError: division by zero" in err
    (event,) = [json.loads(line) for line in err.splitlines() if '"command.crashed"' in line]
    assert "Traceback" in event["exception"] and "ZeroDivisionError" in event["exception"]
