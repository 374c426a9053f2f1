"""Publish what a ground stored to a NATS JetStream stream, each record once.

The ground's JSON lines are its truth; the publisher tails them (``downlink.jsonl`` and
``frames.jsonl``) from a durable cursor and publishes every line as it is stored, with its record
id as the ``Nats-Msg-Id``, so JetStream drops a message it already holds (within the stream's
duplicate window). The cursor (``OUT/publish_cursor.json``, replaced atomically) moves only past
lines JetStream acknowledged: after a crash of the ground, of the publisher or of nats-server,
publishing resumes at the cursor, and what it sends again (at most one batch) is dropped as a
duplicate. Several grounds may publish to one stream; a record two of them stored is kept once.

A record's message carries its stored JSON line, or with ``packets="avro"`` its Avro alert
packet (docs/alerts.md), as the ``Content-Type`` header says. Subjects:
``astro_edge.record.NODE.REASON`` (the first triage reason of the record) and ``astro_edge.frame.NODE``; the stream (file storage) takes ``astro_edge.>``. The publisher runs
an asyncio loop in a thread of its own and never touches the ground's socket or index: it only
reads the files, so it cannot delay an acknowledgement.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.errors import AstroEdgeError
from edge.ground.writers import FRAMES_NAME, RECORDS_NAME
from edge.log import get_logger
from edge.records import DownlinkRecord, summary_id

log = get_logger(__name__)

STREAM = "ASTRO_EDGE"
SUBJECT_ROOT = "astro_edge"
CURSOR_NAME = "publish_cursor.json"
#: how long JetStream remembers a message id; longer than any re-send after an outage of the
#: publisher's own (a re-publish older than this is prevented by the cursor instead)
DUPLICATE_WINDOW_S = 3600.0
#: lines published concurrently as one batch; the cursor moves past a batch once all are acknowledged
BATCH = 256
#: batches in flight at once: the next batch is read and sent while the previous one's acks come
IN_FLIGHT_BATCHES = 2
_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_JSON = json.JSONDecoder()
#: what a message carries -> its Content-Type header (the Avro one is edge.alerts.PACKET_CONTENT_TYPE)
PACKET_FORMATS = {"json": "application/json", "avro": "application/avro"}
#: the fields a line's subject and message id are made from
_FIELDS = {"record": ("record_id", "node_id", "reasons"), "frame_summary": ("node_id", "series_id", "frame")}


def line_fields(kind: str, line: str) -> dict[str, Any]:
    """The fields of a stored JSON line that name its subject and id, decoded without parsing
    the whole line (its stamp is most of it). A key is found where ``"key":`` follows ``{`` or
    ``,``: inside a JSON string a quote is always escaped, so no value can imitate one. A line
    that lacks a field raises KeyError; one that is not JSON there, ValueError."""
    out: dict[str, Any] = {}
    for key in _FIELDS[kind]:
        marker = f'"{key}":'
        i = line.find(marker)
        while i > 0 and line[i - 1] not in ",{":
            i = line.find(marker, i + 1)
        if i <= 0:
            raise KeyError(key)
        out[key] = _JSON.raw_decode(line, i + len(marker))[0]
    return out


@functools.lru_cache(maxsize=4096)
def subject_token(text: str) -> str:
    """A NATS subject token for ``text`` (a node id, a reason): anything but letters, digits,
    ``_`` and ``-`` becomes ``_`` (dots, wildcards and spaces would split or widen a subject)."""
    return _TOKEN.sub("_", text) or "_"


def subject_of(kind: str, data: dict[str, Any]) -> str:
    """The subject a stored record or frame summary is published on."""
    node = subject_token(str(data.get("node_id", "")))
    if kind == "record":
        reasons = data.get("reasons") or ["none"]
        return f"{SUBJECT_ROOT}.record.{node}.{subject_token(str(reasons[0]))}"
    return f"{SUBJECT_ROOT}.frame.{node}"


def message_id(kind: str, data: dict[str, Any]) -> str:
    """The id JetStream de-duplicates on: the record id, or the summary's id."""
    if kind == "record":
        return str(data["record_id"])
    return summary_id(str(data["node_id"]), str(data["series_id"]), int(data["frame"]))


def _avro_packet(line: str) -> bytes:
    """The Avro alert packet of a stored record line (with the time the ground stored it)."""
    from edge.alerts import encode_packet
    from edge.codec import from_dict

    data = json.loads(line)
    record = from_dict(data)
    if not isinstance(record, DownlinkRecord):
        raise TypeError(f"a {type(record).__name__} is not a record")
    return encode_packet(record, received_time=data.get("received_time"))


@dataclass
class PublishCounters:
    """What the publisher did since it started."""

    published: int = 0        # messages JetStream stored
    duplicates: int = 0       # messages JetStream already held (acknowledged as duplicates)
    failures: int = 0         # batches that failed (no server, timeout) and were tried again
    unreadable: int = 0       # lines that are not JSON with an id (skipped, logged)
    connected: bool = False


class Publisher:
    """Tails a ground's folder and publishes to JetStream at ``url``, in a thread of its own."""

    def __init__(self, out_dir: str | Path, url: str, *, replicas: int = 1,
                 duplicate_window_s: float = DUPLICATE_WINDOW_S, stream: str = STREAM,
                 packets: str = "json") -> None:
        """``packets``: what a record's message carries, its stored JSON line (``json``) or its
        Avro alert packet (``avro``, docs/alerts.md); a frame summary is always its JSON line."""
        if packets not in PACKET_FORMATS:
            raise ValueError(f"packets must be one of {sorted(PACKET_FORMATS)}, not {packets!r}")
        self.packets = packets
        self.out_dir = Path(out_dir)
        self.url = url
        self.replicas = int(replicas)
        self.duplicate_window_s = float(duplicate_window_s)
        self.stream = stream
        self.counters = PublishCounters()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain_s = 0.0
        self._thread: threading.Thread | None = None
        self._cursor = self._read_cursor()
        self._read_at = dict(self._cursor)   # how far the lines were read (ahead of the cursor)
        self._avro_type = ""
        if packets == "avro":
            from edge.alerts import PACKET_CONTENT_TYPE

            self._avro_type = PACKET_CONTENT_TYPE

    # ---- the caller's side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="publish", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New lines were stored: publish them now rather than at the next poll."""
        self._wake.set()

    def stop(self, drain_s: float = 5.0) -> PublishCounters:
        """Stop after publishing what is stored (for at most ``drain_s``); the counters."""
        self._drain_s = drain_s
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(drain_s + 15.0)
        return self.counters

    def lag_bytes(self) -> int:
        """Bytes of the JSON lines not yet published."""
        lag = 0
        for name in (RECORDS_NAME, FRAMES_NAME):
            path = self.out_dir / name
            if path.exists():
                lag += max(0, path.stat().st_size - self._cursor.get(name, 0))
        return lag

    # ---- the cursor --------------------------------------------------------------------------
    def _read_cursor(self) -> dict[str, int]:
        path = self.out_dir / CURSOR_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in data["offsets"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # a cursor that cannot be read: start from the beginning (JetStream drops what it holds)
            log.warning("publish.cursor_unreadable", path=str(path), error=str(exc))
            return {}

    def _write_cursor(self) -> None:
        path = self.out_dir / CURSOR_NAME
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"offsets": self._cursor, "url": self.url, "stream": self.stream}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _new_lines(self, name: str, limit: int) -> tuple[list[tuple[str, str, bytes, str]], int]:
        """Up to ``limit`` complete lines of ``name`` past the cursor: (subject, id, payload,
        content type) and the offset just past the last one."""
        path = self.out_dir / name
        start = self._read_at.get(name, 0)
        kind = "record" if name == RECORDS_NAME else "frame_summary"
        out: list[tuple[str, str, bytes, str]] = []
        end = start
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # the ground is still writing it
                    end += len(line)
                    try:
                        text = line.decode("utf-8")
                        data = line_fields(kind, text)
                        if kind == "record" and self.packets == "avro":
                            payload, content = _avro_packet(text), self._avro_type
                        else:
                            payload, content = line.rstrip(b"\n"), PACKET_FORMATS["json"]
                        out.append((subject_of(kind, data), message_id(kind, data), payload, content))
                    except (ValueError, KeyError, TypeError, AstroEdgeError) as exc:
                        self.counters.unreadable += 1
                        log.warning("publish.unreadable", file=name, offset=end - len(line), error=str(exc))
                    if len(out) >= limit:
                        break
        except FileNotFoundError:
            pass
        return out, end

    # ---- the loop ----------------------------------------------------------------------------
    async def _main(self) -> None:
        import nats

        backoff_s = 0.1
        nc: Any = None
        while nc is None:   # at least one try, even when told to stop at once (to drain)
            try:
                nc = await nats.connect(servers=[self.url], max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                                        connect_timeout=2, allow_reconnect=True)
            except Exception as exc:  # noqa: BLE001 - no server yet: try again, backing off
                log.warning("publish.connect_failed", url=self.url, error=str(exc), retry_s=backoff_s)
                if self._stop.is_set():
                    return
                await asyncio.sleep(backoff_s)
                backoff_s = min(5.0, 2 * backoff_s)
        self.counters.connected = True
        log.info("publish.connected", url=self.url, stream=self.stream, cursor=self._cursor)
        try:
            js = nc.jetstream(timeout=5.0)
            await self._ensure_stream(js)
            deadline: float | None = None
            while True:
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self._drain_s
                sent = await self._publish_some(js)
                if deadline is not None and (sent == 0 or time.monotonic() > deadline):
                    break
                if sent == 0:
                    await asyncio.get_running_loop().run_in_executor(None, self._wake.wait, 0.2)
                    self._wake.clear()
        finally:
            self.counters.connected = False
            await nc.close()
            log.info("publish.stopped", **asdict(self.counters), lag_bytes=self.lag_bytes())

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.api import StorageType, StreamConfig

        config = StreamConfig(name=self.stream, subjects=[f"{SUBJECT_ROOT}.>"], storage=StorageType.FILE,
                              duplicate_window=self.duplicate_window_s, num_replicas=self.replicas)
        backoff_s = 0.1
        while True:
            try:
                await js.add_stream(config)
                return
            except Exception as exc:  # noqa: BLE001 - a cluster still electing, or the stream exists
                try:
                    await js.stream_info(self.stream)
                    return
                except Exception:  # noqa: BLE001 - not there yet: try again
                    log.warning("publish.stream_unavailable", stream=self.stream, error=str(exc), retry_s=backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(5.0, 2 * backoff_s)
                    if self._stop.is_set():
                        raise

    async def _publish_some(self, js: Any) -> int:
        """Publish the new lines of both files, up to IN_FLIGHT_BATCHES batches at a time, moving
        the cursor past each batch once JetStream acknowledged all of it, in order; returns how
        many lines were sent (0: none new). A batch that fails is sent again from the cursor
        (JetStream drops what it holds)."""
        flying: collections.deque[tuple[str, int, asyncio.Future[list[Any]]]] = collections.deque()
        total = 0
        try:
            for name in (RECORDS_NAME, FRAMES_NAME):
                while True:
                    lines, end = self._new_lines(name, BATCH)
                    if end == self._read_at.get(name, 0):
                        break
                    self._read_at[name] = end
                    flying.append((name, end, asyncio.gather(*(
                        js.publish(subject, payload, headers={"Nats-Msg-Id": mid, "Content-Type": content})
                        for subject, mid, payload, content in lines))))
                    total += len(lines) or 1
                    while len(flying) >= IN_FLIGHT_BATCHES:
                        await self._settle(flying.popleft())
            while flying:
                await self._settle(flying.popleft())
        except Exception as exc:  # noqa: BLE001 - server gone, timeout, no quorum: retry from the cursor
            for _, _, future in flying:
                future.cancel()
            await asyncio.gather(*(f for _, _, f in flying), return_exceptions=True)
            self._read_at = dict(self._cursor)
            self.counters.failures += 1
            log.warning("publish.failed", error=f"{type(exc).__name__}: {exc}", cursor=self._cursor)
            await asyncio.sleep(0.25)
            return max(total, 1)   # not idle: try again at once
        return total

    async def _settle(self, batch: tuple[str, int, asyncio.Future[list[Any]]]) -> None:
        """Wait for one batch's acks and move the cursor past it."""
        name, end, future = batch
        acks = await future
        dup = sum(1 for a in acks if getattr(a, "duplicate", False))
        self.counters.duplicates += dup
        self.counters.published += len(acks) - dup
        self._cursor[name] = end
        self._write_cursor()
