"""The demo: frames cross the protocol over loopback with injected faults caught; a whole node on
loopback delivers every record and prints its scoreboard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_node_demo_delivers_every_record_and_prints_its_scoreboard(tmp_path: Path, capsys: Any) -> None:
    """A small node demo exits 0 with every spooled record at the ground, the counters conserved,
    the DAQ's and the ground's counters in scoreboard.json, and the scoreboard printed."""
    from edge.cli import main

    assert main(["--log-json", "demo", "--n", "2", "--size", "256", "--workers", "1", "--out", str(tmp_path)]) == 0
    board = json.loads((tmp_path / "scoreboard.json").read_text())
    assert board["frames_processed"] == 2 and board["summaries_at_ground"] == 2 and board["conserved"]
    assert board["records_lost"] == 0 and board["records_unique"] == board["records_spooled"]
    assert board["ground"]["records"] == board["records_spooled"] and board["ground"]["summaries"] == 2
    assert board["rig"]["sender"]["frames_sent"] == 2 and "rig_error" not in board["rig"]
    out = capsys.readouterr().out
    assert out.startswith("astro-edge demo: scoreboard\n  frames            2/2 processed")
    assert f"records           {board['records_spooled']} spooled" in out and f"output            {tmp_path}" in out
    cd = board["close_double_blends"]
    assert cd["n_blend"] <= cd["n_sent"] <= cd["n_truth"]
    assert f"close doubles     {cd['n_sent']}/{cd['n_truth']} at the ground" in out
