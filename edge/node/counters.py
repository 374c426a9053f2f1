"""What the node has done since it started, and the two conservation laws it must obey.

At every moment: frames received = processed + rejected + dropped + duplicate + in flight, and
detections = suppressed + spooled (spooled records then leave as acked or evicted, or wait).
Plain data: the daemon and its parts count into one :class:`NodeCounters`; nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.records import FrameSummary

#: how many of the most recent dropped sequence numbers the counters (and so every status and
#: housekeeping message) carry; every drop is also in the next frame summary's ``dropped_frames``
DROPPED_SEQS_KEPT = 1000


@dataclass
class NodeCounters:
    """What the node has done since it started; see the module docstring for the conservation laws."""

    frames_received: int = 0      # frames accepted by the protocol, plus messages it rejected
    frames_processed: int = 0
    frames_rejected: int = 0      # protocol rejections plus frames the pipeline refused
    frames_dropped: int = 0       # frames the ingest queue let go (drop_oldest)
    frames_in_flight: int = 0     # queued or in a worker
    frames_duplicate: int = 0     # frames already in the spool (a DAQ re-sent them): not processed again
    #: the most recent DROPPED_SEQS_KEPT of them: a long overload must not grow the node's memory
    dropped_seqs: deque[int] = field(default_factory=lambda: deque(maxlen=DROPPED_SEQS_KEPT))
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    detections: int = 0
    suppressed: int = 0
    capped: int = 0               # of the suppressed: kept back by [triage] max_records_per_frame
    by_class: dict[str, int] = field(default_factory=dict)         # detections by predicted class
    sent_by_reason: dict[str, int] = field(default_factory=dict)   # records sent, by reason
    spooled: int = 0              # records committed to the spool (they leave as acked or evicted)
    spool_duplicates: int = 0
    evicted: int = 0
    latency_ms: list[float] = field(default_factory=list)   # receive -> spooled, last 1000 frames
    workers_recycled: int = 0     # workers replaced after [node] worker_max_frames frames
    workers_died: int = 0         # worker processes that ended on their own (and were replaced)

    def add_frame(self, s: FrameSummary, *, duplicates: int, evicted: int, latency_ms: float) -> None:
        """Count a frame whose records and summary are in the spool (``duplicates`` of its records
        were there already, ``evicted`` others made room), ``latency_ms`` after it arrived."""
        self.frames_processed += 1
        self.detections += s.detections
        self.suppressed += s.suppressed
        self.capped += s.capped
        self.spooled += s.sent
        self.spool_duplicates += duplicates
        self.evicted += evicted
        for into, add in ((self.by_class, s.by_class), (self.sent_by_reason, s.sent_by_reason)):
            for key, n in add.items():
                into[key] = into.get(key, 0) + n
        self.latency_ms.append(latency_ms)
        del self.latency_ms[:-1000]

    def conserved(self) -> bool:
        """Both conservation laws hold."""
        frames = (self.frames_processed + self.frames_rejected + self.frames_dropped
                  + self.frames_in_flight + self.frames_duplicate)
        return self.frames_received == frames and self.detections == self.suppressed + self.spooled

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (latencies summarised)."""
        out = asdict(self)
        lat = sorted(out.pop("latency_ms"))
        out["dropped_seqs"] = list(self.dropped_seqs)
        out["latency_p50_ms"] = lat[len(lat) // 2] if lat else None
        out["latency_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None
        out["conserved"] = self.conserved()
        return out
