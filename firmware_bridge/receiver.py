"""The node side of the frame protocol: ``FrameReceiver`` owns one PULL socket.

It hands back typed, validated messages with a zero-copy view of the pixels, finds sequence gaps
per series, and survives any byte sequence: a malformed message is rejected with its specific
``ProtocolError``, counted under its reason, logged once (``frame.rejected``), and the receiver
goes on to the next message. Validation lives in ``protocol`` (pure); this module only adds the
socket, the counters and the logs. It must not process pixels or block past its timeout.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
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
    Message,
    SequenceTracker,
    SeriesEnd,
    SeriesStart,
    decode_message,
)
from firmware_bridge.sockets import open_socket

log = get_logger(__name__)


@dataclass
class ReceiverCounters:
    """What arrived. At every moment ``received == accepted + rejected``.

    ``rejected_by_reason`` is keyed by the error's ``reason`` (``checksum``, ``part_count`` ...);
    ``gaps`` counts gap events and ``frames_missing`` the sequence numbers they cover.
    """

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    frames: int = 0
    series_starts: int = 0
    series_ends: int = 0
    heartbeats: int = 0
    bytes_received: int = 0
    gaps: int = 0
    frames_missing: int = 0
    out_of_order: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot for logs and JSON."""
        out = {k: v for k, v in self.__dict__.items() if k != "rejected_by_reason"}
        out["rejected_by_reason"] = dict(self.rejected_by_reason)
        return out


class FrameReceiver:
    """Receive protocol messages from one ZeroMQ PULL socket.

    By default the node binds (``bind=True``) and DAQs connect. ``address`` may use port 0 or
    ``*`` for a random port; ``endpoint`` then says which one was taken.
    """

    def __init__(
        self,
        address: str,
        *,
        bind: bool = True,
        rcvhwm: int = 4,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_compression_ratio: float = MAX_COMPRESSION_RATIO,
        context: zmq.Context[Any] | None = None,
        setup: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        """``setup(sock)`` runs on the PULL socket before it binds or connects (the node's CURVE)."""
        self.max_frame_bytes = max_frame_bytes
        self.max_compression_ratio = max_compression_ratio
        self.counters = ReceiverCounters()
        #: monotonic time of the last valid message, and whether it ended a series (a DAQ that
        #: ended its series may fall silent; one in the middle of a series may not)
        self.last_message_at: float | None = None
        self.series_open = False
        #: per detector, the figures of its last heartbeat (the DAQ's own sent / dropped counts)
        self.daq: dict[str, dict[str, Any]] = {}
        self.gaps: list[Gap] = []
        self._tracker = SequenceTracker()
        self._ctx = context or zmq.Context.instance()
        # no part of a valid message is larger than the frame bound (a compressed payload may be
        # twice its pixels, or 64 KiB) or the header bound: libzmq drops a peer that sends one
        max_part = max(2 * max_frame_bytes, 1 << 16, MAX_HEADER_BYTES)
        self._sock, self.endpoint = open_socket(self._ctx, zmq.PULL, address, bind=bind, hwm=rcvhwm,
                                                max_message_bytes=max_part, setup=setup)
        log.info("receiver.opened", address=self.endpoint, bind=bind, max_frame_bytes=max_frame_bytes,
                 max_message_bytes=max_part)

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next valid message, or None when none came within ``timeout_ms`` (None: wait).

        Malformed messages met on the way are rejected, counted and logged, and reading goes on
        within the same timeout.
        """
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            if deadline is not None:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                if not self._sock.poll(left_ms, zmq.POLLIN):
                    return None
            parts = self._sock.recv_multipart(copy=False)
            message = self.accept(parts)
            if message is not None:
                return message

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The PULL socket, for a caller that waits on it beside other things (``zmq.Poller``);
        read it only through :meth:`recv`."""
        return self._sock

    def accept(self, parts: list[Any]) -> Message | None:
        """Validate one received multipart message, count it, and return it or None if rejected."""
        c = self.counters
        c.received += 1
        c.bytes_received += sum(len(getattr(p, "buffer", p)) for p in parts)
        try:
            message = decode_message(parts, max_frame_bytes=self.max_frame_bytes,
                                     max_compression_ratio=self.max_compression_ratio)
        except ProtocolError as exc:
            c.rejected += 1
            c.rejected_by_reason[exc.reason] += 1
            log.warning("frame.rejected", reason=exc.reason, error=str(exc), parts=len(parts))
            return None
        c.accepted += 1
        self.last_message_at = time.monotonic()
        self.series_open = not isinstance(message, SeriesEnd)
        if isinstance(message, Frame):
            c.frames += 1
            h = message.header
            before = self._tracker.out_of_order
            self._note_gap(self._tracker.observe(h.detector_id, h.series_id, h.seq))
            if self._tracker.out_of_order != before:
                c.out_of_order += 1
                log.warning("series.out_of_order", detector_id=h.detector_id,
                            series_id=h.series_id, seq=h.seq)
        elif isinstance(message, SeriesStart):
            c.series_starts += 1
            self._tracker.start(message.detector_id, message.series_id)
            log.info("series.started", detector_id=message.detector_id,
                     series_id=message.series_id, expected_frames=message.expected_frames)
        elif isinstance(message, SeriesEnd):
            c.series_ends += 1
            self._note_gap(self._tracker.end(message.detector_id, message.series_id,
                                             message.frames_sent + message.frames_dropped))
            log.info("series.ended", detector_id=message.detector_id, series_id=message.series_id,
                     frames_sent=message.frames_sent, frames_dropped=message.frames_dropped)
        elif isinstance(message, Heartbeat):
            c.heartbeats += 1
            self.daq[message.detector_id] = {"time_utc": message.time_utc, "frames_sent": message.frames_sent,
                                             "frames_dropped": message.frames_dropped}
        return message

    def _note_gap(self, gap: Gap | None) -> None:
        if gap is None:
            return
        self.counters.gaps += 1
        self.counters.frames_missing += gap.n_missing
        self.gaps.append(gap)
        if len(self.gaps) > 10_000:
            del self.gaps[: len(self.gaps) - 10_000]
        log.warning("series.gap", detector_id=gap.detector_id, series_id=gap.series_id,
                    first_missing=gap.first_missing, last_missing=gap.last_missing,
                    n_missing=gap.n_missing)

    def close(self) -> None:
        """Close the socket."""
        if not self._sock.closed:
            self._sock.close(linger=0)
            log.info("receiver.closed", **self.counters.as_dict())

    def __enter__(self) -> FrameReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
