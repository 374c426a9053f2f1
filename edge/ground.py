"""The ground receiver: takes downlinked messages, stores them durably, acknowledges, drops duplicates.

For each batch of messages it decodes every one (a malformed message is counted by reason, logged
and not acknowledged), appends the new records to ``OUT/downlink.jsonl`` and the frame summaries to
``OUT/frames.jsonl`` with ``received_time`` added, flushes and fsyncs both files, and only then
acknowledges the batch's ids, duplicates included. Ids already in the files when it starts count
as seen, so a restarted ground still drops duplicates; a last line a crash left without its
newline is cut first. A batch that cannot be stored (disk full) is cut back out of the files and
not acknowledged. ``OUT/downlink.fits`` (astropy table, one row per record, stamps only in the
JSON lines) is rewritten from ``downlink.jsonl`` every ``fits_interval_s`` seconds and when the
receiver closes, written to a temporary file and renamed.

This module owns the ground's socket and files; it never touches the node's spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import zmq

from edge.downlink import DATA, TAG, ZDATA, encode_ack, ground_socket
from edge.errors import RecordDecodeError, RecordError
from edge.log import get_logger
from edge.records import DownlinkRecord, FrameSummary, decode_msgpack, read_jsonl, to_json_line
from edge.zdict import decompress

__all__ = ["FITS_NAME", "FRAMES_NAME", "RECORDS_NAME", "GroundCounters", "GroundReceiver",
           "records_table", "write_fits"]

log = get_logger(__name__)

RECORDS_NAME = "downlink.jsonl"
FRAMES_NAME = "frames.jsonl"
FITS_NAME = "downlink.fits"
_BATCH = 512


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
    fits_writes: int              # times downlink.fits was rewritten


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
        self._seen: set[str] = set()
        for name in (RECORDS_NAME, FRAMES_NAME):
            path = self.out_dir / name
            if path.exists():
                _drop_partial_line(path)
                self._seen.update(m.id for m in read_jsonl(path).messages)
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
        self._dirty = True
        self._n = dict.fromkeys(("received", "records", "summaries", "duplicates", "acks_sent",
                                 "write_failures", "fits_writes"), 0)
        self._malformed: dict[str, int] = {}
        log.info("ground.started", address=self.address, out=str(self.out_dir), seen=len(self._seen))

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
        lines: dict[str, list[str]] = {RECORDS_NAME: [], FRAMES_NAME: []}
        new_ids: set[str] = set()
        duplicates = 0
        for parts in batch:
            self._n["received"] += 1
            peer = parts[0] if parts else b""
            try:
                msg = self._decode(parts)
            except RecordError as exc:
                self._malformed[exc.reason] = self._malformed.get(exc.reason, 0) + 1
                log.warning("ground.malformed", reason=exc.reason, error=str(exc), parts=len(parts))
                continue
            if msg.id in self._seen or msg.id in new_ids:
                duplicates += 1
            else:
                name = RECORDS_NAME if isinstance(msg, DownlinkRecord) else FRAMES_NAME
                lines[name].append(to_json_line(msg, received_time=received) + "\n")
                new_ids.add(msg.id)
            acks.setdefault(peer, []).append(msg.id)
        if new_ids and not self._append(lines):
            return  # nothing of this batch is acknowledged: the node sends it again
        self._seen.update(new_ids)
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

    def _append(self, lines: dict[str, list[str]]) -> bool:
        """Append and fsync; on failure (disk full, I/O error) cut the files back and say False."""
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
            return False
        self._dirty = True
        return True

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

    def write_fits(self) -> Path:
        """Rewrite ``downlink.fits`` from ``downlink.jsonl`` (temporary file, then rename)."""
        self._fits_due = self._clock() + self.fits_interval_s
        path = self.out_dir / FITS_NAME
        if not self._dirty and path.exists():
            return path
        for fh in (self._records_fh, self._frames_fh):
            fh.flush()
        write_fits(self.out_dir / RECORDS_NAME, path)
        self._dirty = False
        self._n["fits_writes"] += 1
        return path

    def counters(self) -> GroundCounters:
        """A snapshot of the counters."""
        return GroundCounters(malformed=dict(self._malformed), **self._n)

    def _close_files(self) -> None:
        for fh in (self._records_fh, self._frames_fh):
            fh.close()

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


def records_table(path: str | Path) -> Any:
    """The records of a ``downlink.jsonl`` as an astropy Table (ra/dec NaN where None; probs as JSON)."""
    from astropy.table import Table

    result = read_jsonl(path)
    rows = [(m, t) for m, t in zip(result.messages, result.received_times, strict=True)
            if isinstance(m, DownlinkRecord)]
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


def write_fits(jsonl_path: str | Path, fits_path: str | Path) -> None:
    """Write the records of ``jsonl_path`` to ``fits_path`` as a binary table, atomically."""
    fits_path = Path(fits_path)
    table = records_table(jsonl_path)
    tmp = fits_path.with_name(fits_path.name + ".tmp")
    table.write(tmp, format="fits", overwrite=True)
    os.replace(tmp, fits_path)
