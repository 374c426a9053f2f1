"""The astro-edge frame protocol, version 1: pure encoding, decoding and validation.

A message is a ZeroMQ multipart message: one UTF-8 JSON header part, plus one payload part of
pixels for frames. ``docs/protocol.md`` is the contract; this module is its reference
implementation. Everything here is pure: no sockets, no clocks (times are passed in), no
logging, so unit tests, the receiver and the HIL rig share it. It must never trust a byte it is
given: every malformed message becomes a specific ``ProtocolError`` subclass, never another
exception.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import lz4.frame
import numpy as np
import xxhash
import zstandard
from numpy.typing import NDArray

from edge.errors import (
    ChecksumError,
    CompressionRatioError,
    DecompressionError,
    HeaderDecodeError,
    HeaderFieldError,
    PartCountError,
    PayloadSizeError,
    UnsupportedVersionError,
)

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0
HTYPE_FRAME = "astro-edge-frame-1.0"
HTYPE_SERIES_START = "astro-edge-series-start-1.0"
HTYPE_SERIES_END = "astro-edge-series-end-1.0"
HTYPE_HEARTBEAT = "astro-edge-heartbeat-1.0"

#: pixel types a frame may carry, exactly as numpy spells them (byte order first)
DTYPES = ("|u1", "|i1", "<u2", ">u2", "<i2", ">i2", "<u4", ">u4", "<i4", ">i4",
          "<f4", ">f4", "<f8", ">f8")
COMPRESSIONS = ("none", "lz4", "zstd")
CHECKSUM_ALGORITHMS = ("xxh3-64",)

MAX_HEADER_BYTES = 65536
MAX_NDIM = 3
#: default ceiling on one frame's pixel bytes (2 GiB); a receiver may lower it
MAX_FRAME_BYTES = 2 << 30
#: pixel bytes per compressed byte a receiver accepts by default: real detector frames compress
#: 1.1-3x with zstd or lz4 (docs/protocol.md); a payload of a few KB declaring a frame of hundreds
#: of MB is a decompression bomb, refused before it is checksummed or inflated
MAX_COMPRESSION_RATIO = 64
#: frames this small are never refused for their ratio (a blank test frame compresses 30 000x)
RATIO_FREE_PIXEL_BYTES = 1 << 20
MAX_INT = 2**63 - 1
MAX_ID_CHARS = 64
MAX_KEYWORDS = 512
MAX_STRING_VALUE_CHARS = 68

_UTC_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z$")
_HTYPE_RE = re.compile(r"^astro-edge-(frame|series-start|series-end|heartbeat)-(\d+)\.(\d+)$")
_KEYWORD_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")
_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
_HEX16_RE = re.compile(r"^[0-9a-f]{16}$")

Keywords = Mapping[str, str | int | float | bool]
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class FrameHeader:
    """Everything a frame's header says, validated. Times are UTC ISO 8601 strings ending in Z."""

    detector_id: str
    series_id: int
    seq: int
    start_utc: str
    exposure_s: float
    shape: tuple[int, ...]
    dtype: str
    compression: str
    checksum_algorithm: str
    checksum: str
    payload_nbytes: int
    wcs: Keywords = field(default_factory=lambda: MappingProxyType({}))
    keywords: Keywords = field(default_factory=lambda: MappingProxyType({}))
    htype: str = HTYPE_FRAME

    @property
    def pixel_nbytes(self) -> int:
        """Bytes of the decompressed pixels: product of the shape times the item size."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def start_time(self) -> datetime:
        """The acquisition start as an aware UTC datetime (microsecond precision)."""
        return parse_utc(self.start_utc, key="start_utc")


@dataclass(frozen=True)
class Frame:
    """A frame: its header and a read-only numpy view of its pixels (zero-copy when uncompressed)."""

    header: FrameHeader
    pixels: NDArray[Any]


@dataclass(frozen=True)
class SeriesStart:
    """The DAQ opens a series: frames that follow carry this series id and count seq from 0."""

    detector_id: str
    series_id: int
    start_utc: str
    expected_frames: int | None = None
    keywords: Keywords = field(default_factory=lambda: MappingProxyType({}))
    htype: str = HTYPE_SERIES_START


@dataclass(frozen=True)
class SeriesEnd:
    """The DAQ closes a series and says how many frames it sent and how many it had to drop."""

    detector_id: str
    series_id: int
    end_utc: str
    frames_sent: int
    frames_dropped: int
    htype: str = HTYPE_SERIES_END


@dataclass(frozen=True)
class Heartbeat:
    """The DAQ is alive; cumulative frame counts since the sender started."""

    detector_id: str
    time_utc: str
    frames_sent: int
    frames_dropped: int
    htype: str = HTYPE_HEARTBEAT


Message = Frame | SeriesStart | SeriesEnd | Heartbeat


@dataclass(frozen=True)
class Gap:
    """Frames missing from a series: seq ``first_missing`` to ``last_missing``, both inclusive."""

    detector_id: str
    series_id: int
    first_missing: int
    last_missing: int

    @property
    def n_missing(self) -> int:
        """How many sequence numbers are missing."""
        return self.last_missing - self.first_missing + 1


# ---------------------------------------------------------------------------------------------
# time and checksum helpers


def format_utc(when: datetime) -> str:
    """An aware datetime as the protocol's UTC string, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if when.tzinfo is None:
        raise ValueError("format_utc needs an aware datetime (tzinfo=timezone.utc)")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    """The current time as the protocol's UTC string (the one time format of frames and records)."""
    return format_utc(datetime.now(timezone.utc))


def parse_utc(text: str, *, key: str) -> datetime:
    """The protocol's UTC string as an aware datetime; ``HeaderFieldError`` when malformed."""
    m = _UTC_RE.match(text)
    if m is None:
        raise HeaderFieldError(f"{text[:40]!r} is not UTC ISO 8601 of the form "
                               "YYYY-MM-DDTHH:MM:SS[.fff]Z", where=key)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    try:
        if second > 60:
            raise ValueError("second must be in 0..60")
        # a leap second (:60) is valid UTC; datetime cannot hold it, so it reads as :59.999999
        if second == 60:
            second, micro = 59, 999999
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone.utc)
    except ValueError as exc:
        raise HeaderFieldError(f"{text!r} is not a valid date and time ({exc})", where=key) from None


def checksum_xxh3_64(payload: Buffer) -> str:
    """XXH3-64 (seed 0) of the payload bytes as 16 lowercase hex digits, most significant first."""
    return f"{xxhash.xxh3_64_intdigest(payload):016x}"


# ---------------------------------------------------------------------------------------------
# encoding


def _keywords_json(value: Keywords | None, *, key: str) -> dict[str, Any]:
    out = dict(value or {})
    _validate_keywords(out, key=key)
    return out


def _header_bytes(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_frame(
    pixels: NDArray[Any],
    *,
    detector_id: str,
    series_id: int,
    seq: int,
    start_utc: str,
    exposure_s: float,
    compression: str = "none",
    compression_level: int | None = None,
    wcs: Keywords | None = None,
    keywords: Keywords | None = None,
) -> list[Buffer]:
    """A frame message: ``[header_json, payload]``; the payload is zero-copy when uncompressed.

    The pixels go out in C order with the array's own byte order; the caller must not change
    the array until the message has left the socket.
    """
    arr = np.ascontiguousarray(pixels)
    dtype = arr.dtype.str
    if dtype not in DTYPES:
        raise HeaderFieldError(f"dtype {dtype!r} cannot travel; use one of {DTYPES}", where="dtype")
    if compression not in COMPRESSIONS:
        raise HeaderFieldError(f"compression {compression!r} is not one of {COMPRESSIONS}",
                               where="compression")
    if not 1 <= arr.ndim <= MAX_NDIM or arr.size == 0:
        raise HeaderFieldError(f"shape {arr.shape} cannot travel; a frame has 1 to {MAX_NDIM} "
                               "dimensions, each >= 1", where="shape")
    if _ID_RE.match(detector_id) is None:
        raise HeaderFieldError(f"{detector_id[:40]!r} is not 1-64 printable ASCII characters "
                               "without spaces", where="detector_id")
    parse_utc(start_utc, key="start_utc")
    raw = memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy arrays are buffers; numpy's stubs do not say so for every dtype
    payload: Buffer
    if compression == "lz4":
        payload = lz4.frame.compress(raw, compression_level=compression_level or 0,
                                     store_size=True)
    elif compression == "zstd":
        payload = zstandard.ZstdCompressor(level=compression_level or 3).compress(raw)
    else:
        payload = raw
    header: dict[str, Any] = {
        "htype": HTYPE_FRAME,
        "detector_id": detector_id,
        "series_id": int(series_id),
        "seq": int(seq),
        "start_utc": start_utc,
        "exposure_s": float(exposure_s),
        "shape": [int(n) for n in arr.shape],
        "dtype": dtype,
        "compression": compression,
        "checksum_algorithm": "xxh3-64",
        "checksum": checksum_xxh3_64(payload),
    }
    if wcs:
        header["wcs"] = _keywords_json(wcs, key="wcs")
    if keywords:
        header["keywords"] = _keywords_json(keywords, key="keywords")
    return [_header_bytes(header), payload]


def encode_series_start(*, detector_id: str, series_id: int, start_utc: str,
                        expected_frames: int | None = None,
                        keywords: Keywords | None = None) -> list[Buffer]:
    """A series-start message (header only)."""
    header: dict[str, Any] = {"htype": HTYPE_SERIES_START, "detector_id": detector_id,
                              "series_id": int(series_id), "start_utc": start_utc}
    if expected_frames is not None:
        header["expected_frames"] = int(expected_frames)
    if keywords:
        header["keywords"] = _keywords_json(keywords, key="keywords")
    return [_header_bytes(header)]


def encode_series_end(*, detector_id: str, series_id: int, end_utc: str, frames_sent: int,
                      frames_dropped: int) -> list[Buffer]:
    """A series-end message (header only) with the DAQ's own sent and dropped counts."""
    return [_header_bytes({"htype": HTYPE_SERIES_END, "detector_id": detector_id,
                           "series_id": int(series_id), "end_utc": end_utc,
                           "frames_sent": int(frames_sent), "frames_dropped": int(frames_dropped)})]


def encode_heartbeat(*, detector_id: str, time_utc: str, frames_sent: int,
                     frames_dropped: int) -> list[Buffer]:
    """A heartbeat message (header only) with cumulative counts since the sender started."""
    return [_header_bytes({"htype": HTYPE_HEARTBEAT, "detector_id": detector_id,
                           "time_utc": time_utc, "frames_sent": int(frames_sent),
                           "frames_dropped": int(frames_dropped)})]


def encode_message(message: Message) -> list[Buffer]:
    """Encode a decoded message again; a frame keeps its header's compression and keywords."""
    if isinstance(message, Frame):
        h = message.header
        return encode_frame(message.pixels, detector_id=h.detector_id, series_id=h.series_id,
                            seq=h.seq, start_utc=h.start_utc, exposure_s=h.exposure_s,
                            compression=h.compression, wcs=h.wcs, keywords=h.keywords)
    if isinstance(message, SeriesStart):
        return encode_series_start(detector_id=message.detector_id, series_id=message.series_id,
                                   start_utc=message.start_utc,
                                   expected_frames=message.expected_frames,
                                   keywords=message.keywords)
    if isinstance(message, SeriesEnd):
        return encode_series_end(detector_id=message.detector_id, series_id=message.series_id,
                                 end_utc=message.end_utc, frames_sent=message.frames_sent,
                                 frames_dropped=message.frames_dropped)
    return encode_heartbeat(detector_id=message.detector_id, time_utc=message.time_utc,
                            frames_sent=message.frames_sent, frames_dropped=message.frames_dropped)


# ---------------------------------------------------------------------------------------------
# decoding


def _as_buffer(part: Any) -> memoryview:
    """A part as a flat byte memoryview: bytes, bytearray, memoryview, or a ``zmq.Frame``."""
    buf = getattr(part, "buffer", part)
    try:
        view = memoryview(buf)
    except TypeError:
        raise PartCountError(f"a part of type {type(part).__name__} is not a byte buffer",
                             where="parts") from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def decode_header(part: Buffer) -> dict[str, Any]:
    """The header part as a JSON object; ``HeaderDecodeError`` when it is anything else."""
    view = _as_buffer(part)
    if len(view) > MAX_HEADER_BYTES:
        raise HeaderDecodeError(f"header part is {len(view)} bytes, over the {MAX_HEADER_BYTES}-byte "
                                "limit; keep keywords short", where="header")
    try:
        text = bytes(view).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HeaderDecodeError(f"header part is not UTF-8 JSON ({str(exc)[:80]})",
                                where="header") from None
    if not isinstance(obj, dict):
        raise HeaderDecodeError(f"header is a JSON {type(obj).__name__}, not an object",
                                where="header")
    return obj


def _get(header: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *,
         required: bool = True, default: Any = None) -> Any:
    if key not in header:
        if required:
            raise HeaderFieldError("required key is missing", where=key)
        return default
    value = header[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false arrive as bool, which Python also counts as int
    if isinstance(value, bool) and bool not in kinds:
        raise HeaderFieldError(f"expected {_json_type(kinds)}, got a boolean", where=key)
    if not isinstance(value, kinds):
        raise HeaderFieldError(f"expected {_json_type(kinds)}, got {_json_type((type(value),))}",
                               where=key)
    return value


def _json_type(kinds: tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
             dict: "object", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _int_in(header: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = _get(header, key, int)
    if not lo <= value <= hi:
        raise HeaderFieldError(f"{value} is outside [{lo}, {hi}]", where=key)
    return int(value)


def _optional_int_in(header: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    return _int_in(header, key, lo, hi) if key in header else None


def _string(header: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = _get(header, key, str)
    if pattern.match(value) is None:
        raise HeaderFieldError(f"{value[:40]!r} is not {what}", where=key)
    return value


def _utc(header: Mapping[str, Any], key: str) -> str:
    value = _get(header, key, str)
    parse_utc(value, key=key)
    return value


def _validate_keywords(obj: Any, *, key: str) -> None:
    if not isinstance(obj, dict):
        raise HeaderFieldError(f"expected an object of FITS keyword -> value, got "
                               f"{_json_type((type(obj),))}", where=key)
    if len(obj) > MAX_KEYWORDS:
        raise HeaderFieldError(f"{len(obj)} keywords, over the limit of {MAX_KEYWORDS}", where=key)
    for name, value in obj.items():
        if not isinstance(name, str) or _KEYWORD_RE.match(name) is None:
            raise HeaderFieldError(f"{str(name)[:20]!r} is not a FITS keyword "
                                   "(1-8 of A-Z 0-9 _ -)", where=key)
        if isinstance(value, str):
            if len(value) > MAX_STRING_VALUE_CHARS or not value.isprintable():
                raise HeaderFieldError(f"value of {name} is not a printable string of at most "
                                       f"{MAX_STRING_VALUE_CHARS} characters", where=key)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise HeaderFieldError(f"value of {name} is not finite", where=key)
        elif not isinstance(value, (int, bool)):
            raise HeaderFieldError(f"value of {name} is {_json_type((type(value),))}; "
                                   "use a string, number or boolean", where=key)


def _keywords(header: Mapping[str, Any], key: str) -> Keywords:
    if key not in header:
        return MappingProxyType({})
    obj = header[key]
    _validate_keywords(obj, key=key)
    return MappingProxyType(dict(obj))


def _kind_of(header: Mapping[str, Any]) -> tuple[str, str]:
    htype = _get(header, "htype", str)
    m = _HTYPE_RE.match(htype)
    if m is None or int(m.group(2)) != PROTOCOL_MAJOR:
        raise UnsupportedVersionError(
            f"htype {htype[:60]!r} is not spoken here; this receiver reads "
            f"astro-edge-{{frame,series-start,series-end,heartbeat}}-{PROTOCOL_MAJOR}.x "
            f"(current {HTYPE_FRAME}); upgrade the node or send version {PROTOCOL_MAJOR}",
            where="htype")
    return m.group(1), htype


def _frame_header(header: Mapping[str, Any], htype: str, payload_nbytes: int,
                  max_frame_bytes: int) -> FrameHeader:
    detector_id = _string(header, "detector_id", _ID_RE, "1-64 printable ASCII characters")
    series_id = _int_in(header, "series_id", 0, MAX_INT)
    seq = _int_in(header, "seq", 0, MAX_INT)
    start_utc = _utc(header, "start_utc")
    exposure = _get(header, "exposure_s", (int, float))
    if not 0 <= exposure <= 1e7:
        raise HeaderFieldError(f"{str(exposure)[:24]} is not a time in [0, 1e7] s", where="exposure_s")
    exposure_s = float(exposure)
    shape_list = _get(header, "shape", list)
    if not 1 <= len(shape_list) <= MAX_NDIM:
        raise HeaderFieldError(f"{len(shape_list)} dimensions; a frame has 1 to {MAX_NDIM}",
                               where="shape")
    for n in shape_list:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_INT:
            raise HeaderFieldError(f"dimension {str(n)[:24]} is not a positive integer", where="shape")
    dtype = _get(header, "dtype", str)
    if dtype not in DTYPES:
        raise HeaderFieldError(f"dtype {dtype[:20]!r} is not one of {', '.join(DTYPES)}",
                               where="dtype")
    shape = tuple(int(n) for n in shape_list)
    pixel_nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if pixel_nbytes > max_frame_bytes:
        raise HeaderFieldError(f"shape {list(shape)[:MAX_NDIM]} of {dtype} is {pixel_nbytes} bytes, "
                               f"over this receiver's limit of {max_frame_bytes}", where="shape")
    compression = _get(header, "compression", str, required=False, default="none")
    if compression not in COMPRESSIONS:
        raise HeaderFieldError(f"{compression[:20]!r} is not one of {COMPRESSIONS}",
                               where="compression")
    algorithm = _get(header, "checksum_algorithm", str)
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise HeaderFieldError(f"{algorithm[:20]!r} is not one of {CHECKSUM_ALGORITHMS}",
                               where="checksum_algorithm")
    checksum = _string(header, "checksum", _HEX16_RE, "16 lowercase hex digits")
    return FrameHeader(
        detector_id=detector_id, series_id=series_id, seq=seq, start_utc=start_utc,
        exposure_s=float(exposure_s), shape=shape, dtype=dtype, compression=compression,
        checksum_algorithm=algorithm, checksum=checksum, payload_nbytes=payload_nbytes,
        wcs=_keywords(header, "wcs"), keywords=_keywords(header, "keywords"), htype=htype,
    )


def _decompress(payload: memoryview, compression: str, nbytes: int) -> Buffer:
    """Decompress at most ``nbytes + 1`` bytes, so a lying stream cannot exhaust memory."""
    try:
        if compression == "lz4":
            dec = lz4.frame.LZ4FrameDecompressor()
            out = dec.decompress(payload, max_length=nbytes + 1)
            if not dec.eof:
                raise DecompressionError(f"lz4 frame is truncated or holds more than the header's "
                                         f"{nbytes} bytes", where="payload")
        else:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload),
                                                                read_across_frames=False)
            out = reader.read(nbytes + 1)
    except DecompressionError:
        raise
    except Exception as exc:  # noqa: BLE001 - lz4 and zstandard raise their own RuntimeError / ZstdError types
        raise DecompressionError(f"{compression} payload cannot be decoded ({str(exc)[:80]})",
                                 where="payload") from None
    if len(out) != nbytes:
        raise DecompressionError(f"{compression} payload holds {len(out)}"
                                 f"{'+' if len(out) > nbytes else ''} bytes, the header's shape "
                                 f"and dtype say {nbytes}", where="payload")
    return out


def decode_message(parts: Sequence[Any], *, max_frame_bytes: int = MAX_FRAME_BYTES,
                   max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> Message:
    """Validate and decode one multipart message (``bytes``, ``memoryview`` or ``zmq.Frame`` parts).

    Raises the specific ``ProtocolError`` subclass for anything that is not a valid version-1
    message. A frame's pixels are a read-only view of the payload part when uncompressed. A frame
    over ``max_frame_bytes`` of pixels, or a compressed one of more than 1 MiB of pixels that
    declares more than ``max_compression_ratio`` pixel bytes per payload byte, is refused from
    its header and payload length alone, before the checksum or any decompression.
    """
    n = len(parts)
    if not 1 <= n <= 2:
        raise PartCountError(f"message has {n} parts; frames have 2 (header, payload), other "
                             "messages 1", where="parts")
    header = decode_header(parts[0])
    kind, htype = _kind_of(header)
    expected_parts = 2 if kind == "frame" else 1
    if n != expected_parts:
        raise PartCountError(f"{kind} message has {n} parts, expected {expected_parts}",
                             where="parts")
    if kind == "frame":
        payload = _as_buffer(parts[1])
        fh = _frame_header(header, htype, len(payload), max_frame_bytes)
        if fh.compression == "none" and len(payload) != fh.pixel_nbytes:
            raise PayloadSizeError(f"payload is {len(payload)} bytes, shape {list(fh.shape)} of "
                                   f"{fh.dtype} needs {fh.pixel_nbytes}", where="payload")
        if fh.compression != "none" and len(payload) > max(2 * fh.pixel_nbytes, 1 << 16):
            raise PayloadSizeError(f"{fh.compression} payload is {len(payload)} bytes, more than "
                                   f"twice the {fh.pixel_nbytes} pixel bytes", where="payload")
        if (fh.compression != "none" and fh.pixel_nbytes > RATIO_FREE_PIXEL_BYTES
                and fh.pixel_nbytes > max_compression_ratio * len(payload)):
            raise CompressionRatioError(
                f"{fh.compression} payload of {len(payload)} bytes declares {fh.pixel_nbytes} pixel "
                f"bytes, {fh.pixel_nbytes / max(len(payload), 1):.0f}x, over this receiver's bound of "
                f"{max_compression_ratio:g}x; detector frames compress a few times at most",
                where="payload")
        actual = checksum_xxh3_64(payload)
        if actual != fh.checksum:
            raise ChecksumError(f"payload xxh3-64 is {actual}, header says {fh.checksum}; "
                                "the frame was corrupted in transit or by the sender",
                                where="payload")
        data = payload if fh.compression == "none" else _decompress(payload, fh.compression,
                                                                     fh.pixel_nbytes)
        pixels = np.frombuffer(data, dtype=np.dtype(fh.dtype)).reshape(fh.shape)
        if pixels.flags.writeable:
            pixels.flags.writeable = False
        return Frame(header=fh, pixels=pixels)
    detector_id = _string(header, "detector_id", _ID_RE, "1-64 printable ASCII characters")
    if kind == "series-start":
        return SeriesStart(
            detector_id=detector_id, series_id=_int_in(header, "series_id", 0, MAX_INT),
            start_utc=_utc(header, "start_utc"),
            expected_frames=_optional_int_in(header, "expected_frames", 0, MAX_INT),
            keywords=_keywords(header, "keywords"), htype=htype)
    if kind == "series-end":
        return SeriesEnd(
            detector_id=detector_id, series_id=_int_in(header, "series_id", 0, MAX_INT),
            end_utc=_utc(header, "end_utc"),
            frames_sent=_int_in(header, "frames_sent", 0, MAX_INT),
            frames_dropped=_int_in(header, "frames_dropped", 0, MAX_INT),
            htype=htype)
    return Heartbeat(
        detector_id=detector_id, time_utc=_utc(header, "time_utc"),
        frames_sent=_int_in(header, "frames_sent", 0, MAX_INT),
        frames_dropped=_int_in(header, "frames_dropped", 0, MAX_INT),
        htype=htype)


# ---------------------------------------------------------------------------------------------
# sequence gaps


@dataclass
class SequenceTracker:
    """Finds gaps in each series' frame sequence numbers. Pure: it returns gaps, never logs.

    A series announced by a series-start expects seq 0 first; a series first seen mid-way (the
    node joined late) takes its first frame as the baseline. Frames behind the expected seq
    (duplicates, reordering) are counted as ``out_of_order`` and do not move the expectation.
    """

    max_series: int = 1024
    out_of_order: int = 0
    _next: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)

    def start(self, detector_id: str, series_id: int) -> None:
        """A series-start: the next frame of this series should be seq 0."""
        self._remember((detector_id, series_id), 0)

    def observe(self, detector_id: str, series_id: int, seq: int) -> Gap | None:
        """A frame arrived; return the gap before it, if any."""
        key = (detector_id, series_id)
        expected = self._next.get(key)
        if expected is None or seq == expected:
            self._remember(key, seq + 1)
            return None
        if seq < expected:
            self.out_of_order += 1
            return None
        self._remember(key, seq + 1)
        return Gap(detector_id, series_id, expected, seq - 1)

    def end(self, detector_id: str, series_id: int, n_frames: int) -> Gap | None:
        """A series-end: return the frames lost at the tail (numbered by the DAQ, never seen).

        ``n_frames`` is the series-end's ``frames_sent + frames_dropped``: every seq the DAQ used.
        """
        expected = self._next.pop((detector_id, series_id), None)
        if expected is None or n_frames <= expected:
            return None
        return Gap(detector_id, series_id, expected, n_frames - 1)

    def _remember(self, key: tuple[str, int], next_seq: int) -> None:
        self._next.pop(key, None)
        self._next[key] = next_seq
        while len(self._next) > self.max_series:  # forget the least recently seen series
            del self._next[next(iter(self._next))]


__all__ = [
    "COMPRESSIONS", "DTYPES", "HTYPE_FRAME", "HTYPE_HEARTBEAT", "HTYPE_SERIES_END",
    "HTYPE_SERIES_START", "MAX_COMPRESSION_RATIO", "MAX_FRAME_BYTES", "MAX_HEADER_BYTES", "Frame", "FrameHeader", "Gap", "Heartbeat",
    "Message", "SequenceTracker", "SeriesEnd", "SeriesStart", "checksum_xxh3_64", "decode_header",
    "decode_message", "encode_frame", "encode_heartbeat", "encode_message", "encode_series_end",
    "encode_series_start", "format_utc", "parse_utc", "utc_now",
]
