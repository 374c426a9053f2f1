"""Progress bars of the long commands, on stderr, and the rule for when they show.

The library functions never draw: each long one takes ``progress(stage, advance, total)``, a plain
callback told that ``advance`` more units of ``total`` in ``stage`` are done (``advance`` 0 when
a stage starts). :class:`Bars` is that callback here: one tqdm bar per stage, named by the stage,
with the rate and the time left. Bars show only when stderr is a terminal and ``--quiet`` is not
given, so pipes, log files and tests see none. tqdm is imported only when a bar is drawn.
:func:`track` wraps a loop of a script (the benchmarks) in the same kind of bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sized
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def bars_wanted(quiet: bool, stream: TextIO | None = None) -> bool:
    """Whether progress bars should be drawn on ``stream`` (stderr by default)."""
    out = sys.stderr if stream is None else stream
    return not quiet and out.isatty()


class Bars:
    """A ``progress(stage, advance, total)`` callback that draws one bar per stage on stderr.

    A new stage, or a stage announced again (``advance`` 0), closes the previous bar (which stays
    on the screen) and opens a fresh one. Use it as a context manager, so the last bar is closed
    however the command ends.
    """

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._enabled = bars_wanted(quiet, self._stream)
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if not self._enabled:
            return
        if advance == 0 or stage != self._stage or self._bar is None:
            self._open(stage, total)
        elif total > 0 and total != self._bar.total:
            self._bar.total = total
        if advance:
            self._bar.update(advance)
        if 0 < total <= self._bar.n:
            self.close()    # done: the bar stays on the screen, and later log lines go below it

    def _open(self, stage: str, total: int) -> None:
        from tqdm import tqdm

        self.close()
        self._stage = stage
        columns, lines = _terminal_size(self._stream)
        sized = columns > 0 and lines > 0
        # follow the terminal's width as it changes; where it reports no size (a bare
        # pseudo-terminal) fix one, else tqdm draws an empty bar or hides it
        self._bar = tqdm(total=total if total > 0 else None, desc=stage, file=self._stream, leave=True,
                         dynamic_ncols=sized, ncols=None if sized else columns or 80,
                         nrows=None if sized else lines or 24)

    def close(self) -> None:
        """Close the bar of the current stage, if any."""
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def track(items: Iterable[T], stage: str, total: int | None = None, *, quiet: bool = False) -> Iterator[T]:
    """``items`` one by one, with a bar named ``stage`` on stderr when it is a terminal (for the
    loops of scripts: ``for i in track(range(n), "simulating frames")``). ``total`` defaults to
    ``len(items)``."""
    n = len(items) if total is None and isinstance(items, Sized) else total or 0
    with Bars(quiet=quiet) as bars:
        bars(stage, 0, n)
        for item in items:
            yield item
            bars(stage, 1, n)


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream``; 0 where it reports none."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


class BarSafeStream:
    """stderr for the log while bars may be drawn: each complete line is written with the bars
    cleared and then redrawn below it, so a log line never lands in the middle of a bar."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            tqdm_module = sys.modules.get("tqdm")
            if tqdm_module is None:     # no bar was ever drawn
                self._stream.write(lines + "\n")
            else:
                with tqdm_module.tqdm.external_write_mode(file=self._stream):
                    self._stream.write(lines + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()
