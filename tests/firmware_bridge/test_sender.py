"""FrameSender: it never blocks, and every frame it could not queue is counted with its seq."""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
import pytest
import zmq

from edge.errors import TransportError
from firmware_bridge import Frame, FrameReceiver, FrameSender, SeriesEnd, SeriesStart

pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_absent_node_drops_and_counts_without_blocking(context: zmq.Context[Any]) -> None:
    """With no node listening, sends return at once; all beyond the high-water mark are dropped."""
    frame = np.zeros((64, 64), np.uint16)
    with FrameSender(f"tcp://127.0.0.1:{_free_port()}", sndhwm=2, context=context) as tx:
        tx.start_series(3)
        results = [tx.send_frame(frame) for _ in range(20)]
    c = tx.counters
    assert c.frames_sent + c.frames_dropped == 20
    assert c.frames_dropped >= 17  # the series start and at most two frames fit the queue
    assert results.count(False) == c.frames_dropped
    dropped = [seq for seq, ok in enumerate(results) if not ok]
    assert list(c.dropped_seqs) == [(3, seq) for seq in dropped]


def test_slow_node_drops_are_the_gaps_it_sees(context: zmq.Context[Any]) -> None:
    """A node that does not read fills the queues; what the sender dropped is exactly what the
    node then reports missing, and the series end closes the count."""
    frame = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=1, context=context) as rx, \
            FrameSender(rx.endpoint, sndhwm=1, context=context) as tx:
        tx.start_series(8)
        results = [tx.send_frame(frame) for _ in range(200)]
        assert tx.counters.frames_dropped > 0 and tx.counters.frames_sent + tx.counters.frames_dropped == 200
        seen = []
        while (msg := rx.recv(300)) is not None:
            if isinstance(msg, Frame):
                seen.append(msg.header.seq)
        tx.send_timeout_ms = 2000
        assert tx.end_series()
        end = rx.recv(2000)
    assert isinstance(end, SeriesEnd) and end.frames_dropped == tx.counters.frames_dropped
    assert seen == [seq for seq, ok in enumerate(results) if ok]
    missing = {s for g in rx.gaps for s in range(g.first_missing, g.last_missing + 1)}
    assert missing == {seq for _, seq in tx.counters.dropped_seqs}
    assert rx.counters.frames_missing == tx.counters.frames_dropped


def test_series_and_heartbeat_messages_arrive_in_order(receiver: FrameReceiver,
                                                       context: zmq.Context[Any]) -> None:
    """start_series, frames with auto seq, heartbeat and end_series arrive as typed messages."""
    with FrameSender(receiver.endpoint, sndhwm=16, send_timeout_ms=2000, context=context,
                     detector_id="cam7") as tx:
        assert tx.start_series(12, expected_frames=2)
        assert tx.send_frame(np.ones((4, 4), np.float32))
        assert tx.heartbeat()
        assert tx.send_frame(np.ones((4, 4), np.float32))
        assert tx.end_series()
        got = [receiver.recv(2000) for _ in range(5)]
    kinds = [type(m).__name__ for m in got]
    assert kinds == ["SeriesStart", "Frame", "Heartbeat", "Frame", "SeriesEnd"]
    assert isinstance(got[0], SeriesStart) and got[0].series_id == 12
    assert [m.header.seq for m in got if isinstance(m, Frame)] == [0, 1]
    assert all(m.detector_id == "cam7" for m in got if not isinstance(m, Frame))
    assert receiver.counters.gaps == 0


def test_bind_failure_is_a_transport_error(context: zmq.Context[Any]) -> None:
    """Binding to an address already taken raises TransportError naming the address."""
    with FrameReceiver("tcp://127.0.0.1:*", context=context) as rx, \
            pytest.raises(TransportError, match="127.0.0.1"):
        FrameSender(rx.endpoint, bind=True, context=context)


def test_roles_can_be_flipped_daq_binds_node_connects(context: zmq.Context[Any]) -> None:
    """With bind=True on the sender and bind=False on the receiver, frames flow the same way."""
    with FrameSender("tcp://127.0.0.1:*", bind=True, send_timeout_ms=2000, context=context) as tx, \
            FrameReceiver(tx.endpoint, bind=False, context=context) as rx:
        assert tx.send_frame(np.full((3, 3), 7, np.int16), seq=0)
        msg = rx.recv(2000)
    assert isinstance(msg, Frame) and int(msg.pixels.sum()) == 63


def test_a_series_end_waits_for_room_and_what_was_queued_at_close_still_arrives(context: zmq.Context[Any]) -> None:
    """docs/protocol.md 4.1 and 4.2: a node that stops reading for a moment fills the queues; the
    series end waits for room (within control_retry_ms) instead of being dropped, and closing
    straight after it loses nothing that was queued: the node gets every frame sent and the end."""
    import threading

    frame = np.arange(1024 * 1024, dtype=np.uint16).reshape(1024, 1024)   # 2 MiB: beyond the kernel's buffers
    got: list[Any] = []
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=1, context=context) as rx:
        tx = FrameSender(rx.endpoint, sndhwm=2, context=context, control_retry_ms=3000)
        tx.start_series(5)
        results = [tx.send_frame(frame) for _ in range(20)]
        # full means full for a while: on a loaded machine ZeroMQ's I/O threads move what they can
        # into the kernel's buffers late, so send until a refusal outlasts a pause
        for _ in range(50):
            time.sleep(0.2)
            while (sent := tx.send_frame(frame)):   # the last places in the queue
                results.append(True)
            results.append(sent)
            if results[-2] is False:
                break
        assert results[-2:] == [False, False], "the queues should have filled"

        def read_later() -> None:
            time.sleep(0.5)
            while (msg := rx.recv(2000)) is not None:
                got.append(msg)
                if isinstance(msg, SeriesEnd):
                    return

        reader = threading.Thread(target=read_later)
        reader.start()
        t0 = time.monotonic()
        try:
            ended = tx.end_series()
            waited = time.monotonic() - t0
        finally:
            tx.close()
            reader.join(10)
        assert ended, "the series end was dropped instead of waiting for room"
    assert waited > 0.3, "the series end should have waited for the reader to make room"
    assert tx.counters.messages_dropped == 0
    frames = [m.header.seq for m in got if isinstance(m, Frame)]
    assert frames == [seq for seq, ok in enumerate(results) if ok]
    assert isinstance(got[-1], SeriesEnd) and got[-1].frames_sent == len(frames)
    assert isinstance(got[0], SeriesStart)
