"""The downlink: sends spooled messages to the ground over ZeroMQ, within its byte budgets, until acked.

The node's DEALER connects to the ground's ROUTER. Each message is three parts
``[TAG, DATA, msgpack payload]``, or ``[TAG, ZDATA, zstd frame of it]`` when the downlink
compresses with a shipped dictionary (``edge.link.zdict``); the ground answers ``[TAG, ACK, msgpack list of ids]`` once
those ids are durable on its side (duplicates included). :class:`Downlink` sends the spool's
pending messages in priority order while the per-second token bucket and the contact window
allow, marks them in flight, and makes them pending again when no ack came within
``ack_timeout_s``; a message leaves the spool only on an ack. Everything is counted
(:class:`DownlinkCounters`). ``docs/downlink.md`` is the wire spec.

The message parts and the sockets of both ends are defined once, in :mod:`edge.link.wire`. This
module never decodes records and never writes files; one :class:`Downlink` owns its socket and is
used from one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from edge.errors import RecordDecodeError, TransportError
from edge.link.spool import Spool, SpooledItem
from edge.link.wire import DATA, TAG, ZDATA, decode_ack, node_socket
from edge.link.zdict import compressor
from edge.log import get_logger

__all__ = ["Downlink", "DownlinkCounters"]

log = get_logger(__name__)

_FETCH = 32
#: timed-out ids held before the first sweep against the spool
_SWEEP_MIN = 4096


@dataclass(frozen=True)
class DownlinkCounters:
    """What the downlink did since it started (the spool's counters are the durable ones)."""

    sent: int               # messages handed to the socket, retries included
    sent_bytes: int         # payload bytes of those
    retries: int            # sends of a message whose ack timed out before
    acked: int              # acks that removed a spooled message
    ack_unknown: int        # acks for ids no longer spooled (repeated acks)
    timeouts: int           # in-flight messages whose ack did not come in time
    budget_waits: int       # pumps that stopped at the per-second budget
    window_exhausted: int   # pumps that stopped at the contact window's budget
    send_blocked: int       # pumps that stopped because no ground was connected or its queue was full
    malformed_acks: int     # messages from the ground that were not acks
    dead_lettered: int      # messages moved to the spool's dead letters after max_tries
    in_flight: int          # sent, not yet acked, not yet timed out


class Downlink:
    """Sends a spool's messages to the ground within byte budgets, retrying until acknowledged."""

    def __init__(self, spool: Spool, address: str, *, budget_bytes_per_s: int = 1_000_000,
                 contact_window_bytes: int = 0, ack_timeout_s: float = 5.0, max_in_flight: int = 512,
                 clock: Callable[[], float] = time.monotonic,
                 context: zmq.Context[Any] | None = None, curve: tuple[str, str] | None = None,
                 compression: str = "none", max_tries: int = 8) -> None:
        if (budget_bytes_per_s <= 0 or contact_window_bytes < 0 or ack_timeout_s <= 0 or max_in_flight < 1
                or max_tries < 1):
            raise ValueError("budget_bytes_per_s, ack_timeout_s, max_in_flight and max_tries must be > 0, "
                             "contact_window_bytes >= 0")
        #: a message sent this many times without an ack, while the ground acknowledged others
        #: sent after it, is poison (the ground cannot take it): it moves to the dead letters
        self.max_tries = int(max_tries)
        self.spool = spool
        self.address = address
        # "none" sends the spooled msgpack as it is; a dictionary name compresses each message
        self.compression = compression
        self._compress = compressor(compression)
        self._kind = DATA if compression == "none" else ZDATA
        self.budget_bytes_per_s = int(budget_bytes_per_s)
        self.ack_timeout_s = float(ack_timeout_s)
        self.max_in_flight = int(max_in_flight)
        self._clock = clock
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._sock: zmq.Socket[Any] | None = node_socket(self._context, address, curve)
        # the connection's life as libzmq sees it: up when the handshake is done, down when the
        # ground closed it or three heartbeats went unanswered
        self._monitor: zmq.Socket[Any] | None = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._connected = False
        self._ever_connected = False
        self._link_changed_at = clock()
        # token bucket: at most one second's budget may be saved up
        self._tokens = float(self.budget_bytes_per_s)
        self._refilled_at = clock()
        self._window_left: int | None = None
        self.open_window(contact_window_bytes)
        self._deadlines: dict[str, float] = {}
        # logged once when sends start being refused (no ground connected, queue full) and once when they resume
        self._blocked = False
        # ids whose ack timed out, to count their next send as a retry; one that the spool then
        # evicts is never sent again, so the set is swept of ids the spool no longer holds
        self._timed_out: set[str] = set()
        self._sweep_at = _SWEEP_MIN
        # acks seen so far, the count when each in-flight id was last sent, and each id's tries
        # that ended in a timeout while the ground acknowledged something else (a silent or dead
        # ground acknowledges nothing, so an outage makes no message poison)
        self._acks_seen = 0
        self._sent_at_ack: dict[str, int] = {}
        self._tries: dict[str, int] = {}
        self._n = dict.fromkeys(("sent", "sent_bytes", "retries", "acked", "ack_unknown", "timeouts",
                                 "budget_waits", "window_exhausted", "send_blocked",
                                 "malformed_acks", "dead_lettered"), 0)

    def open_window(self, contact_window_bytes: int) -> None:
        """Start a contact window of ``contact_window_bytes`` (0: no window limit)."""
        self._window_left = None if contact_window_bytes == 0 else int(contact_window_bytes)
        self._window_logged = False

    @property
    def window_left_bytes(self) -> int | None:
        """Bytes the current contact window still allows (None: no window limit)."""
        return self._window_left

    def pump(self, poll_ms: int = 0) -> int:
        """Take in acks (waiting up to ``poll_ms``), retry timed-out sends, send what the budgets allow.

        Returns the number of messages sent by this call.
        """
        self._watch_link()
        self._receive_acks(poll_ms)
        self._expire()
        return self._send()

    @property
    def connected(self) -> bool:
        """Whether a ground is connected now (handshake done, not dropped since)."""
        return self._connected

    @property
    def ever_connected(self) -> bool:
        """Whether a ground was connected at some time since the downlink started."""
        return self._ever_connected

    @property
    def link_changed_at(self) -> float:
        """When (on the downlink's clock) the connection last came up or went down; at start, the start."""
        return self._link_changed_at

    def _watch_link(self) -> None:
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            up = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            if up != self._connected:
                self._connected = up
                self._ever_connected |= up
                self._link_changed_at = self._clock()
                if up:
                    log.info("downlink.connected", address=self.address)
                else:
                    log.warning("downlink.disconnected", address=self.address)

    def drain(self, timeout_s: float, poll_ms: int = 20) -> bool:
        """Pump until the spool is empty or ``timeout_s`` passes; True when everything was acked."""
        end = time.monotonic() + timeout_s
        while len(self.spool) > 0 and time.monotonic() < end:
            self.pump(poll_ms)
        return len(self.spool) == 0

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            raise TransportError("the downlink is closed", where=self.address)
        return self._sock

    def _receive_acks(self, poll_ms: int) -> None:
        sock = self._socket()
        if not sock.poll(poll_ms, zmq.POLLIN):
            return
        acked: list[str] = []
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                acked.extend(decode_ack(parts))
            except RecordDecodeError as exc:
                self._n["malformed_acks"] += 1
                log.warning("downlink.ack_malformed", reason=exc.reason, error=str(exc))
        if acked:
            removed = self.spool.ack(acked)
            self._n["acked"] += removed
            self._n["ack_unknown"] += len(acked) - removed
            self._acks_seen += len(acked)
            for i in acked:
                self._deadlines.pop(i, None)
                self._timed_out.discard(i)
                self._sent_at_ack.pop(i, None)
                self._tries.pop(i, None)

    def _expire(self) -> None:
        now = self._clock()
        late = [i for i, deadline in self._deadlines.items() if deadline <= now]
        if not late:
            return
        poison: dict[str, int] = {}
        for i in late:
            del self._deadlines[i]
            if self._acks_seen > self._sent_at_ack.pop(i, self._acks_seen):
                tries = self._tries[i] = self._tries.get(i, 0) + 1
                if tries >= self.max_tries:
                    poison[i] = tries
        self._timed_out.update(late)
        if len(self._timed_out) > self._sweep_at:
            self._timed_out = self.spool.holding(self._timed_out)
            self._tries = {i: n for i, n in self._tries.items() if i in self._timed_out}
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self._timed_out))
        self.spool.release(late)
        self._n["timeouts"] += len(late)
        log.info("downlink.ack_timeout", count=len(late), ack_timeout_s=self.ack_timeout_s)
        if poison:
            moved = self.spool.dead_letter(poison)
            for i in poison:
                self._tries.pop(i, None)
                self._timed_out.discard(i)
            self._n["dead_lettered"] += len(moved)
            log.warning("downlink.dead_letter", count=len(moved), ids=moved[:20], max_tries=self.max_tries,
                        detail="the ground acknowledged other messages but never these; they are kept "
                               "in the spool's dead_letters table")

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.budget_bytes_per_s),
                           self._tokens + (now - self._refilled_at) * self.budget_bytes_per_s)
        self._refilled_at = now

    def _send(self) -> int:
        room = self.max_in_flight - len(self._deadlines)
        if room <= 0:
            return 0
        self._refill()
        total = 0
        # fetch a few at a time: the budget usually stops the loop long before max_in_flight
        while room > 0:
            items = self.spool.pending(min(room, _FETCH))
            if not items:
                break
            sent, stopped = self._send_items(items)
            if sent:
                self.spool.mark_in_flight(sent)
            total += len(sent)
            room -= len(sent)
            if stopped:
                break
        return total

    def _send_items(self, items: list[SpooledItem]) -> tuple[list[str], bool]:
        """Send in order until a budget or the socket says stop; the ids sent, and whether it stopped."""
        sock = self._socket()
        sent: list[str] = []
        for item in items:
            payload = self._compress(item.payload)
            size = len(payload)
            if self._window_left is not None and size > self._window_left:
                self._n["window_exhausted"] += 1
                if not self._window_logged:
                    self._window_logged = True
                    log.info("downlink.window_exhausted", window_left_bytes=self._window_left,
                             pending=len(self.spool))
                return sent, True
            # a message larger than the bucket goes when the bucket is full, so nothing starves
            if self._tokens < min(size, self.budget_bytes_per_s):
                self._n["budget_waits"] += 1
                return sent, True
            try:
                sock.send_multipart([TAG, self._kind, payload], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._n["send_blocked"] += 1
                if not self._blocked:
                    self._blocked = True
                    log.warning("downlink.blocked", address=self.address, pending=len(self.spool))
                return sent, True
            if self._blocked:
                self._blocked = False
                log.info("downlink.unblocked", address=self.address)
            self._tokens -= size
            if self._window_left is not None:
                self._window_left -= size
            self._n["sent"] += 1
            self._n["sent_bytes"] += size
            if item.id in self._timed_out:
                self._timed_out.discard(item.id)
                self._n["retries"] += 1
            self._deadlines[item.id] = self._clock() + self.ack_timeout_s
            self._sent_at_ack[item.id] = self._acks_seen
            sent.append(item.id)
        return sent, False

    def counters(self) -> DownlinkCounters:
        """A snapshot of the counters."""
        return DownlinkCounters(**self._n, in_flight=len(self._deadlines))

    def close(self) -> None:
        """Close the socket (and the context when this object made it); safe to call twice."""
        if self._sock is not None:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._sock.close(linger=0)
            self._sock = None
            if self._own_context:
                self._context.term()

    def __enter__(self) -> Downlink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
