"""The store-and-forward spool: records stay here, durable, until the ground acknowledges them.

One SQLite file in WAL mode with ``synchronous=FULL``: :meth:`Spool.put` returns only after its
transaction is committed and fsynced, so a record acknowledged to the pipeline survives a process
crash and a power loss on a filesystem whose fsync works. A record leaves only through
:meth:`Spool.ack` (the ground has it) or eviction (the spool is full: lowest priority first, the
newest among equals, records not in flight before those in flight). Counters live in the same
transactions as the rows they count, so after any crash ``accepted == acked + evicted + pending``
still holds, per kind. Which rows are in flight is deliberately *not* durable: after a restart
everything unacknowledged is pending again and is sent again; the ground drops the duplicates.

This module is the shell around SQLite; it never opens a socket. One connection, guarded by a
lock, so the pipeline may ``put`` from one thread while the downlink reads from another.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from edge.codec import encode_msgpack
from edge.errors import SpoolError
from edge.link.spool_schema import (
    COUNTERS,
    KINDS,
    SCHEMA,
    SCHEMA_VERSION,
    PutResult,
    SpoolCounters,
    SpooledItem,
    item_from_row,
)
from edge.link.sqlite_ids import ids_present
from edge.log import get_logger
from edge.records import DownlinkRecord, FrameSummary

__all__ = ["KINDS", "PutResult", "SpoolCounters", "Spool", "SpooledItem"]

log = get_logger(__name__)

# victims read per query when the spool is over its bound (one put usually evicts a frame's worth)
_EVICT_CHUNK = 64


class Spool:
    """A durable, bounded, priority-ordered store of downlink messages in one SQLite file."""

    def __init__(self, path: str | Path, *, max_bytes: int = 256 * 1024 * 1024,
                 max_rows: int | None = None) -> None:
        if max_bytes < 1 or (max_rows is not None and max_rows < 1):
            raise SpoolError("max_bytes and max_rows must be >= 1", where=str(path))
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool: {exc}; check the path and its permissions",
                             where=str(self.path)) from exc
        try:
            self._init()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise SpoolError(f"the spool file is not a usable SQLite database ({exc}); move it "
                             "aside to keep its records for inspection, and start with a new spool",
                             where=str(self.path)) from exc
        log.info("spool.opened", path=str(self.path), pending=sum(self._pending_rows.values()),
                 pending_bytes=self._pending_bytes)

    def _init(self) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"journal_mode is {mode}, WAL is needed")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        # a TEMP table lives outside the spool file: marking rows in flight costs no fsync
        db.execute("CREATE TEMP TABLE IF NOT EXISTS in_flight (id TEXT PRIMARY KEY)")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
                           [(c,) for c in COUNTERS])
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"spool schema version {row[0]}, this node reads "
                                            f"{SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._pending_rows = dict.fromkeys(KINDS, 0)
        self._pending_bytes = 0
        for kind, n, size in db.execute("SELECT kind, COUNT(*), COALESCE(SUM(size_bytes), 0) "
                                        "FROM items GROUP BY kind"):
            self._pending_rows[kind] = int(n)
            self._pending_bytes += int(size)

    # -- writing -------------------------------------------------------------------------------

    def put(self, messages: Sequence[DownlinkRecord | FrameSummary], *,
            priorities: Sequence[float] | None = None,
            checkpoint: Mapping[str, str] | None = None) -> PutResult:
        """Store messages durably in one transaction; returns once they are fsynced.

        A record's priority is its ``priority`` field and a summary's is +inf unless
        ``priorities`` says otherwise. ``checkpoint`` key-values commit in the same transaction
        (e.g. the last frame spooled), so a restarted node knows where it was.
        """
        if priorities is not None and len(priorities) != len(messages):
            raise ValueError(f"{len(priorities)} priorities for {len(messages)} messages")
        rows = []
        for i, msg in enumerate(messages):
            kind = "record" if isinstance(msg, DownlinkRecord) else "frame_summary"
            prio = (float(priorities[i]) if priorities is not None
                    else msg.priority if isinstance(msg, DownlinkRecord) else float("inf"))
            payload = encode_msgpack(msg)
            rows.append((msg.id, kind, prio, len(payload), payload))
        with self._locked():
            return self._put_rows(rows, checkpoint or {})

    def _put_rows(self, rows: list[tuple[str, str, float, int, bytes]],
                  checkpoint: Mapping[str, str]) -> PutResult:
        db = self._db
        accepted: list[str] = []
        duplicates: list[str] = []
        evicted: list[str] = []
        delta = {c: 0 for c in COUNTERS}
        pending_rows = dict(self._pending_rows)
        pending_bytes = self._pending_bytes
        try:
            db.execute("BEGIN IMMEDIATE")
            existing = self._existing([r[0] for r in rows])
            fresh = []
            for row in rows:
                item_id, kind, size = row[0], row[1], row[3]
                if item_id in existing:
                    duplicates.append(item_id)
                    delta[f"{kind}.duplicates"] += 1
                    continue
                existing.add(item_id)
                fresh.append(row)
                accepted.append(item_id)
                delta[f"{kind}.accepted"] += 1
                pending_rows[kind] += 1
                pending_bytes += size
            db.executemany("INSERT INTO items (id, kind, priority, size_bytes, payload) "
                           "VALUES (?, ?, ?, ?, ?)", fresh)
            # messages not in flight go first; in-flight ones only when nothing else is left
            for clause in ("NOT IN", "IN"):
                while self._over(pending_rows, pending_bytes):
                    victims = db.execute(
                        f"SELECT id, kind, size_bytes FROM items WHERE id {clause} "  # noqa: S608 - clause is IN or NOT IN
                        "(SELECT id FROM temp.in_flight) ORDER BY priority ASC, seq DESC LIMIT ?",
                        (_EVICT_CHUNK,)).fetchall()
                    if not victims:
                        break
                    gone = []
                    for vid, vkind, vsize in victims:
                        if not self._over(pending_rows, pending_bytes):
                            break
                        gone.append((vid,))
                        evicted.append(vid)
                        delta[f"{vkind}.evicted"] += 1
                        delta[f"{vkind}.evicted_bytes"] += int(vsize)
                        pending_rows[vkind] -= 1
                        pending_bytes -= int(vsize)
                    db.executemany("DELETE FROM items WHERE id = ?", gone)
            self._bump(delta)
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [(f"checkpoint.{k}", str(v)) for k, v in checkpoint.items()])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise SpoolError(f"cannot store {len(rows)} message(s): {exc}; nothing of this batch "
                             "was stored, check the disk", where=str(self.path)) from exc
        self._pending_rows = pending_rows
        self._pending_bytes = pending_bytes
        if evicted:
            self._forget_in_flight(evicted)
            log.warning("spool.evicted", count=len(evicted), pending_bytes=pending_bytes,
                        max_bytes=self.max_bytes, max_rows=self.max_rows)
        return PutResult(accepted=tuple(accepted), duplicates=tuple(duplicates), evicted=tuple(evicted))

    def _existing(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are spooled already (inside the caller's transaction)."""
        return ids_present(self._db, "items", ids)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock on the open connection; SpoolError once the spool is closed."""
        with self._lock:
            if self._db is None:
                raise SpoolError("the spool is closed", where=str(self.path))
            yield self._db

    def _over(self, pending_rows: Mapping[str, int], pending_bytes: int) -> bool:
        if pending_bytes > self.max_bytes:
            return True
        return self.max_rows is not None and sum(pending_rows.values()) > self.max_rows

    def _bump(self, delta: Mapping[str, int]) -> None:
        self._db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                             [(v, k) for k, v in delta.items() if v])

    def _rollback(self) -> None:
        # no transaction may be open (BEGIN itself failed): then there is nothing to undo
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def ack(self, ids: Iterable[str]) -> int:
        """Remove what the ground acknowledged, durably; returns how many were still spooled."""
        ids = list(ids)
        removed = self._take_out(ids, "acked", lambda item_id: None,
                                 "acknowledged message(s): {exc}; they stay spooled and will be sent again")
        # an ack for a message no longer spooled still ends its time in flight
        with self._locked():
            self._forget_in_flight(ids)
        return len(removed)

    def dead_letter(self, tries: Mapping[str, int]) -> list[str]:
        """Move the messages ``tries`` names (id -> sends without an ack) to the dead-letter table,
        durably, in one transaction; returns the ids that were still spooled and were moved."""
        now = time.time()

        def keep(item_id: str) -> None:
            self._db.execute("INSERT OR REPLACE INTO dead_letters (id, kind, priority, size_bytes, payload, "
                             "tries, dead_time) SELECT id, kind, priority, size_bytes, payload, ?, ? "
                             "FROM items WHERE id = ?", (int(tries[item_id]), now, item_id))

        return self._take_out(list(tries), "dead_lettered", keep,
                              "message(s) to the dead letters: {exc}; they stay spooled")

    def dead_letters(self) -> list[tuple[str, str, int, float]]:
        """(id, kind, tries, dead_time as Unix seconds) of every dead-lettered message, oldest first."""
        with self._locked() as db:
            rows = db.execute("SELECT id, kind, tries, dead_time FROM dead_letters ORDER BY dead_time, id").fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in rows]

    def _take_out(self, ids: list[str], counter: str, before_delete: Callable[[str], None],
                  failure: str) -> list[str]:
        """Delete the spooled ones of ``ids`` in one transaction, counting each under
        ``<kind>.<counter>`` and calling ``before_delete(id)`` first; the ids taken out. On a
        database error nothing changes and SpoolError says ``failure`` (``{exc}`` filled in)."""
        if not ids:
            return []
        delta = {c: 0 for c in COUNTERS}
        taken: list[tuple[str, str, int]] = []
        with self._locked() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                for item_id in ids:
                    row = db.execute("SELECT kind, size_bytes FROM items WHERE id = ?", (item_id,)).fetchone()
                    if row is None:
                        continue
                    before_delete(item_id)
                    db.execute("DELETE FROM items WHERE id = ?", (item_id,))
                    taken.append((item_id, row[0], int(row[1])))
                    delta[f"{row[0]}.{counter}"] += 1
                self._bump(delta)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(f"cannot take out {len(ids)} " + failure.format(exc=exc),
                                 where=str(self.path)) from exc
            for _, kind, size in taken:
                self._pending_rows[kind] -= 1
                self._pending_bytes -= size
            self._forget_in_flight([t[0] for t in taken])
        return [t[0] for t in taken]

    # -- reading -------------------------------------------------------------------------------

    def pending(self, limit: int) -> list[SpooledItem]:
        """Up to ``limit`` spooled messages not in flight, highest priority first, oldest among equals."""
        with self._locked():
            cur = self._db.execute(
                "SELECT id, kind, priority, payload FROM items WHERE id NOT IN "
                "(SELECT id FROM temp.in_flight) ORDER BY priority DESC, seq ASC LIMIT ?", (limit,))
            return [item_from_row(row) for row in cur]

    def oldest(self) -> SpooledItem | None:
        """The message that has waited longest in the spool (in flight or not), or None when empty."""
        with self._locked():
            row = self._db.execute("SELECT id, kind, priority, payload FROM items ORDER BY seq ASC LIMIT 1").fetchone()
        return None if row is None else item_from_row(row)

    def holding(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are still in the spool."""
        with self._locked():
            return self._existing(list(ids))

    def get(self, item_id: str) -> SpooledItem | None:
        """One spooled message by id, or None when it has left the spool."""
        with self._locked():
            row = self._db.execute("SELECT id, kind, priority, payload FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
        return None if row is None else item_from_row(row)

    def mark_in_flight(self, ids: Iterable[str]) -> None:
        """Hide ids from :meth:`pending` until acked or :meth:`release`d (memory only, by design)."""
        with self._locked():
            ids = [i for i in ids if i not in self._in_flight]
            self._in_flight.update(ids)
            self._db.executemany("INSERT OR IGNORE INTO temp.in_flight (id) VALUES (?)",
                                 [(i,) for i in ids])

    def release(self, ids: Iterable[str]) -> None:
        """Make in-flight ids pending again (their ack timed out)."""
        with self._locked():
            self._forget_in_flight(list(ids))

    def _forget_in_flight(self, ids: Sequence[str]) -> None:
        self._in_flight.difference_update(ids)
        self._db.executemany("DELETE FROM temp.in_flight WHERE id = ?", [(i,) for i in ids])

    @property
    def in_flight(self) -> frozenset[str]:
        """Ids sent and not yet acknowledged."""
        with self._lock:
            return frozenset(self._in_flight)

    def checkpoint(self, key: str) -> str | None:
        """The value last committed under ``key`` by :meth:`put`, or None."""
        with self._locked():
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"checkpoint.{key}",)).fetchone()
        return None if row is None else str(row[0])

    def counters(self) -> SpoolCounters:
        """A consistent snapshot of the durable counters and what is pending now."""
        with self._locked():
            values = dict(self._db.execute("SELECT name, value FROM counters"))
            pending = dict(self._pending_rows)
            pending_bytes = self._pending_bytes

        def by_kind(what: str) -> dict[str, int]:
            return {k: int(values.get(f"{k}.{what}", 0)) for k in KINDS}

        return SpoolCounters(accepted=by_kind("accepted"), acked=by_kind("acked"),
                             evicted=by_kind("evicted"), evicted_bytes=by_kind("evicted_bytes"),
                             duplicates=by_kind("duplicates"), pending=pending,
                             pending_bytes=pending_bytes, dead_lettered=by_kind("dead_lettered"))

    def __len__(self) -> int:
        with self._lock:
            return sum(self._pending_rows.values())

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close; safe to call twice."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("spool.checkpoint_failed", path=str(self.path), error=str(exc))
            self._db.close()
            self._db = None  # type: ignore[assignment]

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
