"""Progress bars of the long commands: drawn on a terminal only, silenced by --quiet, one per stage,
and log lines written above them rather than through them."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.cli.progress import Bars, BarSafeStream, bars_wanted, track

TWIN_FRAMES = ["twin", "frames", "--n", "2", "--size", "64"]


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


def test_a_command_whose_stderr_is_no_terminal_draws_no_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under a pipe or a log file (here: pytest's capture) `twin frames` writes its frames and no bar."""
    assert main([*TWIN_FRAMES, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "writing frames" not in err and "%|" not in err
    assert (tmp_path / "frame_0001.fits").is_file()


def test_on_a_terminal_the_command_draws_a_bar_and_quiet_silences_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With stderr a terminal `twin frames` draws a bar that names its work and counts the frames;
    `astro-edge --quiet` draws none."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--log-level", "warning", *TWIN_FRAMES, "--out", str(tmp_path / "a")]) == 0
    assert "writing frames" in terminal.getvalue() and "2/2" in terminal.getvalue()

    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["--quiet", "--log-level", "warning", *TWIN_FRAMES, "--out", str(tmp_path / "b")]) == 0
    assert "writing frames" not in quiet.getvalue()


def test_bars_are_wanted_only_on_a_terminal_without_quiet() -> None:
    """The rule in one place: a terminal, and no --quiet."""
    assert bars_wanted(False, Terminal())
    assert not bars_wanted(True, Terminal())
    assert not bars_wanted(False, io.StringIO())


def test_each_stage_gets_its_own_bar_and_a_restarted_stage_a_fresh_one() -> None:
    """A new stage closes the previous bar and opens one under its own name; a stage announced again
    (advance 0) starts again from zero instead of running past its total."""
    terminal = Terminal()
    with Bars(stream=terminal) as bars:
        bars("simulating frames", 0, 3)
        for _ in range(3):
            bars("simulating frames", 1, 3)
        bars("training", 0, 4)
        bars("training", 4, 4)
        bars("training", 0, 4)
        bars("training", 2, 4)
    out = terminal.getvalue()
    assert "simulating frames: 100%" in out and "3/3" in out
    assert out.count("training: 100%") == 1 and "2/4" in out and "5/4" not in out and "6/4" not in out


def test_a_log_line_written_during_a_bar_lands_on_a_line_of_its_own() -> None:
    """The log's stream clears the bar, writes the whole line, and lets the bar be drawn again below it."""
    terminal = Terminal()
    log_stream = BarSafeStream(terminal)
    with Bars(stream=terminal) as bars:
        bars("writing frames", 0, 2)
        print("twin.frame_written index=0", file=log_stream, flush=True)
        bars("writing frames", 2, 2)
    lines = [line.rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n")]
    assert "twin.frame_written index=0" in lines


def test_track_yields_every_item_and_draws_its_loop_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script's loop wrapped in `track` sees every item in order, with a bar counting them on a
    terminal and none elsewhere."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(track(range(3), "rounds")) == [0, 1, 2]
    assert "rounds: 100%" in terminal.getvalue() and "3/3" in terminal.getvalue()
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert list(track(iter("ab"), "letters", total=2)) == ["a", "b"]
    assert pipe.getvalue() == ""
