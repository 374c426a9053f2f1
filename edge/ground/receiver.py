"""The ground receiver: takes downlinked messages, stores them durably, acknowledges, drops duplicates.

For each batch of messages it decodes every one (a malformed message is counted by reason, logged
and not acknowledged), appends the new records to ``OUT/downlink.jsonl`` and the frame summaries to
``OUT/frames.jsonl`` with ``received_time`` added, flushes and fsyncs both files, and only then
acknowledges the batch's ids, duplicates included. The ids it stored are looked up in an SQLite
index beside the files (:mod:`edge.ground.index`), written after the fsync and before the ack, so
a restarted ground still drops duplicates without holding a mission's ids in memory or reading
every line again; lines the index missed (a crash between fsync and index) are indexed at the next
start. A last line a crash left without its newline is cut first. A batch that cannot be stored
(disk full) is cut back out of the files and not acknowledged.

The records are also written as FITS tables (:mod:`edge.ground.writers`: astropy, one row per
record, stamps only in the JSON lines), one file per UTC day of receipt: ``OUT/downlink-YYYYMMDD.fits``. The receiver keeps the
rows of the days it still has to write in memory, built from the records as they arrive, and
rewrites a day's file every ``fits_interval_s`` seconds while records for it come in and when the
receiver closes (temporary file, then rename); a finished day is written once more and dropped
from memory. So the cost of a rewrite and the memory held follow one day's records, not the
mission's. At start, a day whose file is missing or holds another number of rows than the JSON
lines (a crash between a batch and the next rewrite) is rebuilt from them.

This module owns the ground's socket and files; it never touches the node's spool.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import zmq

from edge.codec import decode_msgpack, to_json_line
from edge.errors import RecordDecodeError, RecordError
from edge.ground.index import INDEX_NAME, GroundIndex, IndexEntry, fits_day
from edge.ground.writers import (
    FITS_PATTERN,
    FRAMES_NAME,
    RECORDS_NAME,
    drop_partial_line,
    fits_rows,
    rows_by_day,
    rows_table,
    stack,
    write_table,
)
from edge.link.wire import DATA, TAG, ZDATA, encode_ack, ground_socket
from edge.link.zdict import decompress
from edge.log import get_logger
from edge.records import DownlinkRecord, FrameSummary
from firmware_bridge.protocol import utc_now as protocol_utc_now

__all__ = ["FITS_PATTERN", "FRAMES_NAME", "INDEX_NAME", "RECORDS_NAME", "GroundCounters", "GroundReceiver"]

log = get_logger(__name__)

_BATCH = 512
#: batches' row tables held for one day before they are stacked into one
_MAX_PARTS = 256


@dataclass(frozen=True)
class GroundCounters:
    """What the ground receiver did since it started."""

    received: int                 # messages taken off the socket
    records: int                  # new records written
    summaries: int                # new frame summaries written
    duplicates: int               # messages whose id was already stored (acknowledged again)
    malformed: dict[str, int]     # reason -> messages that could not be read (not acknowledged)
    acks_sent: int                # ack messages sent
    write_failures: int           # batches that could not be stored (not acknowledged)
    fits_writes: int              # FITS files (re)written
    #: why the ground cannot store what arrives now (disk full, I/O error, read-only media), and
    #: since when (UTC); None while batches are stored
    degraded: dict[str, str] | None = None


class GroundReceiver:
    """Receives downlink messages on a bound ROUTER and writes them under ``out_dir``."""

    def __init__(self, bind: str, out_dir: str | Path, *, fits_interval_s: float = 60.0,
                 context: zmq.Context[Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 utc_now: Callable[[], str] = protocol_utc_now,
                 curve: tuple[str, Sequence[str]] | None = None) -> None:
        """``curve`` = (the ground's NAME.key_secret, the NAME.key files of the nodes allowed in)."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fits_interval_s = float(fits_interval_s)
        self._clock = clock
        self._utc_now = utc_now
        for name in (RECORDS_NAME, FRAMES_NAME):
            path = self.out_dir / name
            if path.exists():
                drop_partial_line(path)
        self._index = GroundIndex(self.out_dir / INDEX_NAME)
        try:
            caught_up = self._index.catch_up(self.out_dir, (RECORDS_NAME, FRAMES_NAME))
            per_day = self._index.days()
        except BaseException:
            self._index.close()
            raise
        # index entries of stored lines whose index write failed: retried with the next batch
        self._index_pending: list[IndexEntry] = []
        # rows of the days whose FITS file is still to be written, and which of them changed
        self._rows: dict[str, list[Any]] = {}
        self._dirty_days: set[str] = set()
        today = fits_day(utc_now())
        stale = {d for d, (n, _) in per_day.items()
                 if fits_rows(self.out_dir / FITS_PATTERN.format(day=d)) != n}
        load = {d for d in stale | {today} if d in per_day}
        if load:
            self._rows.update(rows_by_day(self.out_dir / RECORDS_NAME, load,
                                           start=min(per_day[d][1] for d in load)))
        self._dirty_days |= stale
        self._records_fh: IO[str] | None = (self.out_dir / RECORDS_NAME).open("a", encoding="utf-8")
        self._frames_fh: IO[str] | None = (self.out_dir / FRAMES_NAME).open("a", encoding="utf-8")
        # the files' directory entries must be durable too before the first ack
        dir_fd = os.open(self.out_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        try:
            self._sock: zmq.Socket[Any] | None
            self._sock, self._auth = ground_socket(self._context, bind, curve)
        except BaseException:
            self._close_files()
            raise
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._fits_due = clock() + self.fits_interval_s
        self._n = dict.fromkeys(("received", "records", "summaries", "duplicates", "acks_sent",
                                 "write_failures", "fits_writes"), 0)
        self._degraded: dict[str, str] | None = None
        self._malformed: dict[str, int] = {}
        log.info("ground.started", address=self.address, out=str(self.out_dir), seen=self._index.count(),
                 indexed_at_start=caught_up, fits_days_to_rebuild=sorted(stale))

    def poll(self, timeout_ms: int = 100) -> int:
        """Handle what arrives within ``timeout_ms``; returns the number of messages taken."""
        sock = self._socket()
        taken = 0
        if sock.poll(timeout_ms, zmq.POLLIN):
            batch: list[list[bytes]] = []
            while len(batch) < _BATCH:
                try:
                    batch.append(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            taken = len(batch)
            self._handle(batch)
        if self.fits_interval_s > 0 and self._clock() >= self._fits_due:
            self.write_fits()
        return taken

    def serve(self, should_stop: Callable[[], bool], timeout_ms: int = 100) -> None:
        """Poll until ``should_stop()`` is true."""
        while not should_stop():
            self.poll(timeout_ms)

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            raise zmq.ZMQError(zmq.ENOTSOCK, "the ground receiver is closed")
        return self._sock

    def _handle(self, batch: list[list[bytes]]) -> None:
        acks: dict[bytes, list[str]] = {}
        received = self._utc_now()
        decoded: list[tuple[bytes, DownlinkRecord | FrameSummary]] = []
        for parts in batch:
            self._n["received"] += 1
            peer = parts[0] if parts else b""
            try:
                decoded.append((peer, self._decode(parts)))
            except RecordError as exc:
                self._malformed[exc.reason] = self._malformed.get(exc.reason, 0) + 1
                log.warning("ground.malformed", reason=exc.reason, error=str(exc), parts=len(parts))
        stored = self._known({msg.id for _, msg in decoded})
        lines: dict[str, list[str]] = {RECORDS_NAME: [], FRAMES_NAME: []}
        new: dict[str, list[tuple[str, str | None]]] = {RECORDS_NAME: [], FRAMES_NAME: []}
        new_ids: set[str] = set()
        new_records: list[DownlinkRecord] = []
        duplicates = 0
        day = fits_day(received)
        for peer, msg in decoded:
            if msg.id in stored or msg.id in new_ids:
                duplicates += 1
            else:
                if isinstance(msg, DownlinkRecord):
                    name, msg_day = RECORDS_NAME, day
                    new_records.append(msg)
                else:
                    name, msg_day = FRAMES_NAME, None
                lines[name].append(to_json_line(msg, received_time=received) + "\n")
                new[name].append((msg.id, msg_day))
                new_ids.add(msg.id)
            acks.setdefault(peer, []).append(msg.id)
        if new_ids:
            before = self._append(lines)
            if before is None:
                return  # nothing of this batch is acknowledged: the node sends it again
            self._index_batch(lines, new, before)
        if new_records:
            parts = self._rows.setdefault(day, [])
            parts.append(rows_table([(r, received) for r in new_records]))
            if len(parts) > _MAX_PARTS:
                # many small batches between rewrites (or no rewrite before exit): one table each
                # would cost more than its rows, so stack them as they come
                self._rows[day] = [stack(parts)]
            self._dirty_days.add(day)
        self._n["records"] += len(lines[RECORDS_NAME])
        self._n["summaries"] += len(lines[FRAMES_NAME])
        self._n["duplicates"] += duplicates
        sock = self._socket()
        for peer, ids in acks.items():
            try:
                sock.send_multipart([peer, *encode_ack(ids)], flags=zmq.NOBLOCK)
                self._n["acks_sent"] += 1
            except zmq.ZMQError as exc:
                # the node did not get its ack: it retries after its timeout and we ack the duplicate
                log.warning("ground.ack_failed", count=len(ids), error=str(exc))

    def _known(self, ids: set[str]) -> set[str]:
        """The ids among ``ids`` already stored (in the index, or stored but not yet indexed)."""
        pending = {entry[0] for entry in self._index_pending}
        return (ids & pending) | self._index.known(ids - pending)

    def _index_batch(self, lines: dict[str, list[str]], new: dict[str, list[tuple[str, str | None]]],
                     before: dict[str, int]) -> None:
        """Index a stored batch (and any entries an earlier failure left); the lines are durable
        already, so a failure here is logged and retried, never a reason to withhold the ack."""
        entries = list(self._index_pending)
        covered = {}
        for name, rows in new.items():
            offset = before[name]
            for (msg_id, day), line in zip(rows, lines[name], strict=True):
                entries.append((msg_id, day, offset))
                offset += len(line.encode("utf-8"))
            covered[name] = offset
        try:
            self._index.add(entries, covered)
        except sqlite3.Error as exc:
            self._index_pending = entries
            log.error("ground.index_failed", error=str(exc), pending=len(entries), index=str(self._index.path))
        else:
            self._index_pending = []

    def _append(self, lines: dict[str, list[str]]) -> dict[str, int] | None:
        """Append and fsync; returns each file's size before the append, or None on failure (disk
        full, I/O error, read-only media), after cutting the files back."""
        sizes: dict[str, int] = {}
        try:
            handles = self._handles()
            sizes = {name: os.fstat(fh.fileno()).st_size for name, fh in handles.items()}
            for name, fh in handles.items():
                if lines[name]:
                    fh.write("".join(lines[name]))
                    fh.flush()
                    # acknowledge only what is on disk: an acked record must survive a ground crash
                    os.fsync(fh.fileno())
        except OSError as exc:
            self._n["write_failures"] += 1
            log.error("ground.write_failed", error=str(exc), messages=sum(map(len, lines.values())),
                      out=str(self.out_dir))
            if self._degraded is None:
                # a state, not a crash: nothing is acknowledged, so the nodes keep their records
                # and send them again until the disk takes them
                self._degraded = {"error": str(exc), "since": self._utc_now()}
                log.warning("ground.degraded", error=str(exc), out=str(self.out_dir))
            self._cut_back(sizes)
            return None
        if self._degraded is not None:
            log.warning("ground.recovered", since=self._degraded["since"],
                        write_failures=self._n["write_failures"], out=str(self.out_dir))
            self._degraded = None
        return sizes

    def _handles(self) -> dict[str, IO[str]]:
        """The two files, opened again after a failure closed them (raises OSError while the disk
        refuses, e.g. remounted read-only)."""
        if self._records_fh is None or self._records_fh.closed:
            self._records_fh = (self.out_dir / RECORDS_NAME).open("a", encoding="utf-8")
        if self._frames_fh is None or self._frames_fh.closed:
            self._frames_fh = (self.out_dir / FRAMES_NAME).open("a", encoding="utf-8")
        return {RECORDS_NAME: self._records_fh, FRAMES_NAME: self._frames_fh}

    def _cut_back(self, sizes: dict[str, int]) -> None:
        """A failed write may leave bytes in the file and in the text buffer: close both files
        (their buffers go) and cut them back to ``sizes``; the next batch opens them again."""
        for fh in (self._records_fh, self._frames_fh):
            with contextlib.suppress(OSError):
                if fh is not None:
                    fh.close()
        for name, size in sizes.items():
            with contextlib.suppress(OSError):
                os.truncate(self.out_dir / name, size)

    @staticmethod
    def _decode(parts: list[bytes]) -> DownlinkRecord | FrameSummary:
        if len(parts) != 4 or parts[1] != TAG or parts[2] not in (DATA, ZDATA):
            raise RecordDecodeError(f"not a downlink data message ({len(parts)} parts; expected "
                                    f"identity, {TAG!r}, {DATA!r} or {ZDATA!r}, payload)", where="ground")
        return decode_msgpack(parts[3] if parts[2] == DATA else decompress(parts[3]))

    def write_fits(self) -> list[Path]:
        """Rewrite the FITS file of every day with new records (temporary file, then rename) and
        drop the rows of finished days from memory; returns the files written."""
        self._fits_due = self._clock() + self.fits_interval_s
        today = fits_day(self._utc_now())
        written = []
        failed: set[str] = set()
        for day in sorted(self._dirty_days):
            parts = self._rows.get(day)
            if not parts:
                continue  # a day whose lines could not be read back: nothing to write
            table = stack(parts)
            self._rows[day] = [table]
            path = self.out_dir / FITS_PATTERN.format(day=day)
            try:
                write_table(table, path)
            except OSError as exc:
                # the JSON lines hold every record: the day stays due and is written when the
                # disk takes it (or rebuilt from the lines at the next start)
                failed.add(day)
                log.error("ground.fits_failed", day=day, error=str(exc), path=str(path))
                with contextlib.suppress(OSError):
                    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
                continue
            written.append(path)
            self._n["fits_writes"] += 1
        self._dirty_days = failed
        for day in [d for d in self._rows if d != today and d not in failed]:
            del self._rows[day]
        return written

    def counters(self) -> GroundCounters:
        """A snapshot of the counters."""
        return GroundCounters(malformed=dict(self._malformed),
                              degraded=dict(self._degraded) if self._degraded else None, **self._n)

    def _close_files(self) -> None:
        for fh in (self._records_fh, self._frames_fh):
            if fh is not None:
                fh.close()
        self._index.close()

    def close(self) -> None:
        """Write the FITS table, close files and socket; safe to call twice."""
        if self._sock is None:
            return
        try:
            self.write_fits()
        finally:
            self._sock.close(linger=0)
            self._sock = None
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            self._close_files()
            if self._own_context:
                self._context.term()
            log.info("ground.stopped", **{k: v for k, v in self._n.items()},
                     malformed=sum(self._malformed.values()))

    def __enter__(self) -> GroundReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
