"""The demo: frames cross the protocol over loopback, and injected faults show up as caught."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from edge.cli.demo import register
from edge.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def _demo(argv: list[str]) -> int:
    """Run ``astro-edge demo ...`` through the demo's own parser."""
    parser = argparse.ArgumentParser(prog="astro-edge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", "--protocol-only", *argv])
    return int(args.func(args))


@pytest.mark.parametrize("source", ["--synthetic", "twin"])
def test_demo_reports_the_injected_gap_and_rejection(source: str, capsys: Any) -> None:
    """With faults on, the demo reports one checksum rejection, the gap 1-2, and every good frame intact."""
    argv = ["--n", "6", "--size", "64"] + ([source] if source.startswith("--") else [])
    assert _demo(argv) == 0
    out = capsys.readouterr().out
    assert ("synthetic frames" in out) == (source == "--synthetic")
    assert "rejected 1 {'checksum': 1}, gaps 1 (missing 1-2)" in out
    assert "4 of 4 good frames arrived bit-exact" in out


def test_demo_without_faults_delivers_every_frame(capsys: Any) -> None:
    """With --no-faults and lz4, all frames arrive bit-exact with nothing rejected or missing."""
    assert _demo(["--n", "4", "--size", "96", "--synthetic", "--no-faults", "--compression", "lz4"]) == 0
    out = capsys.readouterr().out
    assert "accepted 6, rejected 0, gaps 0 (missing none)" in out
    assert "4 of 4 good frames arrived bit-exact" in out


def test_demo_refuses_a_bad_size() -> None:
    """A frame size outside [16, 8192] is a ConfigError, not a crash."""
    with pytest.raises(ConfigError, match="--size"):
        _demo(["--size", "4"])
