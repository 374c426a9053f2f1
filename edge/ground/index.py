"""The ground's index of what it stored: ids, records per day, and how far it has read its files.

The JSON lines are the ground's truth; this SQLite file (``OUT/ground_index.sqlite``, WAL) is an
index over them, so that the ground neither holds every id of a mission in memory nor reads every
line again at each start:

- ``ids``: every record and summary id in the JSON lines (duplicates are looked up here);
- ``days``: per UTC day of receipt, the number of records and the byte offset of the first of
  them in ``downlink.jsonl`` (the day's FITS table is checked against the count and rebuilt from
  that offset);
- ``files``: per JSON-lines file, the byte offset up to which its lines are in the index.

The index is written after the lines are fsynced and before the batch is acknowledged. If the
ground dies in between, or the index cannot be written, the lines past ``files.covered`` are
indexed at the next start (:meth:`GroundIndex.catch_up`); a file shorter than what the index
covers (replaced or cut by hand) makes the index start again from nothing. The module owns the
SQLite file only; it reads the JSON lines it is pointed at and never writes them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edge.errors import GroundStoreError
from edge.link.sqlite_ids import ids_present
from edge.log import get_logger
from edge.records import summary_id

__all__ = ["INDEX_NAME", "GroundIndex", "IndexEntry", "fits_day", "open_wal", "scan_lines"]

log = get_logger(__name__)

INDEX_NAME = "ground_index.sqlite"
#: (id, UTC day of receipt for a record or None for a summary, byte offset of its line)
IndexEntry = tuple[str, "str | None", int]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS days (day TEXT PRIMARY KEY, n INTEGER NOT NULL, first_offset INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY, covered INTEGER NOT NULL)",
)


def fits_day(utc_time: str | None) -> str:
    """YYYYMMDD of an ISO 8601 UTC time (the ground's ``received_time``); "unknown" when absent."""
    if not utc_time or len(utc_time) < 10:
        return "unknown"
    return utc_time[:4] + utc_time[5:7] + utc_time[8:10]


def scan_lines(path: Path, start: int = 0) -> Iterator[tuple[IndexEntry, dict[str, Any], int]]:
    """Each readable line of a ground JSON-lines file from byte ``start`` on: its index entry, its
    parsed JSON (stamps stay base64 text, nothing is validated beyond the id's fields) and the
    byte offset just past it."""
    with path.open("rb") as fh:
        fh.seek(start)
        offset = start
        for raw in fh:
            here, offset = offset, offset + len(raw)
            try:
                data = json.loads(raw)
                kind = data["kind"]
                if kind == "record":
                    received = data.get("received_time")
                    entry: IndexEntry = (str(data["record_id"]),
                                         fits_day(received if isinstance(received, str) else None), here)
                elif kind == "frame_summary":
                    entry = (summary_id(data["node_id"], data["series_id"], data["frame"]), None, here)
                else:
                    continue
            except (ValueError, KeyError, TypeError):
                continue  # the full reader (edge.codec.read_jsonl) skips and counts these lines too
            yield entry, data, offset


def open_wal(path: Path, synchronous: str, schema: Iterable[str]) -> sqlite3.Connection:
    """A ground SQLite file in WAL mode (refused where the filesystem cannot give it) with its
    schema, usable from several threads in turn; sqlite3 errors are the caller's to name."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"journal_mode is {mode}, WAL is needed")
        db.execute(f"PRAGMA synchronous={synchronous}")
        for statement in schema:
            db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db


class GroundIndex:
    """Ids, days and read offsets of a ground folder's JSON lines, in SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            # one receiver uses it at a time, but it may be built in one thread and served in another
            # the JSON lines are fsynced before the index; losing the index's last commit to a
            # power cut only makes the next start index those lines again
            self._db = open_wal(self.path, "NORMAL", _SCHEMA)
        except sqlite3.Error as exc:
            raise GroundStoreError(f"cannot open the ground index {self.path}: {exc}; delete it to have it "
                               "rebuilt from the JSON lines", where=str(self.path)) from exc

    def close(self) -> None:
        self._db.close()

    def covered(self, name: str) -> int:
        """Byte offset up to which the lines of ``name`` are indexed."""
        row = self._db.execute("SELECT covered FROM files WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def count(self) -> int:
        """Ids in the index."""
        return int(self._db.execute("SELECT count(*) FROM ids").fetchone()[0])

    def days(self) -> dict[str, tuple[int, int]]:
        """Day -> (records received that day, byte offset of the first of them)."""
        return {d: (int(n), int(o)) for d, n, o in self._db.execute("SELECT day, n, first_offset FROM days")}

    def known(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` that the index holds."""
        return ids_present(self._db, "ids", list(dict.fromkeys(ids)))

    def add(self, entries: Iterable[IndexEntry], covered: dict[str, int]) -> None:
        """Index the lines of one batch (ids, records per day) and move the files' covered offsets,
        in one transaction."""
        ids: list[tuple[str]] = []
        per_day: dict[str, list[int]] = {}
        for msg_id, day, offset in entries:
            ids.append((msg_id,))
            if day is not None:
                n_first = per_day.setdefault(day, [0, offset])
                n_first[0] += 1
                n_first[1] = min(n_first[1], offset)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO ids (id) VALUES (?)", ids)
            db.executemany("INSERT INTO days (day, n, first_offset) VALUES (?, ?, ?) ON CONFLICT(day) DO UPDATE "
                           "SET n = n + excluded.n, first_offset = min(first_offset, excluded.first_offset)",
                           [(d, n, o) for d, (n, o) in per_day.items()])
            db.executemany("INSERT INTO files (name, covered) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                           "SET covered = excluded.covered", list(covered.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def reset(self) -> None:
        """Forget everything (the files no longer match the index)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        for table in ("ids", "days", "files"):
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        db.execute("COMMIT")

    def catch_up(self, folder: Path, names: Iterable[str], batch: int = 20000) -> int:
        """Index the lines of each file past what the index covers; returns how many were added.

        A file shorter than its covered offset makes the whole index start again from nothing.
        """
        names = list(names)
        sizes = {n: (folder / n).stat().st_size if (folder / n).exists() else 0 for n in names}
        if any(sizes[n] < self.covered(n) for n in names):
            log.warning("ground.index_reset", index=str(self.path),
                        reason="a JSON-lines file is shorter than the index covers")
            self.reset()
        added = 0
        for name in names:
            start = self.covered(name)
            if start >= sizes[name]:
                continue
            pending: list[IndexEntry] = []
            for entry, _, end in scan_lines(folder / name, start):
                pending.append(entry)
                if len(pending) >= batch:
                    # the covered offset moves with each chunk, so a start cut short never
                    # counts a line twice
                    self.add(pending, {name: end})
                    added += len(pending)
                    pending = []
            self.add(pending, {name: sizes[name]})
            added += len(pending)
        return added
