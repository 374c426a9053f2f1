"""Every ``astro-edge`` help page, walked from the real parser: descriptions, help lines, placeholders,
and a ``--help`` that imports none of the heavy libraries."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from edge.cli import build_parser, main

#: what a command's --help must never import: each costs seconds, or needs hardware
HEAVY = ("torch", "onnxruntime", "astropy", "zmq")
#: placeholders: upper case, naming the kind of value (FILE, DIR, N, S, ADDRESS, KEY=VALUE, N,N,N ...)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(=[A-Z0-9_]+)?(,[A-Z0-9_]+)*(,\.\.\.)?$")


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and every subcommand's parser below it, depth first, with the words that reach each."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Each subcommand a parser lists, with its one-line help."""
    return {choice.dest: choice.help
            for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for choice in action._choices_actions}


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's own arguments, without --help, --version and the subcommand slot."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))]


ALL = list(parsers(build_parser()))
IDS = [" ".join(path) or "astro-edge" for path, _ in ALL]


def words(text: str) -> str:
    return " ".join(text.split())


def help_text(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``astro-edge PATH --help`` prints; it must exit 0."""
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_the_walk_reaches_every_group_and_subcommand() -> None:
    """The walk finds the root, each command group and each subcommand under them."""
    paths = {path for path, _ in ALL}
    assert {(), ("engines",), ("engines", "train"), ("twin", "frames"), ("calib", "build"),
            ("link", "dictionary"), ("keys", "new"), ("ctl",), ("run",), ("process",), ("ground",),
            ("rig", "score")} <= paths


@pytest.mark.parametrize(("path", "parser"), ALL, ids=IDS)
def test_help_shows_a_description_and_a_help_line_for_each_subcommand(
        path: tuple[str, ...], parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--help`` exits 0 and shows the command's description, and every subcommand it lists has a
    one-line help shown beside its name."""
    monkeypatch.setenv("COLUMNS", "400")    # one line per entry, so each can be found whole
    out = help_text(path, capsys)
    assert parser.description and parser.description.strip(), f"astro-edge {' '.join(path)} has no description"
    assert words(parser.description) in words(out)
    for name, line in subcommand_help(parser).items():
        assert line and line.strip(), f"astro-edge {' '.join((*path, name))} has no help line"
        assert "\n" not in line.strip()
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(line)}\s*$", out, re.M), \
            f"`{name}  {line}` is not listed in astro-edge {' '.join(path)} --help"


@pytest.mark.parametrize(("path", "parser"), ALL, ids=IDS)
def test_every_argument_says_what_it_is_with_a_placeholder_naming_its_kind(
        path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    """Each argument has a help text; each one that takes a value either lists its choices or has an
    upper-case placeholder of its own (FILE, DIR, N, S ...), not argparse's copy of the option name."""
    for action in arguments(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
            f"{name} of astro-edge {' '.join(path)} has no help"
        if action.nargs == 0 or action.choices is not None:
            continue
        assert isinstance(action.metavar, str), \
            f"{name} of astro-edge {' '.join(path)} shows argparse's default placeholder {action.dest.upper()}"
        assert PLACEHOLDER.match(action.metavar), f"{name}: placeholder {action.metavar!r} is not in the house style"


def test_help_and_every_subcommand_help_import_no_heavy_library() -> None:
    """``python -m edge.cli --help``, and every command's --help after it, leave torch, onnxruntime,
    astropy and pyzmq unimported, so the command line answers at once."""
    paths = [list(path) for path, _ in ALL]
    script = f"""
import contextlib, io, json, runpy, sys
for path in {paths!r}:
    sys.argv = ["astro-edge", *path, "--help"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        runpy.run_module("edge.cli", run_name="__main__", alter_sys=True)
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
