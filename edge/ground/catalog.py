"""The review desk's catalog: every stored record and frame summary by the fields a person filters on.

``DIR/review.sqlite`` (WAL) holds one row per record of ``downlink.jsonl`` (node, detector, class,
reasons, priority, p-value, times, S/N, engine, and the byte offset of its line) and one row per
summary of ``frames.jsonl``. Like the ground's index (:mod:`edge.ground.index`) it is an index over
the JSON lines, which stay the truth: it is read-only towards them, it catches up with what the
receiver appended since (:meth:`Catalog.catch_up`, a line only once its newline is written), and it
starts again from nothing when a file is shorter than what it covers. Deleting it loses nothing.

A record's full content (its stamp, its probabilities) is read back from its line on demand
(:meth:`Catalog.record`), so the catalog stays small: about 200 bytes a record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.codec import from_dict
from edge.errors import ConfigError, GroundStoreError, RecordError
from edge.ground.index import open_wal
from edge.ground.writers import FRAMES_NAME, RECORDS_NAME
from edge.log import get_logger
from edge.records import REASONS, DownlinkRecord, FrameSummary

__all__ = ["CATALOG_NAME", "SORTS", "Catalog", "RecordQuery", "RecordRow", "complete_lines"]

log = get_logger(__name__)

CATALOG_NAME = "review.sqlite"
#: sort key -> ORDER BY clause; the record id breaks ties so that pages never overlap
SORTS = {
    "priority": "priority DESC, record_id",
    "pvalue": "anomaly_pvalue ASC, record_id",
    "time": "received_time DESC, record_id",
    "snr": "snr DESC, record_id",
}
_REASON_BIT = {reason: 1 << i for i, reason in enumerate(REASONS)}
_ROW_FIELDS = ("record_id", "node_id", "detector_id", "series_id", "frame", "label", "confidence",
               "reasons", "priority", "anomaly_pvalue", "snr", "frame_time", "received_time", "engine_id")

_INSERT_RECORD = "INSERT OR IGNORE INTO records VALUES (" + ",".join("?" * 16) + ")"  # noqa: S608 - placeholders only
_INSERT_FRAME = "INSERT OR REPLACE INTO frames VALUES (" + ",".join("?" * 11) + ")"  # noqa: S608 - placeholders only
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records (record_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, detector_id TEXT NOT NULL, "
    "series_id TEXT NOT NULL, frame INTEGER NOT NULL, label TEXT NOT NULL, confidence REAL NOT NULL, "
    "reasons TEXT NOT NULL, reason_bits INTEGER NOT NULL, priority REAL NOT NULL, anomaly_pvalue REAL NOT NULL, "
    "snr REAL NOT NULL, frame_time TEXT NOT NULL, received_time TEXT NOT NULL, engine_id TEXT NOT NULL, "
    "offset INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_priority ON records (priority DESC, record_id)",
    "CREATE INDEX IF NOT EXISTS records_pvalue ON records (anomaly_pvalue, record_id)",
    "CREATE INDEX IF NOT EXISTS records_time ON records (received_time DESC, record_id)",
    "CREATE INDEX IF NOT EXISTS records_snr ON records (snr DESC, record_id)",
    "CREATE INDEX IF NOT EXISTS records_node ON records (node_id)",
    "CREATE INDEX IF NOT EXISTS records_label ON records (label)",
    "CREATE TABLE IF NOT EXISTS frames (node_id TEXT NOT NULL, series_id TEXT NOT NULL, frame INTEGER NOT NULL, "
    "frame_time TEXT NOT NULL, detections INTEGER NOT NULL, sent INTEGER NOT NULL, suppressed INTEGER NOT NULL, "
    "dropped INTEGER NOT NULL, sent_by_reason TEXT NOT NULL, engine_id TEXT NOT NULL, offset INTEGER NOT NULL, "
    "PRIMARY KEY (node_id, series_id, frame))",
    "CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY, covered INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class RecordQuery:
    """Which records a list shows, in which order, which page (pages count from 1)."""

    node_id: str = ""
    reason: str = ""
    label: str = ""
    since: str = ""      # ISO 8601 UTC, inclusive, on the ground's received_time
    until: str = ""      # ISO 8601 UTC, exclusive
    sort: str = "priority"
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise GroundStoreError(f"sort {self.sort!r} is not one of {sorted(SORTS)}", where="review query")
        if self.reason and self.reason not in _REASON_BIT:
            raise GroundStoreError(f"reason {self.reason!r} is not one of {list(REASONS)}", where="review query")
        if self.page < 1 or not 1 <= self.per_page <= 500:
            raise GroundStoreError("page must be >= 1 and per_page in 1..500", where="review query")


@dataclass(frozen=True)
class RecordRow:
    """One line of the record list."""

    record_id: str
    node_id: str
    detector_id: str
    series_id: str
    frame: int
    label: str
    confidence: float
    reasons: tuple[str, ...]
    priority: float
    anomaly_pvalue: float
    snr: float
    frame_time: str
    received_time: str
    engine_id: str


def complete_lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line of ``path`` from byte ``start`` that its newline ends: a last line
    still being written is left for the next call."""
    with path.open("rb") as fh:
        fh.seek(start)
        offset = start
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            yield offset, raw
            offset += len(raw)


class Catalog:
    """Records and frame summaries of one ground folder, in SQLite, for the review desk."""

    def __init__(self, ground_dir: Path) -> None:
        self.ground_dir = Path(ground_dir)
        if not (self.ground_dir / RECORDS_NAME).exists() and not (self.ground_dir / FRAMES_NAME).exists():
            raise ConfigError(f"holds neither {RECORDS_NAME} nor {FRAMES_NAME}: give the folder that "
                              "`astro-edge ground --out` writes", where=str(self.ground_dir))
        self.path = self.ground_dir / CATALOG_NAME
        self._lock = threading.Lock()   # one connection, shared by the web server's threads
        try:
            self._db = open_wal(self.path, "NORMAL", _SCHEMA)
        except sqlite3.Error as exc:
            raise GroundStoreError(f"cannot open the review catalog {self.path}: {exc}; delete it to have it "
                                   "rebuilt from the JSON lines", where=str(self.path)) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- catching up with the JSON lines -------------------------------------------------------

    def catch_up(self, batch: int = 20000) -> int:
        """Add the lines the receiver appended since the last call; returns how many rows were added."""
        with self._lock:
            names = (RECORDS_NAME, FRAMES_NAME)
            sizes = {n: (self.ground_dir / n).stat().st_size if (self.ground_dir / n).exists() else 0 for n in names}
            covered = {n: self._covered(n) for n in names}
            if any(sizes[n] < covered[n] for n in names):
                log.warning("review.catalog_reset", catalog=str(self.path),
                            reason="a JSON-lines file is shorter than the catalog covers")
                self._reset()
                covered = dict.fromkeys(names, 0)
            added = 0
            for name in names:
                if covered[name] < sizes[name]:
                    added += self._scan(name, covered[name], batch)
            return added

    def _covered(self, name: str) -> int:
        row = self._db.execute("SELECT covered FROM files WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _reset(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        for table in ("records", "frames", "files"):
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._db.execute("COMMIT")

    def _scan(self, name: str, start: int, batch: int) -> int:
        rows: list[tuple[Any, ...]] = []
        added, end, skipped = 0, start, 0
        for offset, raw in complete_lines(self.ground_dir / name, start):
            end = offset + len(raw)
            try:
                row = _row_of(json.loads(raw), offset, name)
            except (ValueError, KeyError, TypeError):
                row = None
            if row is None:
                skipped += 1
            else:
                rows.append(row)
            if len(rows) >= batch:
                self._add(name, rows, end)
                added, rows = added + len(rows), []
        self._add(name, rows, end)
        if skipped:
            log.warning("review.lines_skipped", file=name, lines=skipped,
                        reason="not a record or summary of this file (the receiver counted them as malformed)")
        return added + len(rows)

    def _add(self, name: str, rows: list[tuple[Any, ...]], covered: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if name == RECORDS_NAME:
                db.executemany(_INSERT_RECORD, rows)
            else:
                db.executemany(_INSERT_FRAME, rows)
            db.execute("INSERT INTO files (name, covered) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                       "SET covered = excluded.covered", (name, covered))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- reading ------------------------------------------------------------------------------

    def query(self, q: RecordQuery) -> tuple[list[RecordRow], int]:
        """The rows of one page of records and the number of records the filters keep."""
        where, params = _where(q)
        with self._lock:
            total = int(self._db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0])  # noqa: S608 - built from fixed clauses; values bound
            cursor = self._db.execute(
                f"SELECT {', '.join(_ROW_FIELDS)} FROM records{where} ORDER BY {SORTS[q.sort]} "  # noqa: S608 - as above
                "LIMIT ? OFFSET ?", [*params, q.per_page, (q.page - 1) * q.per_page])
            rows = [_record_row(r) for r in cursor]
        return rows, total

    def choices(self) -> dict[str, list[str]]:
        """The nodes and classes the records hold (the list's filter menus)."""
        with self._lock:
            return {col: [r[0] for r in self._db.execute(f"SELECT DISTINCT {col} FROM records ORDER BY {col}")]  # noqa: S608 - fixed column names
                    for col in ("node_id", "label")}

    def offset(self, record_id: str) -> int | None:
        """Byte offset of a record's line in downlink.jsonl, None when the catalog does not hold it."""
        with self._lock:
            row = self._db.execute("SELECT offset FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return int(row[0]) if row else None

    def record(self, record_id: str) -> DownlinkRecord | None:
        """A record as stored, read back from its line; None when the catalog does not hold it."""
        offset = self.offset(record_id)
        if offset is None:
            return None
        msg = self._read(RECORDS_NAME, offset)
        if not isinstance(msg, DownlinkRecord) or msg.record_id != record_id:
            raise GroundStoreError(f"the line at byte {offset} of {RECORDS_NAME} is not record {record_id}; "
                                   f"delete {CATALOG_NAME} to rebuild it", where=str(self.ground_dir))
        return msg

    def received_time(self, record_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT received_time FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return str(row[0]) if row else ""

    def summary(self, node_id: str, series_id: str, frame: int) -> FrameSummary | None:
        """The summary of a record's frame, when it reached the ground."""
        with self._lock:
            row = self._db.execute("SELECT offset FROM frames WHERE node_id = ? AND series_id = ? AND frame = ?",
                                   (node_id, series_id, frame)).fetchone()
        if row is None:
            return None
        msg = self._read(FRAMES_NAME, int(row[0]))
        return msg if isinstance(msg, FrameSummary) else None

    def health(self, bins: int = 60) -> dict[str, dict[str, Any]]:
        """Per node: frames, detections, sent, dropped frames, and frames, drops and sent by reason
        in ``bins`` equal spans of frame time (``times``: each span's first frame time)."""
        with self._lock:
            rows = self._db.execute("SELECT node_id, frame_time, detections, sent, dropped, sent_by_reason "
                                    "FROM frames ORDER BY node_id, frame_time").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for node in sorted({r[0] for r in rows}):
            mine = [r for r in rows if r[0] == node]
            step = max(1, -(-len(mine) // bins))
            series: dict[str, list[int]] = {reason: [] for reason in REASONS}
            times: list[str] = []
            frames_per_bin: list[int] = []
            dropped_per_bin: list[int] = []
            for start in range(0, len(mine), step):
                chunk = mine[start:start + step]
                times.append(chunk[0][1])
                frames_per_bin.append(len(chunk))
                dropped_per_bin.append(sum(r[4] for r in chunk))
                sums = dict.fromkeys(REASONS, 0)
                for r in chunk:
                    for reason, n in json.loads(r[5]).items():
                        sums[reason] = sums.get(reason, 0) + int(n)
                for reason in REASONS:
                    series[reason].append(sums[reason])
            out[node] = {"frames": len(mine), "detections": sum(r[2] for r in mine), "sent": sum(r[3] for r in mine),
                         "dropped": sum(r[4] for r in mine), "times": times, "frames_per_bin": frames_per_bin, "dropped_per_bin": dropped_per_bin,
                         "sent_by_reason": series}
        return out

    def _read(self, name: str, offset: int) -> DownlinkRecord | FrameSummary:
        path = self.ground_dir / name
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                line = fh.readline()
            data = json.loads(line)
            data.pop("received_time", None)
            return from_dict(data)
        except (OSError, ValueError, KeyError, TypeError, RecordError) as exc:
            raise GroundStoreError(f"cannot read the line at byte {offset} of {path}: {exc}",
                                   where=str(path)) from exc


def _record_row(r: Sequence[Any]) -> RecordRow:
    """A list row from the columns of ``_ROW_FIELDS``."""
    return RecordRow(r[0], r[1], r[2], r[3], int(r[4]), r[5], float(r[6]), tuple(r[7].split(",")) if r[7] else (),
                     float(r[8]), float(r[9]), float(r[10]), r[11], r[12], r[13])


def _row_of(data: dict[str, Any], offset: int, name: str) -> tuple[Any, ...] | None:
    kind = data.get("kind")
    if name == RECORDS_NAME and kind == "record":
        reasons = [str(r) for r in data["reasons"]]
        return (str(data["record_id"]), str(data["node_id"]), str(data["detector_id"]), str(data["series_id"]),
                int(data["frame"]), str(data["label"]), float(data["confidence"]), ",".join(reasons),
                sum(_REASON_BIT.get(r, 0) for r in reasons), float(data["priority"]),
                float(data["anomaly_pvalue"]), float(data["snr"]), str(data["frame_time"]),
                str(data.get("received_time") or ""), str(data["engine_id"]), offset)
    if name == FRAMES_NAME and kind == "frame_summary":
        return (str(data["node_id"]), str(data["series_id"]), int(data["frame"]), str(data["frame_time"]),
                int(data["detections"]), int(data["sent"]), int(data["suppressed"]),
                len(data["dropped_frames"]), json.dumps(data["sent_by_reason"]), str(data["engine_id"]), offset)
    return None


def _where(q: RecordQuery) -> tuple[str, Sequence[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("node_id", q.node_id), ("label", q.label)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if q.reason:
        clauses.append("(reason_bits & ?) != 0")
        params.append(_REASON_BIT[q.reason])
    if q.since:
        clauses.append("received_time >= ?")
        params.append(q.since)
    if q.until:
        clauses.append("received_time < ?")
        params.append(q.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
