"""Protocol conformance: does a DAQ's stream keep the rules of docs/protocol.md?

``ConformanceChecker`` judges a stream message by message, in arrival order: each message against
what a receiver rejects (section 3), by decoding it with ``decode_message``, the receiver's own
code; frames against the sequence rules of section 2.7, with ``SequenceTracker``, the receiver's own
gap finder, and the series accounting of 2.5; frames against what the node takes (2-D images).
It is pure (no sockets, clock or logging) and knows nothing the codec does not: a rule changes in
``protocol``, and the checker follows. ``ConformanceListener`` is the shell: it binds a PULL
socket with the receiver's options and feeds the checker until a message count or a silence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import zmq

from edge.errors import ProtocolError
from edge.log import get_logger
from firmware_bridge.protocol import (
    MAX_COMPRESSION_RATIO,
    MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    Frame,
    Gap,
    Heartbeat,
    SequenceTracker,
    SeriesEnd,
    SeriesStart,
    decode_message,
)
from firmware_bridge.sockets import open_socket

log = get_logger(__name__)

#: violations kept per check (the count stays exact); series followed at once
MAX_KEPT = 100
MAX_SERIES = 4096


@dataclass(frozen=True)
class Check:
    """One rule of the protocol: a stable name (the receiver's ``reason`` for section 3)."""

    name: str
    section: str
    rule: str


CHECKS: tuple[Check, ...] = (
    Check("stream", "1", "at least one message arrives"),
    Check("part_count", "3", "1 or 2 parts: 2 for a frame, 1 for the other messages"),
    Check("header_decode", "3", "a header of at most 65 536 bytes of UTF-8 JSON (no NaN/Infinity), an object"),
    Check("unsupported_version", "3", "an htype of a known kind and major version 1"),
    Check("header_field", "3", "every field present when required, of its JSON type and in its range; "
                               "the frame within the receiver's size limit"),
    Check("payload_size", "3", "an uncompressed payload of prod(shape) * bytes_per_pixel; a compressed one "
                               "within its bound"),
    Check("compression_ratio", "3", "a compressed frame over 1 MiB declares at most max_compression_ratio "
                                    "pixel bytes per payload byte"),
    Check("checksum", "3", "the XXH3-64 of the payload as sent"),
    Check("decompression", "3", "the payload decompresses to exactly the pixel bytes"),
    Check("image_2d", "2.3", "frames are 2-D images [ny, nx] (the node's calibration takes no other shape)"),
    Check("series.start", "2.5", "a series' frames and its series end follow its series start"),
    Check("seq.order", "2.7", "seq never goes back within a series (no duplicate, no reordering)"),
    Check("seq.gap", "2.7", "sequence numbers missing inside a series are frames its series end reports dropped"),
    Check("seq.tail_gap", "2.7", "sequence numbers missing at a series' tail are frames its series end "
                                 "reports dropped"),
    Check("series.accounting", "2.5", "at series end, frames_sent = the frames that arrived and "
                                      "frames_sent + frames_dropped = the sequence numbers used"),
    Check("series.end", "2.5", "every series is closed by its series end before the stream stops"),
    Check("heartbeat.cumulative", "2.5", "a DAQ's heartbeat counts are cumulative: they never go down"),
)
_BY_NAME = {c.name: c for c in CHECKS}


@dataclass(frozen=True)
class Violation:
    """A broken rule: the 0-based index of the offending message (None: the stream as a whole)."""

    index: int | None
    detail: str


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: its first violations (``n_violations`` counts them all) and a note."""

    check: Check
    violations: tuple[Violation, ...]
    n_violations: int
    note: str = ""

    @property
    def passed(self) -> bool:
        """True when no message broke the rule."""
        return self.n_violations == 0


@dataclass(frozen=True)
class ConformanceReport:
    """Every check's verdict over one stream, and what the stream held."""

    messages: int
    counts: dict[str, int]
    results: tuple[CheckResult, ...]
    stopped: str

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(r.passed for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        """A plain form for JSON."""
        return {"passed": self.passed, "messages": self.messages, "counts": dict(self.counts),
                "stopped": self.stopped,
                "checks": [{"check": r.check.name, "section": r.check.section, "rule": r.check.rule,
                            "passed": r.passed, "n_violations": r.n_violations, "note": r.note,
                            "violations": [{"index": v.index, "detail": v.detail} for v in r.violations]}
                           for r in self.results]}

    def to_text(self) -> str:
        """The report as lines a person reads: one per check, each violation below its check."""
        counts = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in self.counts.items())
        lines = [f"astro-edge frame protocol 1.0 conformance: {self.messages} messages ({counts}); "
                 f"stopped: {self.stopped}"]
        for r in self.results:
            lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.check.section:<4} {r.check.name:<21} "
                         f"{r.check.rule}{f' ({r.note})' if r.note else ''}")
            for v in r.violations:
                where = "stream" if v.index is None else f"message {v.index}"
                lines.append(f"        {where}: {v.detail}")
            if r.n_violations > len(r.violations):
                lines.append(f"        ... and {r.n_violations - len(r.violations)} more")
        failed = sum(not r.passed for r in self.results)
        lines.append(f"result: {'PASS' if self.passed else 'FAIL'} "
                     f"({len(self.results) - failed} of {len(self.results)} checks passed)")
        return "\n".join(lines)


@dataclass
class _Series:
    """What the checker knows of one (detector_id, series_id)."""

    started: bool
    frames: int = 0
    last_seq: int | None = None
    last_index: int = 0
    gaps: list[tuple[int, Gap]] = field(default_factory=list)


class ConformanceChecker:
    """Judge a stream message by message (``feed``), then ``report``; no I/O."""

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_compression_ratio = max_compression_ratio
        self.messages = 0
        self.counts = {"frames": 0, "series_starts": 0, "series_ends": 0, "heartbeats": 0, "rejected": 0}
        self._violations: dict[str, list[Violation]] = {c.name: [] for c in CHECKS}
        self._n_violations: dict[str, int] = {c.name: 0 for c in CHECKS}
        self._explained_missing = 0
        self._tracker = SequenceTracker(max_series=MAX_SERIES)
        self._series: dict[tuple[str, int], _Series] = {}
        self._heartbeats: dict[str, tuple[int, int]] = {}

    def feed(self, parts: Sequence[Any]) -> None:
        """Judge the next message of the stream (its parts as received)."""
        index = self.messages
        self.messages += 1
        try:
            message = decode_message(parts, max_frame_bytes=self.max_frame_bytes,
                                     max_compression_ratio=self.max_compression_ratio)
        except ProtocolError as exc:
            self.counts["rejected"] += 1
            self._violate(exc.reason if exc.reason in _BY_NAME else "header_field", index, str(exc))
            return
        if isinstance(message, Frame):
            self._frame(index, message)
        elif isinstance(message, SeriesStart):
            self._series_start(index, message)
        elif isinstance(message, SeriesEnd):
            self._series_end(index, message)
        elif isinstance(message, Heartbeat):
            self._heartbeat(index, message)

    def _frame(self, index: int, frame: Frame) -> None:
        self.counts["frames"] += 1
        h = frame.header
        if len(h.shape) != 2:
            self._violate("image_2d", index, f"shape {list(h.shape)} has {len(h.shape)} axes; the node "
                                             "rejects it (calibration_input)")
        key = (h.detector_id, h.series_id)
        series = self._series.get(key)
        if series is None:
            series = self._open(key, started=False)
            self._violate("series.start", index, f"frame seq {h.seq} of series {h.series_id} of "
                                                 f"{h.detector_id!r} came without a series start")
        before = self._tracker.out_of_order
        gap = self._tracker.observe(h.detector_id, h.series_id, h.seq)
        if self._tracker.out_of_order != before:
            self._violate("seq.order", index, f"seq {h.seq} of series {h.series_id} after seq "
                                              f"{series.last_seq}")
        if gap is not None:
            series.gaps.append((index, gap))
        series.frames += 1
        series.last_seq = h.seq if series.last_seq is None else max(series.last_seq, h.seq)
        series.last_index = index

    def _series_start(self, index: int, start: SeriesStart) -> None:
        self.counts["series_starts"] += 1
        key = (start.detector_id, start.series_id)
        if key in self._series:
            self._close_unended(key, f"series {start.series_id} of {start.detector_id!r} started again "
                                     f"at message {index} before its series end")
        self._tracker.start(*key)
        self._open(key, started=True).last_index = index

    def _series_end(self, index: int, end: SeriesEnd) -> None:
        self.counts["series_ends"] += 1
        key = (end.detector_id, end.series_id)
        series = self._series.pop(key, None)
        if series is None:
            series = _Series(started=False)
            self._violate("series.start", index, f"series end of series {end.series_id} of "
                                                 f"{end.detector_id!r}, which never started")
        tail = self._tracker.end(*key, end.frames_sent + end.frames_dropped)
        missing = sum(g.n_missing for _, g in series.gaps) + (tail.n_missing if tail else 0)
        if series.frames == end.frames_sent and missing == end.frames_dropped:
            self._explained_missing += missing
            return
        self._violate("series.accounting", index,
                      f"series {end.series_id}: frames_sent {end.frames_sent}, {series.frames} frames arrived; "
                      f"frames_dropped {end.frames_dropped}, {missing} sequence numbers missing")
        self._unexplained_gaps(series, why="the series end does not account for them")
        if tail is not None:
            self._violate("seq.tail_gap", index, f"seq {tail.first_missing}-{tail.last_missing} "
                                                 f"({tail.n_missing}) of series {end.series_id} never arrived "
                                                 f"and the series end does not account for them")

    def _heartbeat(self, index: int, beat: Heartbeat) -> None:
        self.counts["heartbeats"] += 1
        previous = self._heartbeats.get(beat.detector_id)
        if previous is not None and (beat.frames_sent < previous[0] or beat.frames_dropped < previous[1]):
            self._violate("heartbeat.cumulative", index,
                          f"frames_sent/dropped {beat.frames_sent}/{beat.frames_dropped} after "
                          f"{previous[0]}/{previous[1]}")
        self._heartbeats[beat.detector_id] = (beat.frames_sent, beat.frames_dropped)

    def report(self, stopped: str) -> ConformanceReport:
        """The verdict of every check over the stream so far; series still open count as unended."""
        for key in list(self._series):
            self._close_unended(key, f"series {key[1]} of {key[0]!r} has no series end ({stopped})")
        if self.messages == 0 and not self._n_violations["stream"]:
            self._violate("stream", None, f"no message arrived ({stopped})")
        notes = {"seq.gap": f"{self._explained_missing} missing, all reported dropped"
                 if self._explained_missing else ""}
        results = tuple(CheckResult(c, tuple(self._violations[c.name]), self._n_violations[c.name],
                                    notes.get(c.name, "")) for c in CHECKS)
        return ConformanceReport(self.messages, dict(self.counts), results, stopped)

    def _open(self, key: tuple[str, int], *, started: bool) -> _Series:
        series = self._series[key] = _Series(started=started)
        while len(self._series) > MAX_SERIES:   # forget the oldest series
            del self._series[next(iter(self._series))]
        return series

    def _close_unended(self, key: tuple[str, int], detail: str) -> None:
        series = self._series.pop(key)
        self._tracker.end(*key, 0)
        self._violate("series.end", series.last_index, detail)
        self._unexplained_gaps(series, why="no series end reports them dropped")

    def _unexplained_gaps(self, series: _Series, *, why: str) -> None:
        for index, gap in series.gaps:
            self._violate("seq.gap", index, f"seq {gap.first_missing}-{gap.last_missing} ({gap.n_missing}) "
                                            f"of series {gap.series_id} missing before this frame; {why}")

    def _violate(self, check: str, index: int | None, detail: str) -> None:
        self._n_violations[check] += 1
        if len(self._violations[check]) < MAX_KEPT:
            self._violations[check].append(Violation(index, detail))


class ConformanceListener:
    """Bind (or connect) a PULL socket with the receiver's options and judge what arrives."""

    def __init__(self, address: str, *, bind: bool = True, max_frame_bytes: int = MAX_FRAME_BYTES,
                 max_compression_ratio: float = MAX_COMPRESSION_RATIO,
                 context: zmq.Context[Any] | None = None) -> None:
        self.checker = ConformanceChecker(max_frame_bytes=max_frame_bytes,
                                          max_compression_ratio=max_compression_ratio)
        # as FrameReceiver: libzmq drops a peer whose message part no valid message could have
        max_part = max(2 * max_frame_bytes, 1 << 16, MAX_HEADER_BYTES)
        # a deep queue: the listener only judges, so a DAQ is never slowed by it
        self._sock, self.endpoint = open_socket(context or zmq.Context.instance(), zmq.PULL, address,
                                                bind=bind, hwm=1000, max_message_bytes=max_part)
        log.info("conformance.listening", address=self.endpoint, bind=bind, max_frame_bytes=max_frame_bytes)

    def run(self, *, count: int | None = None, timeout_s: float = 10.0) -> ConformanceReport:
        """Judge messages until ``count`` have arrived or none came for ``timeout_s``; the report."""
        last = time.monotonic()
        while count is None or self.checker.messages < count:
            left_s = timeout_s - (time.monotonic() - last)
            if left_s <= 0:
                return self.report(f"no message for {timeout_s:g} s")
            if self._sock.poll(max(1, math.ceil(left_s * 1000)), zmq.POLLIN):
                self.checker.feed(self._sock.recv_multipart(copy=False))
                last = time.monotonic()
        return self.report(f"{count} messages")

    def report(self, stopped: str) -> ConformanceReport:
        """The report so far (e.g. after an interruption), logged once."""
        report = self.checker.report(stopped)
        log.info("conformance.finished", passed=report.passed, messages=report.messages, stopped=stopped,
                 failed=[r.check.name for r in report.results if not r.passed])
        return report

    def close(self) -> None:
        """Close the socket."""
        if not self._sock.closed:
            self._sock.close(linger=0)

    def __enter__(self) -> ConformanceListener:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["CHECKS", "Check", "CheckResult", "ConformanceChecker", "ConformanceListener",
           "ConformanceReport", "Violation"]
