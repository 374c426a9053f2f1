"""The DAQ side of the frame protocol: ``FrameSender`` owns one PUSH socket and never blocks.

A slow, absent or dead node must never stall acquisition, so every send is non-blocking against
a small send high-water mark: when the queue is full the frame is dropped, counted, and its
sequence number remembered, and the call returns at once. This module must not retry, buffer
without bound, or wait for the node (the rig may opt in to a bounded wait, see
``send_timeout_ms``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray

from edge.log import get_logger
from firmware_bridge.protocol import (
    Buffer,
    Keywords,
    encode_frame,
    encode_heartbeat,
    encode_series_end,
    encode_series_start,
    format_utc,
)
from firmware_bridge.sockets import open_socket

log = get_logger(__name__)


@dataclass
class SenderCounters:
    """What the sender did: frames handed to ZeroMQ, frames dropped (and which), other messages
    (series start/end, heartbeats, raw parts) sent and dropped.

    ``dropped_seqs`` keeps the most recent ``max_dropped_seqs`` (series_id, seq) pairs; the
    count ``frames_dropped`` is exact.
    """

    frames_sent: int = 0
    frames_dropped: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    bytes_sent: int = 0
    dropped_seqs: collections.deque[tuple[int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=100_000))


class FrameSender:
    """Publish frames to a node over one ZeroMQ PUSH socket, never blocking the DAQ.

    By default the sender connects and the node binds (``bind=False``). ``sndhwm`` is the number
    of messages ZeroMQ may queue before frames are dropped. ``send_timeout_ms=0`` (the DAQ's
    setting) never waits for room for a frame; a positive value lets a test rig wait that long.
    Series starts, series ends and heartbeats wait up to ``control_retry_ms`` for room (they carry
    the series' accounting), and ``close()`` lingers up to ``linger_ms`` for what is queued
    (docs/protocol.md, 4.1 and 4.2).
    """

    def __init__(
        self,
        address: str,
        *,
        detector_id: str = "daq0",
        bind: bool = False,
        sndhwm: int = 4,
        compression: str = "none",
        send_timeout_ms: int = 0,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], datetime] | None = None,
        setup: Callable[[zmq.Socket[Any]], None] | None = None,
        control_retry_ms: int = 1000,
        linger_ms: int = 5000,
    ) -> None:
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1, not {sndhwm}")
        if control_retry_ms < 0 or linger_ms < 0:
            raise ValueError(f"control_retry_ms and linger_ms must be >= 0, not {control_retry_ms}, {linger_ms}")
        self.control_retry_ms = control_retry_ms
        self.linger_ms = linger_ms
        self.address = address
        self.detector_id = detector_id
        self.compression = compression
        self.send_timeout_ms = send_timeout_ms
        self.counters = SenderCounters()
        self.series_id = 0
        self._next_seq = 0
        self._series_sent = 0
        self._series_dropped = 0
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._ctx = context or zmq.Context.instance()
        # setup(sock) runs before connect: a DAQ's CURVE client keys, for instance
        self._sock, self.endpoint = open_socket(self._ctx, zmq.PUSH, address, bind=bind, hwm=sndhwm,
                                                setup=setup)
        log.info("sender.opened", address=self.endpoint, bind=bind, sndhwm=sndhwm)

    def _now(self) -> str:
        return format_utc(self._clock())

    def _send(self, parts: list[Buffer]) -> bool:
        if self.send_timeout_ms > 0 and not self._sock.poll(self.send_timeout_ms, zmq.POLLOUT):
            return False
        try:
            # multipart messages are atomic: if the first part is queued, the payload is too
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def send_frame(
        self,
        pixels: NDArray[Any],
        *,
        seq: int | None = None,
        start_utc: str | None = None,
        exposure_s: float = 0.0,
        wcs: Keywords | None = None,
        keywords: Keywords | None = None,
        compression: str | None = None,
    ) -> bool:
        """Send one frame of the current series; return False (and count it) when it was dropped.

        ``seq`` defaults to the series' next number; numbers advance even for dropped frames, so
        the node sees the drop as a gap. The array must not change until the frame has left.
        """
        seq = self._next_seq if seq is None else int(seq)
        self._next_seq = seq + 1
        parts = encode_frame(
            np.asarray(pixels), detector_id=self.detector_id, series_id=self.series_id, seq=seq,
            start_utc=start_utc or self._now(), exposure_s=exposure_s,
            compression=compression or self.compression, wcs=wcs, keywords=keywords)
        if self._send(parts):
            self.counters.frames_sent += 1
            self.counters.bytes_sent += len(parts[0]) + memoryview(parts[1]).nbytes
            return True
        self.counters.frames_dropped += 1
        self.counters.dropped_seqs.append((self.series_id, seq))
        log.warning("sender.frame_dropped", series_id=self.series_id, seq=seq,
                    frames_dropped=self.counters.frames_dropped)
        return False

    def start_series(self, series_id: int | None = None, *, expected_frames: int | None = None,
                     keywords: Keywords | None = None, start_utc: str | None = None) -> bool:
        """Open a series (default: the previous id + 1); its frames count seq from 0.

        ``start_utc`` (default: now) names the series with its id: a DAQ that sends a series again
        (the node crashed) gives its original start time, so the node skips the frames it already
        finished; a new start time under a known id is a new run of that id (docs/protocol.md 2.7).
        """
        self.series_id = self.series_id + 1 if series_id is None else int(series_id)
        self._next_seq = 0
        self._series_sent = self.counters.frames_sent
        self._series_dropped = self.counters.frames_dropped
        return self._control(encode_series_start(
            detector_id=self.detector_id, series_id=self.series_id,
            start_utc=self._now() if start_utc is None else start_utc,
            expected_frames=expected_frames, keywords=keywords))

    def end_series(self) -> bool:
        """Close the current series, telling the node how many frames were sent and dropped."""
        sent = self.counters.frames_sent - self._series_sent
        dropped = self.counters.frames_dropped - self._series_dropped
        return self._control(encode_series_end(
            detector_id=self.detector_id, series_id=self.series_id, end_utc=self._now(),
            frames_sent=sent, frames_dropped=dropped))

    def heartbeat(self) -> bool:
        """Tell the node the DAQ is alive, with cumulative counts since this sender started."""
        return self._control(encode_heartbeat(
            detector_id=self.detector_id, time_utc=self._now(),
            frames_sent=self.counters.frames_sent, frames_dropped=self.counters.frames_dropped))

    def send_parts(self, parts: list[Buffer]) -> bool:
        """Send an already encoded message as it is (the rig replays recordings with this)."""
        return self._control(parts)

    def _control(self, parts: list[Buffer]) -> bool:
        sent = self._send(parts)
        deadline = time.monotonic() + self.control_retry_ms / 1000.0
        while not sent and time.monotonic() < deadline:
            # a series start or end lost is a series' accounting lost: wait for room, within a bound
            self._sock.poll(max(1, min(50, int((deadline - time.monotonic()) * 1000))), zmq.POLLOUT)
            sent = self._send(parts)
        if sent:
            self.counters.messages_sent += 1
            return True
        self.counters.messages_dropped += 1
        log.warning("sender.message_dropped", messages_dropped=self.counters.messages_dropped)
        return False

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket, waiting at most ``linger_ms`` (default: the sender's ``linger_ms``,
        5 s) for queued messages to leave; 0 discards what is still queued. The wait is bounded,
        so a dead node delays the DAQ by the linger at most."""
        if not self._sock.closed:
            self._sock.close(linger=self.linger_ms if linger_ms is None else linger_ms)
            log.info("sender.closed", frames_sent=self.counters.frames_sent,
                     frames_dropped=self.counters.frames_dropped)

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
