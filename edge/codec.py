"""Records and summaries as bytes and lines, and back: msgpack maps on the link, JSON lines in files.

Both forms carry ``kind`` (``"record"`` | ``"frame_summary"``) and ``version``; stamps are bytes in
msgpack and base64 text in JSON. Decoding checks every field and raises a typed
:class:`edge.errors.RecordError` that says what is wrong. :func:`read_jsonl` reads every version 1
line of a file and counts, by reason, the lines it skips (a later version, a damaged line).

Pure apart from :func:`read_jsonl`, which reads the file it is given.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import msgpack

from edge.errors import RecordDecodeError, RecordError, RecordFieldError, RecordVersionError
from edge.records import (
    GROUND_FIELDS,
    OPTIONAL_FIELDS,
    RECORD_VERSION,
    CompressedStamp,
    DownlinkRecord,
    FrameSummary,
    Message,
)

__all__ = [
    "ReadResult",
    "decode",
    "decode_msgpack",
    "encode_msgpack",
    "from_dict",
    "from_json_line",
    "read_jsonl",
    "to_dict",
    "to_json_line",
]

# field names in declaration order, looked up once: to_dict runs for every record spooled
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (DownlinkRecord, FrameSummary)
}
_KINDS: dict[str, type[DownlinkRecord] | type[FrameSummary]] = {
    "record": DownlinkRecord, "frame_summary": FrameSummary,
}


def to_dict(msg: Message, *, binary_stamp: bool = True) -> dict[str, Any]:
    """The wire map of a record or summary (``kind`` first); stamp data as bytes or base64 text."""
    is_record = isinstance(msg, DownlinkRecord)
    out: dict[str, Any] = {"kind": "record" if is_record else "frame_summary"}
    for name in _FIELD_NAMES[type(msg)]:
        out[name] = getattr(msg, name)
    if is_record:
        out["probs"] = dict(out["probs"])
        out["reasons"] = list(out["reasons"])
        stamp = out["stamp"]
        if stamp is not None:
            data = stamp.data if binary_stamp else base64.b64encode(stamp.data).decode("ascii")
            out["stamp"] = {"codec": stamp.codec, "shape": list(stamp.shape), "data": data}
    else:
        for name in ("by_class", "sent_by_reason", "timings_ms"):
            out[name] = dict(out[name])
        out["dropped_frames"] = list(out["dropped_frames"])
    return out


def _stamp_from(value: Any, where: str) -> CompressedStamp | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"codec", "shape", "data"}:
        raise RecordFieldError("stamp must be a map of codec, shape, data", where=where)
    data = value["data"]
    if isinstance(data, str):
        try:
            data = base64.b64decode(data.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise RecordFieldError(f"stamp data is not base64: {exc}", where=where) from exc
    if not isinstance(value["shape"], (list, tuple)):
        raise RecordFieldError("stamp shape must be a list", where=where)
    return CompressedStamp(shape=tuple(value["shape"]), data=data, codec=value["codec"])


def from_dict(data: Any) -> Message:
    """Build a record or summary from its wire map; typed errors say what is wrong."""
    if not isinstance(data, Mapping):
        raise RecordDecodeError(f"a downlink message is a map, not {type(data).__name__}")
    kind, version = data.get("kind"), data.get("version")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise RecordVersionError(f"unknown kind {kind!r}; this reader speaks {sorted(_KINDS)}")
    if type(version) is not int or version != RECORD_VERSION:
        raise RecordVersionError(f"{kind} version {version!r} is not {RECORD_VERSION}; "
                                 "upgrade the reader to read it")
    return _from_dict_v1(_KINDS[kind], data)


def _from_dict_v1(cls: type[DownlinkRecord] | type[FrameSummary], data: Mapping[str, Any]) -> Message:
    where = str(data.get("record_id") or f"{data.get('kind')} of frame {data.get('frame')!r}")
    names = _FIELD_NAMES[cls]
    extra = set(data) - set(names) - {"kind"} - set(GROUND_FIELDS)
    if extra:
        raise RecordFieldError(f"unknown fields {sorted(map(str, extra))}", where=where)
    missing = [n for n in names if n not in data and n not in OPTIONAL_FIELDS]
    if missing:
        raise RecordFieldError(f"missing fields {missing}", where=where)
    values = {k: v for k, v in data.items() if k in names}
    sequence = "reasons" if cls is DownlinkRecord else "dropped_frames"
    if sequence in values and not isinstance(values[sequence], (list, tuple)):
        raise RecordFieldError(f"{sequence} must be a list", where=where)
    if cls is DownlinkRecord:
        values["stamp"] = _stamp_from(values["stamp"], where)
    try:
        return cls(**values)
    except TypeError as exc:
        raise RecordFieldError(f"missing or unexpected fields: {exc}", where=where) from exc


def encode_msgpack(msg: Message) -> bytes:
    """The msgpack bytes of a record or summary, as sent on the downlink."""
    return msgpack.packb(to_dict(msg, binary_stamp=True), use_bin_type=True)


def decode_msgpack(payload: bytes) -> Message:
    """Decode downlink bytes; RecordDecodeError when they are not msgpack."""
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RecordDecodeError(f"payload is not msgpack: {exc}") from exc
    return from_dict(data)


def to_json_line(msg: Message, **extra: Any) -> str:
    """One JSON line (no newline) of a record or summary; ``extra`` adds ground fields."""
    data = to_dict(msg, binary_stamp=False)
    data.update(extra)
    return json.dumps(data, allow_nan=False, separators=(",", ":"))


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def from_json_line(line: str) -> Message:
    """Decode one JSON line; RecordDecodeError when it is not JSON."""
    try:
        data = json.loads(line, parse_constant=_no_constants)
    except ValueError as exc:
        raise RecordDecodeError(f"line is not JSON: {exc}") from exc
    return from_dict(data)


def decode(data: bytes | str) -> Message:
    """Decode msgpack bytes or a JSON line."""
    return decode_msgpack(data) if isinstance(data, (bytes, bytearray, memoryview)) else from_json_line(data)


@dataclass(frozen=True)
class ReadResult:
    """What :func:`read_jsonl` found: the messages it read and what it skipped, by reason."""

    messages: tuple[Message, ...]
    received_times: tuple[str | None, ...]
    skipped: Mapping[str, int]


def read_jsonl(path: str | Path) -> ReadResult:
    """Read every version 1 line of a JSON-lines file; later versions and bad lines are skipped and counted."""
    messages: list[Message] = []
    times: list[str | None] = []
    skipped: dict[str, int] = {}
    for line in _lines(Path(path)):
        try:
            data = json.loads(line, parse_constant=_no_constants)
        except ValueError:
            skipped[RecordDecodeError.reason] = skipped.get(RecordDecodeError.reason, 0) + 1
            continue
        try:
            msg = from_dict(data)
        except RecordError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
            continue
        messages.append(msg)
        received = data.get("received_time")
        times.append(received if isinstance(received, str) else None)
    return ReadResult(messages=tuple(messages), received_times=tuple(times), skipped=skipped)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line
