"""The hardware-in-the-loop rig: play a detector into a node, record a live feed, score what came down.

``stream`` plays digital-twin frames, ``replay`` plays FITS frames or a recording, ``record``
stores raw multipart messages byte-exactly, and ``score`` matches downlinked records to truth.
Everything goes through the frame protocol (``FrameSender``), so the node under test cannot
tell the rig from a DAQ. The scoring core (``match_and_score``) is pure; files and sockets stay in
the thin functions around it. The twin is imported only by ``stream``; the rig must never import
the node (``edge`` beyond its errors and logging).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq
from numpy.typing import NDArray

from edge.errors import ConfigError
from edge.log import get_logger
from firmware_bridge.protocol import MAX_KEYWORDS, MAX_STRING_VALUE_CHARS, format_utc, utc_now
from firmware_bridge.sender import FrameSender
from firmware_bridge.sockets import open_socket

log = get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# the recording file: magic, then records of (received time, parts), all little-endian

RECORDING_MAGIC = b"AEREC01\n"
_RECORD_HEAD = struct.Struct("<QI")  # received_unix_ns, n_parts
_PART_LEN = struct.Struct("<Q")
MAX_RECORDED_PARTS = 64


@dataclass(frozen=True)
class Recorded:
    """One recorded multipart message: arrival time (UNIX ns, UTC) and its parts, byte-exact."""

    received_unix_ns: int
    parts: tuple[bytes, ...]


def write_record(out: IO[bytes], parts: Sequence[Any], received_unix_ns: int) -> int:
    """Append one message to an open recording; return the bytes written."""
    views = [memoryview(getattr(p, "buffer", p)).cast("B") for p in parts]
    out.write(_RECORD_HEAD.pack(received_unix_ns, len(views)))
    for v in views:
        out.write(_PART_LEN.pack(len(v)))
        out.write(v)
    return _RECORD_HEAD.size + sum(_PART_LEN.size + len(v) for v in views)


def is_recording(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the recording magic."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(len(RECORDING_MAGIC)) == RECORDING_MAGIC


def read_recording(path: Path) -> Iterator[Recorded]:
    """The messages of a recording in order; a truncated last record is logged and skipped."""
    with path.open("rb") as fh:
        if fh.read(len(RECORDING_MAGIC)) != RECORDING_MAGIC:
            raise ConfigError("not an astro-edge recording (magic AEREC01 missing); "
                              "make one with `astro-edge rig record`", where=str(path))
        index = 0
        while True:
            head = fh.read(_RECORD_HEAD.size)
            if not head:
                return
            parts: list[bytes] = []
            ok = len(head) == _RECORD_HEAD.size
            if ok:
                received_ns, n_parts = _RECORD_HEAD.unpack(head)
                ok = n_parts <= MAX_RECORDED_PARTS
                for _ in range(n_parts if ok else 0):
                    raw_len = fh.read(_PART_LEN.size)
                    if len(raw_len) != _PART_LEN.size:
                        ok = False
                        break
                    (n,) = _PART_LEN.unpack(raw_len)
                    data = fh.read(n)
                    if len(data) != n:
                        ok = False
                        break
                    parts.append(data)
            if not ok:
                log.warning("rig.recording_truncated", path=str(path), record=index)
                return
            yield Recorded(received_ns, tuple(parts))
            index += 1


@dataclass(frozen=True)
class RecordStats:
    """What ``record`` stored."""

    messages: int
    bytes_written: int
    path: str


def record(address: str, out: Path, *, bind: bool = True, count: int | None = None,
           duration_s: float | None = None, context: zmq.Context[Any] | None = None,
           ready: Callable[[str], None] | None = None) -> RecordStats:
    """Record raw multipart messages from a PULL socket into ``out`` until ``count`` messages or
    ``duration_s`` seconds (whichever first; neither: until interrupted).

    ``ready`` is called with the bound endpoint once the socket listens (for tests and scripts).
    """
    ctx = context or zmq.Context.instance()
    # ZeroMQ's default high-water mark: the recorder keeps up by writing, not by dropping
    sock, endpoint = open_socket(ctx, zmq.PULL, address, bind=bind, hwm=1000)
    log.info("rig.recording", address=endpoint, out=str(out))
    if ready is not None:
        ready(endpoint)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    n = written = 0
    try:
        with out.open("wb") as fh:
            fh.write(RECORDING_MAGIC)
            written = len(RECORDING_MAGIC)
            while count is None or n < count:
                wait_ms = 200 if deadline is None else int((deadline - time.monotonic()) * 1000)
                if deadline is not None and wait_ms <= 0:
                    break
                if not sock.poll(min(wait_ms, 200), zmq.POLLIN):
                    continue
                parts = sock.recv_multipart(copy=False)
                written += write_record(fh, parts, time.time_ns())
                fh.flush()
                n += 1
    except KeyboardInterrupt:
        log.info("rig.record_interrupted", messages=n)
    finally:
        sock.close(linger=0)
    log.info("rig.recorded", messages=n, bytes=written, out=str(out))
    return RecordStats(messages=n, bytes_written=written, path=str(out))


# ---------------------------------------------------------------------------------------------
# FITS headers to protocol fields

_WCS_RE = re.compile(r"^(CTYPE|CRVAL|CRPIX|CDELT|CUNIT|CROTA)\d$|^(CD|PC)\d_\d$|"
                     r"^(EQUINOX|RADESYS|RADECSYS|LONPOLE|LATPOLE|WCSAXES)$|^(A|B|AP|BP)_(\d_\d|ORDER)$")
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "BZERO", "BSCALE", "BLANK", "PCOUNT",
               "GCOUNT", "XTENSION", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", ""}
_KEY_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")


@dataclass(frozen=True)
class FrameSource:
    """A frame ready to send: pixels plus the protocol fields taken from its FITS header."""

    pixels: NDArray[Any]
    start_utc: str
    exposure_s: float
    wcs: dict[str, Any]
    keywords: dict[str, Any]
    name: str = ""


def header_fields(header: Any, *, fallback_utc: str) -> tuple[str, float, dict[str, Any], dict[str, Any]]:
    """``(start_utc, exposure_s, wcs, keywords)`` from a FITS header.

    DATE-OBS (with TIME-OBS or UT when it holds a date only) or MJD-OBS give the start, in UTC;
    EXPTIME or EXPOSURE the exposure. WCS cards go to ``wcs``; other cards that fit the protocol
    (keyword of 1-8 of A-Z 0-9 _ -, value a finite number, boolean or short string) to ``keywords``.
    """
    from astropy.time import Time

    start_utc = fallback_utc
    date_obs = header.get("DATE-OBS")
    try:
        if isinstance(date_obs, str) and date_obs.strip():
            text = date_obs.strip()
            clock = header.get("TIME-OBS") or header.get("UT")
            if "T" not in text and isinstance(clock, str) and clock.strip():
                text = f"{text}T{clock.strip()}"
            start_utc = format_utc(Time(text, scale="utc").to_datetime(timezone=timezone.utc))
        elif isinstance(header.get("MJD-OBS"), (int, float)):
            mjd = Time(float(header["MJD-OBS"]), format="mjd", scale="utc")
            start_utc = format_utc(mjd.to_datetime(timezone=timezone.utc))
    except ValueError:
        log.warning("rig.bad_date", date_obs=str(date_obs)[:40])
    exposure = header.get("EXPTIME", header.get("EXPOSURE", 0.0))
    exposure_s = float(exposure) if isinstance(exposure, (int, float)) and 0 <= exposure <= 1e7 else 0.0
    wcs: dict[str, Any] = {}
    keywords: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        value = card.value
        if key in _STRUCTURAL or key.startswith("NAXIS") or _KEY_RE.match(key) is None:
            continue
        if isinstance(value, str):
            value = value.strip()
            if len(value) > MAX_STRING_VALUE_CHARS or not value.isprintable():
                continue
        elif isinstance(value, (bool, np.bool_)):
            value = bool(value)
        elif isinstance(value, (int, np.integer)):
            value = int(value)
        elif isinstance(value, (float, np.floating)):
            if not math.isfinite(value):
                continue
            value = float(value)
        else:
            continue
        target = wcs if _WCS_RE.match(key) else keywords
        if len(target) < MAX_KEYWORDS and key not in target:
            target[key] = value
    return start_utc, exposure_s, wcs, keywords


def read_fits_frame(path: Path) -> FrameSource:
    """The first 2-D image of a FITS file, scaled by BZERO/BSCALE (unsigned 16-bit stays uint16)."""
    from astropy.io import fits

    now = utc_now()
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                    pixels = np.ascontiguousarray(hdu.data)
                    header = hdul[0].header.copy()
                    if hdu is not hdul[0]:
                        header.extend(hdu.header, update=True)
                    start_utc, exposure_s, wcs, keywords = header_fields(header, fallback_utc=now)
                    return FrameSource(pixels, start_utc, exposure_s, wcs, keywords, path.name)
    except OSError as exc:
        raise ConfigError(f"cannot read FITS ({exc}); is it a FITS file?", where=str(path)) from None
    raise ConfigError("no 2-D image in any HDU", where=str(path))


def fits_files(directory: Path) -> list[Path]:
    """The FITS files of a directory in name order (``*.fits``, ``*.fit``, ``*.fts``, ``*.fits.gz``)."""
    patterns = ("*.fits", "*.fit", "*.fts", "*.fits.gz")
    return sorted({p for pat in patterns for p in directory.glob(pat) if p.is_file()})


# ---------------------------------------------------------------------------------------------
# playing frames


@dataclass(frozen=True)
class PlayStats:
    """What a play (stream or replay) sent and dropped, and how long it took.

    ``frames_*`` count frames the rig encoded; ``messages_*`` count everything else it sent,
    including every message of a recording (sent as raw parts, never decoded).
    """

    messages: int
    frames_sent: int
    frames_dropped: int
    messages_sent: int
    messages_dropped: int
    elapsed_s: float


def _pace(t0: float, i: int, rate_hz: float) -> None:
    if rate_hz > 0:
        delay = t0 + i / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _wait_ms(rate_hz: float) -> int:
    # at a set rate the rig is a DAQ and never waits; otherwise it goes as fast as the node reads
    return 0 if rate_hz > 0 else 60_000


def play_frames(sender: FrameSender, frames: Iterable[FrameSource], *, rate_hz: float = 0.0,
                series_id: int | None = None, expected_frames: int | None = None) -> PlayStats:
    """Send frames as one series through ``sender``, at ``rate_hz`` (0: as fast as the node takes)."""
    t0 = time.monotonic()
    sender.send_timeout_ms = _wait_ms(rate_hz)
    sender.start_series(series_id, expected_frames=expected_frames)
    n = 0
    for n, frame in enumerate(frames, start=1):
        _pace(t0, n - 1, rate_hz)
        sender.send_frame(frame.pixels, start_utc=frame.start_utc, exposure_s=frame.exposure_s,
                          wcs=frame.wcs, keywords=frame.keywords)
    sender.end_series()
    c = sender.counters
    return PlayStats(n + 2, c.frames_sent, c.frames_dropped, c.messages_sent, c.messages_dropped,
                     time.monotonic() - t0)


def play_recording(sender: FrameSender, path: Path, *, rate_hz: float = 0.0,
                   realtime: bool = False) -> PlayStats:
    """Send a recording's messages byte-exactly, in order: at ``rate_hz``, at the recorded pace
    (``realtime``), or as fast as the node takes them."""
    t0 = time.monotonic()
    sender.send_timeout_ms = 0 if (rate_hz > 0 or realtime) else 60_000
    n = 0
    first_ns: int | None = None
    for n, rec in enumerate(read_recording(path), start=1):
        if realtime:
            first_ns = rec.received_unix_ns if first_ns is None else first_ns
            delay = t0 + (rec.received_unix_ns - first_ns) / 1e9 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:
            _pace(t0, n - 1, rate_hz)
        sender.send_parts(list(rec.parts))
    c = sender.counters
    return PlayStats(n, c.frames_sent, c.frames_dropped, c.messages_sent, c.messages_dropped,
                     time.monotonic() - t0)


def replay(source: Path, sender: FrameSender, *, rate_hz: float = 0.0,
           realtime: bool = False) -> PlayStats:
    """Play a recording file, or a directory of FITS frames in name order, through ``sender``."""
    if is_recording(source):
        return play_recording(sender, source, rate_hz=rate_hz, realtime=realtime)
    if not source.is_dir():
        raise ConfigError("neither a directory of FITS frames nor a recording", where=str(source))
    files = fits_files(source)
    if not files:
        raise ConfigError("no FITS files (*.fits, *.fit, *.fts, *.fits.gz) here", where=str(source))
    log.info("rig.replay", source=str(source), frames=len(files))
    return play_frames(sender, (read_fits_frame(p) for p in files), rate_hz=rate_hz,
                       expected_frames=len(files))


def twin_frames(n: int, *, size_px: int, seed: int, anomalies: Sequence[str] = (),
                config: Any = None) -> Iterator[FrameSource]:
    """``n`` digital-twin frames (``twin.simulate_frame``) as frame sources."""
    try:
        from twin import DetectorModel, TwinConfig, simulate_frame
    except ImportError as exc:
        raise ConfigError(f"the digital twin cannot be imported ({exc}); `rig replay` plays "
                          "FITS frames without it", where="twin") from None

    cfg = config or TwinConfig()
    if config is None:
        cfg = dataclasses.replace(cfg, detector=DetectorModel(shape_px=(size_px, size_px)),
                                  anomalies=tuple(anomalies))
    now = utc_now()
    for i in range(n):
        yield twin_source(simulate_frame(cfg, i, seed), fallback_utc=now)


def twin_source(frame: Any, *, fallback_utc: str = "") -> FrameSource:
    """A twin frame (``twin.TwinFrame``) as a DAQ sends it: its raw pixels and the protocol fields
    of its FITS header (``fallback_utc`` where the header has no time; empty: stamped when sent)."""
    start_utc, exposure_s, wcs, keywords = header_fields(frame.header, fallback_utc=fallback_utc)
    return FrameSource(np.ascontiguousarray(frame.raw_adu), start_utc, exposure_s, wcs, keywords,
                       f"twin-{frame.index}")


# ---------------------------------------------------------------------------------------------
# scoring


def _time_s(value: Any, *, where: str) -> float:
    """A time as UNIX seconds: a JSON number (UNIX seconds, UTC) or an ISO 8601 UTC string."""
    if isinstance(value, bool):
        raise ConfigError("a time must be UNIX seconds or an ISO 8601 string, not a boolean", where=where)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"{value[:40]!r} is not an ISO 8601 time", where=where) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    raise ConfigError("a time must be UNIX seconds or an ISO 8601 string", where=where)


def _recall(n_truth: int, n_sent: int) -> dict[str, Any]:
    return {"n_truth": n_truth, "n_sent": n_sent,
            "recall": (n_sent / n_truth) if n_truth else None}


def match_and_score(truth_frame: NDArray[Any], truth_x: NDArray[Any], truth_y: NDArray[Any],
                    truth_label: Sequence[str], truth_family: Sequence[str],
                    records: Sequence[dict[str, Any]], *, radius_px: float,
                    truth_size_px: NDArray[Any] | None = None,
                    truth_series: Sequence[str] | None = None,
                    truth_snr: NDArray[Any] | None = None, snr_min: float | None = None) -> dict[str, Any]:
    """Match downlinked records to truth one-to-one within ``radius_px`` per frame, nearest
    pairs first, and summarise recall per label and family, ordinary fraction sent, and latency.

    With ``truth_size_px`` an extended object (an arc, a comet's tail, a double) matches within
    ``max(radius_px, size)``: its detection's centroid need not sit on its catalogued centre.
    With ``truth_series`` (one series id per truth row, as ``rig inject`` writes), a record whose
    ``series_id`` is one of them is matched to that series' rows whatever its frame number
    (``astro-edge process`` runs each file as a series of its own); other records by frame.
    With ``snr_min``, only truth rows of ``truth_snr >= snr_min`` count in the recall figures
    (every row still takes part in the matching).
    """
    truth_frame = np.asarray(truth_frame, dtype=np.int64)
    radius = np.full(len(truth_frame), float(radius_px))
    if truth_size_px is not None:
        size = np.nan_to_num(np.asarray(truth_size_px, dtype=float), nan=0.0)
        radius = np.maximum(radius, size)
    tx = np.asarray(truth_x, dtype=float)
    ty = np.asarray(truth_y, dtype=float)
    labels = [str(s) for s in truth_label]
    families = [str(s) for s in truth_family]
    matched = np.zeros(len(labels), dtype=bool)
    rec_matched = np.zeros(len(records), dtype=bool)
    series = np.asarray([str(s) for s in truth_series] if truth_series is not None else [""] * len(labels))
    known_series = set(series.tolist()) - {""}

    def group(rec: dict[str, Any]) -> tuple[str, Any]:
        sid = rec.get("series_id")
        return ("series", sid) if isinstance(sid, str) and sid in known_series else ("frame", int(rec["frame"]))

    by_group: dict[tuple[str, Any], list[int]] = {}
    for i, rec in enumerate(records):
        by_group.setdefault(group(rec), []).append(i)
    for key in sorted(by_group):
        ti = np.flatnonzero(series == key[1] if key[0] == "series" else truth_frame == key[1])
        ri = np.asarray(by_group[key], dtype=np.int64)
        if len(ti) == 0:
            continue
        rx = np.array([float(records[int(i)]["x"]) for i in ri])
        ry = np.array([float(records[int(i)]["y"]) for i in ri])
        d = np.hypot(tx[ti][:, None] - rx[None, :], ty[ti][:, None] - ry[None, :])
        order = np.argsort(d, axis=None, kind="stable")
        frame_radius = radius[ti]
        largest = frame_radius.max()
        for flat in order:
            a, b = divmod(int(flat), len(ri))
            if d[a, b] > largest:
                break
            if d[a, b] > frame_radius[a]:
                continue
            if not matched[ti[a]] and not rec_matched[ri[b]]:
                matched[ti[a]] = True
                rec_matched[ri[b]] = True
    counted = np.ones(len(labels), dtype=bool)
    if snr_min is not None:
        snr = np.asarray(truth_snr if truth_snr is not None else np.full(len(labels), np.nan), dtype=float)
        counted = np.nan_to_num(snr, nan=-np.inf) >= snr_min
    by_label = {lab: _recall(sum(1 for i, x in enumerate(labels) if x == lab and counted[i]),
                             sum(1 for i, x in enumerate(labels) if x == lab and counted[i] and matched[i]))
                for lab in sorted({lab for i, lab in enumerate(labels) if counted[i]})}
    special = [i for i, lab in enumerate(labels) if lab in ("anomaly", "transient") and counted[i]]
    by_family = {fam: _recall(sum(1 for i in special if families[i] == fam),
                              sum(1 for i in special if families[i] == fam and matched[i]))
                 for fam in sorted({families[i] for i in special})}
    ordinary = [i for i, lab in enumerate(labels) if lab not in ("anomaly", "transient") and counted[i]]
    n_ord_sent = int(sum(matched[i] for i in ordinary))
    latencies = [_time_s(r["received_time"], where="received_time")
                 - _time_s(r["frame_time"], where="frame_time")
                 for r in records if "frame_time" in r and "received_time" in r]
    latency = None
    if latencies:
        lat = np.asarray(latencies)
        latency = {"n": len(lat), "p50_s": float(np.percentile(lat, 50)),
                   "p99_s": float(np.percentile(lat, 99)), "max_s": float(lat.max())}
    return {
        "radius_px": radius_px,
        "snr_min": snr_min,
        "n_truth": len(labels),
        "n_downlinked": len(records),
        "n_matched": int(matched.sum()),
        "n_downlinked_unmatched": int((~rec_matched).sum()),
        "recall_by_label": by_label,
        "recall_by_family": by_family,
        "ordinary_sent": {"n_truth": len(ordinary), "n_sent": n_ord_sent,
                          "fraction": (n_ord_sent / len(ordinary)) if ordinary else None},
        "latency": latency,
    }


def read_downlink(path: Path) -> list[dict[str, Any]]:
    """Downlinked records from a JSON-lines file; each needs ``frame``, ``x``, ``y``."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except ValueError:
                raise ConfigError("not a JSON line", where=where) from None
            if not isinstance(rec, dict):
                raise ConfigError("a record must be a JSON object", where=where)
            for key in ("frame", "x", "y"):
                value = rec.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"record needs a numeric {key!r}", where=where)
            for key in ("frame_time", "received_time"):
                if key in rec:
                    _time_s(rec[key], where=f"{where} {key}")
            records.append(rec)
    return records


def score_files(truth_path: Path, downlink_path: Path, *, radius_px: float = 3.0,
                snr_min: float | None = None) -> dict[str, Any]:
    """Score a downlink JSON-lines file against a truth ECSV table (columns frame, x, y, label, family;
    ``series_id`` and ``snr_expected`` when present: see :func:`match_and_score`)."""
    from astropy.table import Table

    try:
        truth = Table.read(truth_path, format="ascii.ecsv")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the truth table ({str(exc)[:100]})", where=str(truth_path)) from None
    missing = [c for c in ("frame", "x", "y", "label") if c not in truth.colnames]
    if missing:
        raise ConfigError(f"truth table lacks column(s) {missing}", where=str(truth_path))
    if snr_min is not None and "snr_expected" not in truth.colnames:
        raise ConfigError("--snr-min needs a truth column snr_expected (the twin's and rig inject's "
                          "truth have one)", where=str(truth_path))
    families = truth["family"] if "family" in truth.colnames else [""] * len(truth)
    result = match_and_score(np.asarray(truth["frame"]), np.asarray(truth["x"]),
                             np.asarray(truth["y"]), list(truth["label"]),
                             ["" if f is np.ma.masked else str(f) for f in families],
                             read_downlink(downlink_path), radius_px=radius_px,
                             truth_size_px=np.asarray(truth["size_px"]) if "size_px" in truth.colnames else None,
                             truth_series=list(truth["series_id"]) if "series_id" in truth.colnames else None,
                             truth_snr=np.asarray(truth["snr_expected"]) if "snr_expected" in truth.colnames else None,
                             snr_min=snr_min)
    result["truth"] = str(truth_path)
    result["downlink"] = str(downlink_path)
    return result
