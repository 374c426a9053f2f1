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

The records are also written as FITS tables (astropy, one row per record, stamps only in the JSON
lines), one file per UTC day of receipt: ``OUT/downlink-YYYYMMDD.fits``. The receiver keeps the
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
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import zmq

from edge.errors import RecordDecodeError, RecordError
from edge.ground.index import INDEX_NAME, GroundIndex, IndexEntry, fits_day, scan_lines
from edge.link.downlink import DATA, TAG, ZDATA, encode_ack, ground_socket
from edge.link.zdict import decompress
from edge.log import get_logger
from edge.records import (
    DownlinkRecord,
    FrameSummary,
    decode_msgpack,
    from_dict,
    read_jsonl,
    to_json_line,
)

__all__ = ["FITS_PATTERN", "FRAMES_NAME", "INDEX_NAME", "RECORDS_NAME", "GroundCounters", "GroundReceiver",
           "fits_day", "records_table", "write_fits"]

log = get_logger(__name__)

RECORDS_NAME = "downlink.jsonl"
FRAMES_NAME = "frames.jsonl"
#: the FITS table of the records received on one UTC day (``day`` is YYYYMMDD)
FITS_PATTERN = "downlink-{day}.fits"
_BATCH = 512
#: batches' row tables held for one day before they are stacked into one
_MAX_PARTS = 256


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


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


class GroundReceiver:
    """Receives downlink messages on a bound ROUTER and writes them under ``out_dir``."""

    def __init__(self, bind: str, out_dir: str | Path, *, fits_interval_s: float = 60.0,
                 context: zmq.Context[Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 utc_now: Callable[[], str] = _utc_now,
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
                _drop_partial_line(path)
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
                 if _fits_rows(self.out_dir / FITS_PATTERN.format(day=d)) != n}
        load = {d for d in stale | {today} if d in per_day}
        if load:
            self._rows.update(_rows_by_day(self.out_dir / RECORDS_NAME, load,
                                           start=min(per_day[d][1] for d in load)))
        self._dirty_days |= stale
        self._records_fh: IO[str] = (self.out_dir / RECORDS_NAME).open("a", encoding="utf-8")
        self._frames_fh: IO[str] = (self.out_dir / FRAMES_NAME).open("a", encoding="utf-8")
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
        self.address = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._fits_due = clock() + self.fits_interval_s
        self._n = dict.fromkeys(("received", "records", "summaries", "duplicates", "acks_sent",
                                 "write_failures", "fits_writes"), 0)
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
            parts.append(_rows_table([(r, received) for r in new_records]))
            if len(parts) > _MAX_PARTS:
                # many small batches between rewrites (or no rewrite before exit): one table each
                # would cost more than its rows, so stack them as they come
                self._rows[day] = [_stack(parts)]
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
        full, I/O error), after cutting the files back."""
        handles = {RECORDS_NAME: self._records_fh, FRAMES_NAME: self._frames_fh}
        sizes = {name: os.fstat(fh.fileno()).st_size for name, fh in handles.items()}
        try:
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
            self._reopen(sizes)
            return None
        return sizes

    def _reopen(self, sizes: dict[str, int]) -> None:
        # a failed write may leave bytes in the file and in the text buffer: drop both
        for fh in (self._records_fh, self._frames_fh):
            with contextlib.suppress(OSError):
                fh.close()
        for name, size in sizes.items():
            with contextlib.suppress(OSError):
                os.truncate(self.out_dir / name, size)
        self._records_fh = (self.out_dir / RECORDS_NAME).open("a", encoding="utf-8")
        self._frames_fh = (self.out_dir / FRAMES_NAME).open("a", encoding="utf-8")

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
        for day in sorted(self._dirty_days):
            parts = self._rows.get(day)
            if not parts:
                continue  # a day whose lines could not be read back: nothing to write
            table = _stack(parts)
            self._rows[day] = [table]
            path = self.out_dir / FITS_PATTERN.format(day=day)
            _write_table(table, path)
            written.append(path)
            self._n["fits_writes"] += 1
        self._dirty_days.clear()
        for day in [d for d in self._rows if d != today]:
            del self._rows[day]
        return written

    def counters(self) -> GroundCounters:
        """A snapshot of the counters."""
        return GroundCounters(malformed=dict(self._malformed), **self._n)

    def _close_files(self) -> None:
        for fh in (self._records_fh, self._frames_fh):
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


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline: it was never acknowledged, so the
    node sends it again, and appending to it would spoil the next line too."""
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        while True:
            fh.seek(size - block)
            tail = fh.read(block)
            cut = tail.rfind(b"\n")
            if cut >= 0 or block == size:
                break
            block = min(size, block * 2)
        keep = size - block + cut + 1 if cut >= 0 else 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("ground.partial_line_dropped", path=str(path), bytes=size - keep)


# (column, dtype, unit); dtype None: a string column. FITS has no unit for electrons: the
# flux columns keep theirs in their names (flux_e, flux_err_e)
_COLUMNS: tuple[tuple[str, str | None, str | None], ...] = (
    ("record_id", None, None), ("node_id", None, None), ("detector_id", None, None),
    ("series_id", None, None), ("frame", "i8", None), ("index", "i8", None),
    ("frame_time", None, None), ("processed_time", None, None), ("received_time", None, None),
    ("x", "f8", "pix"), ("y", "f8", "pix"), ("x_err", "f8", "pix"), ("y_err", "f8", "pix"),
    ("ra", "f8", "deg"), ("dec", "f8", "deg"), ("label", None, None), ("confidence", "f8", None),
    ("probs", None, None), ("entropy", "f8", None), ("aleatoric", "f8", None),
    ("epistemic", "f8", None), ("anomaly_score", "f8", None), ("anomaly_pvalue", "f8", None),
    ("snr", "f8", None), ("flux_e", "f8", None), ("flux_err_e", "f8", None),
    ("a_px", "f8", "pix"), ("b_px", "f8", "pix"), ("theta_rad", "f8", "rad"), ("flags", "i8", None),
    ("new", "?", None), ("reasons", None, None), ("priority", "f8", None),
    ("policy_version", "i8", None), ("engine_id", None, None), ("calibration_id", None, None),
)


def _fits_rows(path: Path) -> int | None:
    """Rows of a FITS table written here, or None when it is missing or unreadable."""
    from astropy.io import fits

    try:
        return int(fits.getheader(path, 1)["NAXIS2"])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def _rows_by_day(jsonl_path: Path, days: set[str], start: int = 0) -> dict[str, list[Any]]:
    """The FITS rows of the records received on ``days``, read from the JSON lines from byte
    ``start`` on (only those days' lines are decoded in full)."""
    grouped: dict[str, list[tuple[DownlinkRecord, str | None]]] = {}
    if not jsonl_path.exists():
        return {}
    for (_, day, _), data, _ in scan_lines(jsonl_path, start):
        if day not in days:
            continue
        try:
            msg = from_dict(data)
        except RecordError:
            continue  # read_jsonl skips and counts these lines too
        if isinstance(msg, DownlinkRecord):
            grouped.setdefault(day, []).append((msg, data.get("received_time")))
    return {day: [_rows_table(rows)] for day, rows in grouped.items()}


def _rows_table(rows: Sequence[tuple[DownlinkRecord, str | None]]) -> Any:
    """FITS rows of (record, received_time) pairs as an astropy Table (ra/dec NaN where None;
    probs as JSON; reasons comma-separated)."""
    from astropy.table import Table

    table = Table()
    for name, dtype, unit in _COLUMNS:
        values: list[Any] = []
        for rec, received in rows:
            if name == "received_time":
                values.append(received or "")
            elif name == "probs":
                values.append(json.dumps(rec.probs, separators=(",", ":")))
            elif name == "reasons":
                values.append(",".join(rec.reasons))
            elif name in ("ra", "dec"):
                v = getattr(rec, name)
                values.append(np.nan if v is None else v)
            else:
                values.append(getattr(rec, name))
        arr = np.array(values, dtype=dtype if dtype else "U") if values else np.zeros(0, dtype=dtype or "U1")
        table[name] = arr
        if unit:
            table[name].unit = unit
    return table


def records_table(path: str | Path) -> Any:
    """Every record of a ``downlink.jsonl`` as one astropy Table (the columns of the ground's FITS files)."""
    result = read_jsonl(path)
    return _rows_table([(m, t) for m, t in zip(result.messages, result.received_times, strict=True)
                        if isinstance(m, DownlinkRecord)])


def _stack(parts: list[Any]) -> Any:
    """One table of a day's row tables."""
    from astropy.table import vstack

    return vstack(parts, metadata_conflicts="silent") if len(parts) > 1 else parts[0]


def _write_table(table: Any, fits_path: Path) -> None:
    tmp = fits_path.with_name(fits_path.name + ".tmp")
    table.write(tmp, format="fits", overwrite=True)
    os.replace(tmp, fits_path)


def write_fits(jsonl_path: str | Path, fits_path: str | Path) -> None:
    """Write every record of ``jsonl_path`` to ``fits_path`` as one binary table, atomically
    (the whole file at once, e.g. to rebuild one table of a mission offline)."""
    _write_table(records_table(jsonl_path), Path(fits_path))
