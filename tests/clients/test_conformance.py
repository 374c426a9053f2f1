"""`astro-edge rig conformance` and firmware_bridge.conformance: the C client and the Python sender
pass; a broken stream has each of its violations named with the offending message's index."""

from __future__ import annotations

import json
import socket
from typing import Any

import numpy as np
import pytest
import zmq

from edge.cli import main
from firmware_bridge.conformance import (
    CHECKS,
    ConformanceChecker,
    ConformanceListener,
    ConformanceReport,
)
from firmware_bridge.protocol import (
    Buffer,
    encode_frame,
    encode_heartbeat,
    encode_series_end,
    encode_series_start,
)
from firmware_bridge.sender import FrameSender

from .conftest import CClient, run_example

pytestmark = pytest.mark.timeout(120)

T0 = "2026-11-28T10:00:00.000Z"


def _frame(seq: int, *, series_id: int = 7, shape: tuple[int, ...] = (4, 5)) -> list[Buffer]:
    pixels = (np.arange(int(np.prod(shape))) % 251).astype("<u2").reshape(shape)
    return encode_frame(pixels, detector_id="cam0", series_id=series_id, seq=seq, start_utc=T0, exposure_s=1.0)


def _start(series_id: int = 7) -> list[Buffer]:
    return encode_series_start(detector_id="cam0", series_id=series_id, start_utc=T0)


def _end(sent: int, dropped: int, series_id: int = 7) -> list[Buffer]:
    return encode_series_end(detector_id="cam0", series_id=series_id, end_utc=T0, frames_sent=sent,
                             frames_dropped=dropped)


def _failures(report: ConformanceReport) -> dict[str, list[int | None]]:
    return {r.check.name: [v.index for v in r.violations] for r in report.results if not r.passed}


def _judge(*messages: list[Buffer]) -> ConformanceReport:
    checker = ConformanceChecker()
    for parts in messages:
        checker.feed(parts)
    return checker.report("end of test")


def test_the_c_client_passes_every_check(c_client: CClient) -> None:
    """The example DAQ's series (frames, heartbeats, series start and end) passes every check."""
    with ConformanceListener("tcp://127.0.0.1:*") as listener:
        stats = run_example(c_client, listener.endpoint, 100, "--send-timeout-ms", "20000",
                            on_idle=lambda: False)
        report = listener.run(count=112, timeout_s=20)
    assert stats["frames_sent"] == 100
    assert report.passed, report.to_text()
    assert report.counts == {"frames": 100, "series_starts": 1, "series_ends": 1, "heartbeats": 10, "rejected": 0}


def test_the_python_sender_passes_every_check() -> None:
    """FrameSender's series of 20 frames with a heartbeat passes every check."""
    with ConformanceListener("tcp://127.0.0.1:*") as listener, \
            FrameSender(listener.endpoint, detector_id="py-daq", sndhwm=100) as tx:
        assert tx.start_series(4, expected_frames=20)
        for i in range(20):
            assert tx.send_frame(np.full((8, 8), i, dtype="<u2"), exposure_s=1.0)
        assert tx.heartbeat() and tx.end_series()
        report = listener.run(count=23, timeout_s=20)
    assert report.passed, report.to_text()
    assert report.counts["frames"] == 20 and report.stopped == "23 messages"


def test_gaps_a_daq_reports_as_dropped_pass_and_unreported_ones_fail() -> None:
    """Frames 0, 1, 3 with a series end of 3 sent and 1 dropped conform; the same frames with a
    series end that reports no drop fail the gap and the accounting at the right messages, and so
    do sequence numbers missing at a series' tail."""
    frames = [_frame(0), _frame(1), _frame(3)]
    honest = _judge(_start(), *frames, _end(3, 1))
    assert honest.passed, honest.to_text()
    assert "1 missing, all reported dropped" in honest.to_text()
    silent = _judge(_start(), *frames, _end(3, 0))
    assert _failures(silent) == {"seq.gap": [3], "series.accounting": [4]}
    assert _judge(_start(8), _frame(0, series_id=8), _end(1, 2, series_id=8)).passed
    lost_tail = _judge(_start(), _frame(0), _end(1, 0), _start(8), _frame(0, series_id=8), _end(3, 0, series_id=8))
    assert _failures(lost_tail) == {"series.accounting": [5], "seq.tail_gap": [5]}


def test_each_sequence_and_series_rule_names_its_offending_message() -> None:
    """A frame without a series start, a repeated seq, a 3-D frame, falling heartbeat counts and a
    series left open each fail their own check, at their own message."""
    beat = encode_heartbeat(detector_id="cam0", time_utc=T0, frames_sent=5, frames_dropped=0)
    fewer = encode_heartbeat(detector_id="cam0", time_utc=T0, frames_sent=4, frames_dropped=0)
    report = _judge(_frame(0), _frame(1), _frame(1), beat, fewer, _frame(2, shape=(2, 2, 2)))
    assert _failures(report) == {"series.start": [0], "seq.order": [2], "heartbeat.cumulative": [4],
                                 "image_2d": [5], "series.end": [5]}


def test_no_message_at_all_fails_the_stream_check() -> None:
    """A listener that hears nothing within its timeout reports the stream check failed."""
    with ConformanceListener("tcp://127.0.0.1:*") as listener:
        report = listener.run(timeout_s=0.2)
    assert _failures(report) == {"stream": [None]}
    assert report.stopped == "no message for 0.2 s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_broken_stream_has_every_violation_named_with_its_index(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the command: a wrong checksum, a skipped seq, a bad header field and an oversize
    frame each fail their check at the index of the message that broke it; the exit code is 1."""
    bad_checksum = [bytes(p) for p in _frame(2)]
    fields = json.loads(bad_checksum[0])
    bad_checksum[0] = json.dumps({**fields, "checksum": "0" * 16}).encode()
    bad_field = [bytes(p) for p in _frame(5)]
    bad_field[0] = json.dumps({**json.loads(bad_field[0]), "exposure_s": -1.0}).encode()
    oversize = _frame(6, shape=(1024, 1024))             # 2 MiB of pixels, over a 1 MiB limit
    stream = [_start(), _frame(0), _frame(1), bad_checksum, _frame(4), bad_field, oversize, _frame(7),
              _end(8, 0)]
    address = f"tcp://127.0.0.1:{_free_port()}"
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.sndhwm = 100
    push.connect(address)          # queued here until the command binds
    try:
        for parts in stream:
            push.send_multipart(parts)
        code = main(["--log-level", "warning", "rig", "conformance", "--bind", address, "--count",
                     str(len(stream)), "--timeout-s", "20", "--max-frame-bytes", str(1 << 20), "--json"])
    finally:
        push.close()
        ctx.term()
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["passed"] is False
    failed = {c["check"]: c["violations"] for c in out["checks"] if not c["passed"]}
    assert {name: [v["index"] for v in vs] for name, vs in failed.items()} == {
        "checksum": [3], "header_field": [5, 6], "seq.gap": [4, 7], "series.accounting": [8]}
    assert "xxh3-64" in failed["checksum"][0]["detail"]
    assert "exposure_s" in failed["header_field"][0]["detail"]
    assert "limit" in failed["header_field"][1]["detail"]
    assert "seq 2-3" in failed["seq.gap"][0]["detail"]
    assert len(out["checks"]) == len(CHECKS)


def test_the_text_report_says_pass_or_fail_per_check_and_exits_0_when_all_pass(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command prints one PASS line per check and a PASS result for a clean stream, exit 0."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    with FrameSender(address, sndhwm=100) as tx:
        tx.start_series(1)
        tx.send_frame(np.zeros((4, 4), dtype="<u2"))
        tx.end_series()
        code = main(["--log-level", "warning", "rig", "conformance", "--bind", address, "--count", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert sum(line.startswith("PASS ") for line in lines) == len(CHECKS)
    assert lines[-1] == f"result: PASS ({len(CHECKS)} of {len(CHECKS)} checks passed)"
