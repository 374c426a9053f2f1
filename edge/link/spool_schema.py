"""The spool's file layout and the values it hands out: the SQLite schema, the counters kept per
kind of message, and the frozen results of reading and writing (:mod:`edge.link.spool`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["COUNTERS", "KINDS", "SCHEMA", "SCHEMA_VERSION", "PutResult", "SpoolCounters", "SpooledItem",
           "item_from_row"]

KINDS: tuple[str, ...] = ("record", "frame_summary")
SCHEMA_VERSION = 1
COUNTERS = tuple(f"{kind}.{what}" for kind in KINDS
               for what in ("accepted", "acked", "evicted", "duplicates", "evicted_bytes", "dead_lettered"))

# seq needs no AUTOINCREMENT: a new row always gets max(seq) + 1, so the order among equal
# priorities (oldest first) holds even when SQLite reuses the number of a deleted last row
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    priority REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_priority ON items (priority DESC, seq ASC);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    priority REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL,
    tries INTEGER NOT NULL,
    dead_time REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledItem:
    """One spooled message as the downlink sends it: its id, kind, priority and msgpack bytes."""

    id: str
    kind: str
    priority: float
    payload: bytes


def item_from_row(row: tuple[str, str, float, bytes]) -> SpooledItem:
    """A SpooledItem from an ``id, kind, priority, payload`` row."""
    return SpooledItem(id=row[0], kind=row[1], priority=float(row[2]), payload=bytes(row[3]))


@dataclass(frozen=True)
class PutResult:
    """What one :meth:`Spool.put` did; everything in ``accepted`` is durable."""

    accepted: tuple[str, ...]
    duplicates: tuple[str, ...]
    evicted: tuple[str, ...]


@dataclass(frozen=True)
class SpoolCounters:
    """The spool's counters, durable across crashes:
    ``accepted == acked + evicted + dead_lettered + pending`` per kind."""

    accepted: Mapping[str, int]
    acked: Mapping[str, int]
    evicted: Mapping[str, int]
    evicted_bytes: Mapping[str, int]
    duplicates: Mapping[str, int]
    pending: Mapping[str, int]
    pending_bytes: int
    #: messages the ground never acknowledged while it acknowledged others, moved aside
    dead_lettered: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def conserved(self) -> bool:
        """True when, for every kind, accepted = acked + evicted + dead_lettered + pending."""
        return all(self.accepted[k] == self.acked[k] + self.evicted[k] + self.dead_lettered[k] + self.pending[k]
                   for k in KINDS)
