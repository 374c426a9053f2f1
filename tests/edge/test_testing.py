"""edge.testing over real sockets and real files: the ground station stores and reads back what a
node sends, in a thread or a process of its own; the loopback DAQ sends one series, counts drops,
waits at its gates, stops when told and raises what stopped it."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from astropy.table import Table

from edge.codec import encode_msgpack
from edge.errors import TwinError
from edge.link.wire import DATA, TAG, decode_ack
from edge.records import DownlinkRecord, FrameSummary, record_id
from edge.testing import (
    DETECTOR_ID,
    Ground,
    LoopbackDaq,
    every_family_twin_config,
    synthetic_frames,
    twin_source,
)
from firmware_bridge import Frame, FrameReceiver, SeriesEnd, SeriesStart
from firmware_bridge.rig import FrameSource

pytestmark = pytest.mark.timeout(120)


def _record(index: int) -> DownlinkRecord:
    return DownlinkRecord(
        record_id=record_id("test-node", "1", 3, index), node_id="test-node", detector_id=DETECTOR_ID,
        series_id="1", frame=3, index=index, frame_time="2026-03-20T03:00:00.000000Z",
        processed_time="2026-03-20T03:00:01.000000Z", x=10.0 + index, y=20.0, x_err=0.1, y_err=0.1,
        ra=None, dec=None, label="galaxy", confidence=0.7, probs={"star": 0.3, "galaxy": 0.7},
        entropy=0.61, aleatoric=0.5, epistemic=0.11, anomaly_score=1.0, anomaly_pvalue=0.3, snr=25.0,
        flux_e=5000.0, flux_err_e=200.0, a_px=2.0, b_px=1.5, theta_rad=0.0, flags=0, new=False,
        reasons=("uncertain",), priority=1.0, policy_version=1, engine_id="tiny:0.1", calibration_id="none")


def _summary() -> FrameSummary:
    return FrameSummary(node_id="test-node", detector_id=DETECTOR_ID, series_id="1", frame=3,
                        frame_time="2026-03-20T03:00:00.000000Z", detections=2, by_class={"galaxy": 2},
                        sent_by_reason={"uncertain": 2}, sent=2, suppressed=0, dropped_frames=(),
                        noise_model="header", timings_ms={"detect": 4.0}, engine_id="tiny:0.1",
                        policy_version=1)


def _downlink(ctx: zmq.Context[Any], address: str, messages: list[DownlinkRecord | FrameSummary]) -> list[str]:
    """Send messages to a ground as a node's downlink does; return the ids it acknowledged."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        for msg in messages:
            sock.send_multipart([TAG, DATA, encode_msgpack(msg)])
        acked: list[str] = []
        end = time.monotonic() + 30
        while len(acked) < len(messages) and time.monotonic() < end:
            if sock.poll(100):
                acked += decode_ack(sock.recv_multipart())
        return acked
    finally:
        sock.close()


@pytest.fixture
def receiver(ctx: zmq.Context[Any]) -> Iterator[FrameReceiver]:
    """A node's frame receiver bound on loopback at a free port."""
    rx = FrameReceiver("tcp://127.0.0.1:*", rcvhwm=4, context=ctx)
    yield rx
    rx.close()


def _messages_until_end(rx: FrameReceiver, timeout_ms: int = 30_000) -> list[Any]:
    """Every message up to and including the series end."""
    out: list[Any] = []
    while not out or not isinstance(out[-1], SeriesEnd):
        msg = rx.recv(timeout_ms=timeout_ms)
        assert msg is not None, f"no series end within {timeout_ms} ms; got {out}"
        out.append(msg)
    return out


@pytest.mark.parametrize("own_process", [False, True], ids=["thread", "process"])
def test_ground_stores_what_a_node_sends_and_reads_it_back(tmp_path: Path, ctx: zmq.Context[Any],
                                                           own_process: bool) -> None:
    """Records and a summary sent to the ground are acknowledged, read back decoded, written as a
    FITS table on close, and counted in the counters close() brings back, from a thread or a process."""
    records = [_record(0), _record(1)]
    with Ground(tmp_path / "ground", own_process=own_process) as ground:
        assert ground.address.startswith("tcp://127.0.0.1:")
        assert ground.records() == [] and ground.summaries() == [] and ground.counters is None
        acked = _downlink(ctx, ground.address, [*records, _summary()])
        assert acked == [r.id for r in records] + [_summary().id]
        assert ground.records() == records
        assert ground.summaries() == [_summary()]
    counters = ground.counters
    assert counters is not None
    assert (counters.records, counters.summaries, counters.duplicates, counters.fits_writes) == (2, 1, 0, 1)
    [fits] = (tmp_path / "ground").glob("downlink-*.fits")
    assert len(Table.read(fits)) == 2
    ground.close()  # a second close changes nothing
    assert ground.counters == counters


@pytest.mark.parametrize("own_process", [False, True], ids=["thread", "process"])
def test_a_ground_that_cannot_start_raises_in_the_caller(tmp_path: Path, own_process: bool) -> None:
    """When the receiver cannot open its folder, the constructor raises that error, even across processes."""
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    with pytest.raises(FileExistsError):
        Ground(taken, own_process=own_process)


def test_daq_sends_one_series_bit_exact_and_counts_it(receiver: FrameReceiver) -> None:
    """A list of frame sources arrives as one series: its start announces their number, every frame
    is bit-exact with its header fields, an empty start time is stamped on sending, and the end
    and the counters say every frame was sent."""
    frames = list(synthetic_frames(3, size_px=32, seed=1))
    frames[2] = FrameSource(frames[2].pixels, "", 12.5, {}, {"FILTER": "g"}, "no time")
    before = datetime.now(timezone.utc)
    daq = LoopbackDaq(receiver.endpoint, frames, series_id=5)
    messages = _messages_until_end(receiver)
    assert daq.join(30).frames_sent == 3 and daq.counters.frames_dropped == 0 and not daq.is_alive()
    start, *got, end = messages
    assert isinstance(start, SeriesStart) and (start.series_id, start.expected_frames) == (5, 3)
    assert [m.header.seq for m in got] == [0, 1, 2] and all(isinstance(m, Frame) for m in got)
    for sent, m in zip(frames, got, strict=True):
        assert np.array_equal(m.pixels, sent.pixels)
        assert (m.header.detector_id, m.header.exposure_s) == (DETECTOR_ID, sent.exposure_s)
        assert dict(m.header.keywords) == sent.keywords
    assert got[0].header.start_utc == frames[0].start_utc
    assert before <= got[2].header.start_time <= datetime.now(timezone.utc)   # stamped when sent
    assert (end.frames_sent, end.frames_dropped) == (3, 0)


def test_twin_frames_go_with_their_header_fields(receiver: FrameReceiver, small_twin: Any) -> None:
    """A twin frame is sent with its raw pixels, and its start, exposure, WCS and keywords from its FITS header."""
    from twin import simulate_frame

    tf = simulate_frame(small_twin, 0, 3)
    with LoopbackDaq(receiver.endpoint, [tf]) as daq:
        _, frame, _ = _messages_until_end(receiver)
        daq.join(30)
    source = twin_source(tf)
    assert np.array_equal(frame.pixels, tf.raw_adu)
    h = frame.header
    assert (h.start_utc, h.exposure_s) == ("2026-03-20T03:00:00.000000Z", float(tf.header["EXPTIME"]))
    assert dict(h.wcs) == source.wcs and h.wcs["CTYPE1"] == "RA---TAN"
    assert h.keywords["GAIN"] == tf.header["GAIN"] and h.keywords["FILTER"] == "r"


def test_gates_hold_frames_back_until_they_open(receiver: FrameReceiver) -> None:
    """With a gate before frame 1, frame 0 arrives, then nothing until the gate opens, then the rest."""
    gate = threading.Event()
    daq = LoopbackDaq(receiver.endpoint, list(synthetic_frames(3, size_px=32, seed=2)), gates={1: gate})
    first = [receiver.recv(timeout_ms=10_000) for _ in range(2)]
    assert isinstance(first[0], SeriesStart) and first[1].header.seq == 0
    assert receiver.recv(timeout_ms=500) is None
    gate.set()
    rest = _messages_until_end(receiver)
    assert [m.header.seq for m in rest[:-1]] == [1, 2]
    daq.join(30)


def test_a_failure_while_making_frames_is_raised_by_join(receiver: FrameReceiver) -> None:
    """An error raised by the frames' iterable in the DAQ's thread comes back to the caller from join() and close()."""
    def frames() -> Iterator[FrameSource]:
        yield from synthetic_frames(1, size_px=32, seed=3)
        raise TwinError("no second frame", where="test")

    daq = LoopbackDaq(receiver.endpoint, frames())
    with pytest.raises(TwinError, match="no second frame"):
        daq.join(30)
    with pytest.raises(TwinError):
        daq.close()


def test_close_stops_an_endless_paced_stream(receiver: FrameReceiver) -> None:
    """An endless stream at a set rate stops on close(): the series end still goes out, and it
    and the counters agree on the frames sent."""
    frames = itertools.cycle(list(synthetic_frames(2, size_px=32, seed=4)))
    with LoopbackDaq(receiver.endpoint, frames, sndhwm=4, send_timeout_ms=0, rate_hz=50) as daq:
        seen = 0
        while seen < 5:
            seen += isinstance(receiver.recv(timeout_ms=10_000), Frame)
    assert not daq.is_alive()
    end = _messages_until_end(receiver)[-1]
    assert end.frames_sent == daq.counters.frames_sent >= 5


def test_frames_a_node_never_takes_are_dropped_and_counted() -> None:
    """With nobody receiving, each frame waits at most the send timeout for room, then is dropped
    and counted with its sequence number: the DAQ never waits without bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daq = LoopbackDaq(f"tcp://127.0.0.1:{port}", list(synthetic_frames(4, size_px=32, seed=5)),
                      series_id=2, send_timeout_ms=100)
    counters = daq.join(30)
    assert counters.frames_dropped >= 1 and counters.frames_sent + counters.frames_dropped == 4
    assert [seq for _, seq in counters.dropped_seqs] == list(range(4 - counters.frames_dropped, 4))


def test_join_says_when_the_daq_is_still_sending(receiver: FrameReceiver) -> None:
    """join() with a timeout raises TimeoutError while frames still wait at a closed gate; close() then stops it."""
    gate = threading.Event()
    daq = LoopbackDaq(receiver.endpoint, list(synthetic_frames(2, size_px=32, seed=6)), gates={1: gate})
    with pytest.raises(TimeoutError, match="still sending"):
        daq.join(0.3)
    assert daq.close().frames_sent == 1 and not daq.is_alive()


def test_synthetic_frames_repeat_for_a_seed_and_the_demo_sky_has_every_family() -> None:
    """The same seed gives the same synthetic frames; the demo's twin config switches on every anomaly family."""
    from twin import ANOMALY_FAMILIES

    a, b = (list(synthetic_frames(2, size_px=48, seed=7)) for _ in range(2))
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b, strict=True))
    assert a[0].pixels.dtype == np.uint16 and not np.array_equal(a[0].pixels, a[1].pixels)
    config = every_family_twin_config(256)
    assert set(config.anomalies) == set(ANOMALY_FAMILIES) and config.detector.shape_px == (256, 256)
