"""The forward half of store-and-forward: one thread that owns the downlink socket and pumps the
spool to the ground, within the byte budget and the contact windows.

The main thread only commits records to the spool; this thread reads them back in priority order,
sends, and deletes what the ground acknowledged. At stop it may drain for a while first. It never
touches the receiver, the queue or a worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import Any

from edge.config import DownlinkSection
from edge.errors import AstroEdgeError, PeerSilentError, SpoolError
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.liveness import DEFAULT_HEARTBEAT_MS
from edge.log import get_logger
from edge.node.health import Health

log = get_logger(__name__)

#: after a spool failure the downlink counts as recovered once an acknowledged record was deleted
#: from the spool, or once this many seconds passed without a failure (a pump that only reads
#: proves nothing about a disk that refuses writes)
RECOVERED_AFTER_S = 30.0


class Forwarder:
    """The downlink thread and the figures it last reported."""

    def __init__(self, section: DownlinkSection, health: Health | None = None) -> None:
        self.section = section
        self.health = health if health is not None else Health()
        #: the downlink's counters, refreshed by the thread at every turn
        self.counters: dict[str, Any] = {}
        self._stop = threading.Event()
        self._flush = threading.Event()
        self._drain_s = 0.0
        self._thread: threading.Thread | None = None
        #: monotonic time the thread last went round its loop (the watchdog's proof of progress)
        self.last_turn = time.monotonic()

    def start(self, spool: Spool) -> None:
        """Start the thread; it opens the downlink socket and sends from ``spool``."""
        self._thread = threading.Thread(target=self._loop, args=(spool,), name="downlink", daemon=True)
        self._thread.start()

    def alive(self, stalled_after_s: float = 30.0) -> bool:
        """Whether the thread runs and went round its loop within ``stalled_after_s``."""
        return (self._thread is not None and self._thread.is_alive()
                and time.monotonic() - self.last_turn < stalled_after_s)

    def open_window(self) -> None:
        """Open a new contact window (``[downlink] contact_window_bytes``) at the thread's next turn."""
        self._flush.set()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop the thread after up to ``drain_s`` of sending what the spool holds, and wait for it."""
        self._drain_s = drain_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(drain_s + 10.0)

    def _watch_ground(self, downlink: Downlink) -> None:
        """The ground is unreachable from the moment its connection drops (closed, or three
        heartbeats unanswered), or when none came up within three heartbeats of the start."""
        if downlink.connected:
            self.health.ok("ground")
            return
        waited_s = time.monotonic() - downlink.link_changed_at
        if self.health.is_degraded("ground"):
            return
        if downlink.ever_connected or waited_s > 3 * DEFAULT_HEARTBEAT_MS / 1000:
            self.health.degraded("ground", PeerSilentError(
                "the ground's connection dropped" if downlink.ever_connected else
                f"no ground connected within {waited_s:.1f} s of the start", where=downlink.address))

    def _loop(self, spool: Spool) -> None:
        cfg = self.section
        try:
            curve = ((cfg.curve_client_secret_key, cfg.curve_server_public_key)
                     if cfg.curve_client_secret_key else None)
            with Downlink(spool, cfg.address, budget_bytes_per_s=cfg.budget_bytes_per_s,
                          contact_window_bytes=cfg.contact_window_bytes,
                          ack_timeout_s=cfg.ack_timeout_s, curve=curve, max_tries=cfg.max_tries,
                          compression=cfg.compression) as downlink:
                backoff_s = 0.0
                failed_at: tuple[float, int] | None = None   # (when, acked then) of the last spool failure
                while not self._stop.is_set():
                    self.last_turn = time.monotonic()
                    if self._flush.is_set():
                        self._flush.clear()
                        downlink.open_window(cfg.contact_window_bytes)
                    try:
                        downlink.pump(poll_ms=50)
                    except SpoolError as exc:
                        # the disk under the spool failed: wait (0.1 s doubling to 5 s) and retry;
                        # unacknowledged records stay spooled and are sent again
                        self.health.degraded("downlink", exc)
                        failed_at = (time.monotonic(), downlink.counters().acked)
                        backoff_s = min(5.0, max(0.1, 2 * backoff_s))
                        self._stop.wait(backoff_s)
                        continue
                    backoff_s = 0.0
                    if failed_at is not None and (downlink.counters().acked > failed_at[1]
                                                  or time.monotonic() - failed_at[0] > RECOVERED_AFTER_S):
                        failed_at = None
                        self.health.ok("downlink")
                    self._watch_ground(downlink)
                    self.counters = asdict(downlink.counters())
                if self._drain_s > 0:
                    downlink.drain(self._drain_s)
                self.counters = asdict(downlink.counters())
        except AstroEdgeError as exc:
            log.error("downlink.failed", reason=exc.reason, error=str(exc))
            self.health.degraded("downlink", exc)
