"""The protocol codec without sockets: round trips, the malformed corpus, fuzzing, gap finding."""

from __future__ import annotations

import json
from typing import Any

import lz4.frame
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge.errors import (
    ChecksumError,
    DecompressionError,
    HeaderDecodeError,
    HeaderFieldError,
    PartCountError,
    PayloadSizeError,
    ProtocolError,
    UnsupportedVersionError,
)
from firmware_bridge.protocol import (
    DTYPES,
    Frame,
    Gap,
    Heartbeat,
    SequenceTracker,
    SeriesEnd,
    SeriesStart,
    checksum_xxh3_64,
    decode_message,
    encode_frame,
    encode_heartbeat,
    encode_message,
    encode_series_end,
    encode_series_start,
)

T0 = "2026-11-28T10:00:00.250Z"


def _header(parts: list[bytes]) -> dict[str, Any]:
    return json.loads(parts[0])


def _reheader(parts: list[bytes], drop: tuple[str, ...] = (), **changes: Any) -> list[bytes]:
    """The message with header keys changed or dropped, payload untouched."""
    h = _header(parts)
    h.update(changes)
    for key in drop:
        del h[key]
    return [json.dumps(h).encode(), *parts[1:]]


def _repayload(parts: list[bytes], payload: bytes, **changes: Any) -> list[bytes]:
    """The message with a new payload and a checksum that matches it."""
    return _reheader([parts[0], payload], checksum=checksum_xxh3_64(payload), **changes)


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
@pytest.mark.parametrize("dtype", ["|u1", "<u2", ">u2", "<i2", ">i2", "<i4", ">i4", "<f4", ">f4"])
def test_frame_round_trip_is_bit_exact(dtype: str, compression: str, rng: np.random.Generator) -> None:
    """Every dtype and byte order survives encode/decode bit-exact, with header fields intact."""
    pixels = rng.integers(-1000, 1000, (17, 23)).astype(dtype)
    parts = encode_frame(pixels, detector_id="cam0", series_id=3, seq=41, start_utc=T0,
                         exposure_s=2.5, compression=compression,
                         wcs={"CTYPE1": "RA---TAN", "CRVAL1": 210.5}, keywords={"FILTER": "r"})
    msg = decode_message(parts)
    assert isinstance(msg, Frame)
    assert msg.pixels.dtype.str == dtype and msg.pixels.shape == (17, 23)
    assert msg.pixels.tobytes() == pixels.tobytes()
    h = msg.header
    assert (h.detector_id, h.series_id, h.seq, h.start_utc, h.exposure_s) == ("cam0", 3, 41, T0, 2.5)
    assert dict(h.wcs) == {"CTYPE1": "RA---TAN", "CRVAL1": 210.5} and h.keywords["FILTER"] == "r"
    assert h.start_time.microsecond == 250000


def test_uncompressed_pixels_are_a_read_only_view_of_the_payload() -> None:
    """The decoded pixels share memory with the payload part and cannot be written."""
    payload = bytearray(np.arange(12, dtype="<u2").tobytes())
    parts = encode_frame(np.arange(12, dtype="<u2").reshape(3, 4), detector_id="d", series_id=0,
                         seq=0, start_utc=T0, exposure_s=0)
    msg = decode_message([parts[0], payload])
    assert isinstance(msg, Frame)
    assert np.shares_memory(msg.pixels, np.frombuffer(payload, dtype=np.uint8))
    with pytest.raises(ValueError):
        msg.pixels[0, 0] = 7


@settings(max_examples=200, deadline=None)
@given(arr=hnp.arrays(dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
                      shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=9)),
       compression=st.sampled_from(["none", "lz4", "zstd"]),
       seq=st.integers(0, 2**63 - 1), exposure_s=st.floats(0, 1e6))
def test_any_array_round_trips(arr: np.ndarray, compression: str, seq: int, exposure_s: float) -> None:
    """Hypothesis: any allowed array, seq and exposure round-trip bit-exact (NaNs included)."""
    parts = encode_frame(arr, detector_id="x", series_id=1, seq=seq, start_utc=T0,
                         exposure_s=exposure_s, compression=compression)
    msg = decode_message(parts)
    assert isinstance(msg, Frame)
    assert msg.pixels.tobytes() == np.ascontiguousarray(arr).tobytes()
    assert msg.pixels.shape == arr.shape and msg.header.seq == seq
    assert msg.header.exposure_s == exposure_s


def test_control_messages_round_trip() -> None:
    """Series start, series end and heartbeat decode to their dataclasses and encode back."""
    msgs = [
        decode_message(encode_series_start(detector_id="d", series_id=9, start_utc=T0,
                                           expected_frames=100, keywords={"OBJECT": "M13"})),
        decode_message(encode_series_end(detector_id="d", series_id=9, end_utc=T0,
                                         frames_sent=98, frames_dropped=2)),
        decode_message(encode_heartbeat(detector_id="d", time_utc=T0, frames_sent=5,
                                        frames_dropped=1)),
    ]
    assert isinstance(msgs[0], SeriesStart) and msgs[0].expected_frames == 100
    assert msgs[0].keywords["OBJECT"] == "M13"
    assert isinstance(msgs[1], SeriesEnd) and (msgs[1].frames_sent, msgs[1].frames_dropped) == (98, 2)
    assert isinstance(msgs[2], Heartbeat) and msgs[2].frames_sent == 5
    for m in msgs:
        assert decode_message(encode_message(m)) == m


_ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
_counts = st.integers(0, 2**63 - 1)
_keyword_maps = st.dictionaries(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=8),
    st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=68),
    max_size=6)


@settings(max_examples=200, deadline=None)
@given(detector=_ids, series=_counts, a=_counts, b=_counts, expected=st.none() | _counts,
       keywords=_keyword_maps)
def test_any_control_message_round_trips(detector: str, series: int, a: int, b: int,
                                         expected: int | None, keywords: dict[str, Any]) -> None:
    """Hypothesis: series start, series end and heartbeat with any valid field values decode to
    exactly what was encoded."""
    start = decode_message(encode_series_start(detector_id=detector, series_id=series, start_utc=T0,
                                               expected_frames=expected, keywords=keywords))
    assert start == SeriesStart(detector, series, T0, expected, start.keywords)
    assert dict(start.keywords) == keywords
    end = decode_message(encode_series_end(detector_id=detector, series_id=series, end_utc=T0,
                                           frames_sent=a, frames_dropped=b))
    assert end == SeriesEnd(detector, series, T0, a, b)
    beat = decode_message(encode_heartbeat(detector_id=detector, time_utc=T0, frames_sent=a,
                                           frames_dropped=b))
    assert beat == Heartbeat(detector, T0, a, b)


def _corpus(make_frame: Any) -> list[tuple[str, list[bytes], type[ProtocolError]]]:
    good = make_frame()
    lz = make_frame(compression="lz4")
    zs = make_frame(compression="zstd")
    hb = [bytes(encode_heartbeat(detector_id="d", time_utc=T0, frames_sent=0, frames_dropped=0)[0])]
    raw_len = len(good[1])
    corpus: list[tuple[str, list[bytes], type[ProtocolError]]] = [
        ("no parts", [], PartCountError),
        ("three parts", [*good, b"x"], PartCountError),
        ("frame without payload", good[:1], PartCountError),
        ("heartbeat with payload", [*hb, b"x"], PartCountError),
        ("header not utf-8", [b"\xff\xfe{}", good[1]], HeaderDecodeError),
        ("header not json", [b"{seq: 1}", good[1]], HeaderDecodeError),
        ("header a json array", [b"[1, 2]", good[1]], HeaderDecodeError),
        ("header a json string", [b'"frame"', good[1]], HeaderDecodeError),
        ("header with NaN", [good[0].replace(b'"exposure_s":30.0', b'"exposure_s":NaN'), good[1]],
         HeaderDecodeError),
        ("header nested deeply", [b"[" * 100000 + b"]" * 100000, good[1]], HeaderDecodeError),
        ("header too long", [b" " * 70000 + good[0], good[1]], HeaderDecodeError),
        ("empty header", [b"", good[1]], HeaderDecodeError),
        ("version 2", _reheader(good, htype="astro-edge-frame-2.0"), UnsupportedVersionError),
        ("foreign htype", _reheader(good, htype="dheader-1.0"), UnsupportedVersionError),
        ("unknown kind", _reheader(good, htype="astro-edge-image-1.0"), UnsupportedVersionError),
        ("htype missing", _reheader(good, drop=("htype",)), HeaderFieldError),
        ("htype a number", _reheader(good, htype=1), HeaderFieldError),
        ("truncated payload", [good[0], good[1][:-1]], PayloadSizeError),
        ("payload too long", [good[0], good[1] + b"\0\0"], PayloadSizeError),
        ("empty payload", [good[0], b""], PayloadSizeError),
        ("dtype wider than payload", _reheader(good, dtype="<u4"), PayloadSizeError),
        ("shape larger than payload", _reheader(good, shape=[6, 6]), PayloadSizeError),
        ("negative dimension", _reheader(good, shape=[-6, 5]), HeaderFieldError),
        ("zero dimension", _reheader(good, shape=[0, 5]), HeaderFieldError),
        ("huge dimensions", _reheader(good, shape=[2**40, 2**40]), HeaderFieldError),
        ("absurd dimension", _reheader(good, shape=[10**30]), HeaderFieldError),
        ("too many dimensions", _reheader(good, shape=[1, 1, 6, 5]), HeaderFieldError),
        ("no dimensions", _reheader(good, shape=[]), HeaderFieldError),
        ("shape of strings", _reheader(good, shape=["6", "5"]), HeaderFieldError),
        ("shape of floats", _reheader(good, shape=[6.0, 5.0]), HeaderFieldError),
        ("object dtype", _reheader(good, dtype="|O"), HeaderFieldError),
        ("native dtype without order", _reheader(good, dtype="uint16"), HeaderFieldError),
        ("complex dtype", _reheader(good, dtype="<c8"), HeaderFieldError),
        ("bad checksum", _reheader(good, checksum="0" * 16), ChecksumError),
        ("flipped payload bit", [good[0], bytes([good[1][0] ^ 1]) + good[1][1:]], ChecksumError),
        ("checksum uppercase", _reheader(good, checksum=_header(good)["checksum"].upper()),
         HeaderFieldError),
        ("unknown checksum algorithm", _reheader(good, checksum_algorithm="md5"), HeaderFieldError),
        ("seq a string", _reheader(good, seq="1"), HeaderFieldError),
        ("seq a boolean", _reheader(good, seq=True), HeaderFieldError),
        ("seq a float", _reheader(good, seq=1.5), HeaderFieldError),
        ("seq negative", _reheader(good, seq=-1), HeaderFieldError),
        ("seq over 63 bits", _reheader(good, seq=2**63), HeaderFieldError),
        ("series id null", _reheader(good, series_id=None), HeaderFieldError),
        ("detector id empty", _reheader(good, detector_id=""), HeaderFieldError),
        ("detector id with spaces", _reheader(good, detector_id="cam 0"), HeaderFieldError),
        ("exposure negative", _reheader(good, exposure_s=-1.0), HeaderFieldError),
        ("exposure astronomically long", _reheader(good, exposure_s=10**400), HeaderFieldError),
        ("exposure a string", _reheader(good, exposure_s="30"), HeaderFieldError),
        ("start time not iso", _reheader(good, start_utc="yesterday"), HeaderFieldError),
        ("start time without zone", _reheader(good, start_utc="2026-11-28T10:00:00"), HeaderFieldError),
        ("start time impossible", _reheader(good, start_utc="2026-02-30T10:00:00Z"), HeaderFieldError),
        ("start time second 61", _reheader(good, start_utc="2026-11-28T10:00:61Z"), HeaderFieldError),
        ("unknown compression", _reheader(good, compression="gzip"), HeaderFieldError),
        ("wcs a list", _reheader(good, wcs=["CTYPE1"]), HeaderFieldError),
        ("keyword too long", _reheader(good, keywords={"FILTERNAME": "r"}), HeaderFieldError),
        ("keyword lower case", _reheader(good, keywords={"filter": "r"}), HeaderFieldError),
        ("keyword value nested", _reheader(good, keywords={"FILTER": {"a": 1}}), HeaderFieldError),
        ("keyword value null", _reheader(good, keywords={"FILTER": None}), HeaderFieldError),
        ("lz4 header on raw pixels", _repayload(good, good[1], compression="lz4"), DecompressionError),
        ("lz4 truncated", _repayload(lz, lz[1][:-3]), DecompressionError),
        ("lz4 of the wrong size", _repayload(lz, lz4.frame.compress(b"\0" * (raw_len + 2))),
         DecompressionError),
        ("zstd garbage", _repayload(zs, b"\x28\xb5\x2f\xfd" + b"\x01" * 20), DecompressionError),
        ("zstd of the wrong size", _repayload(zs, zstandard.ZstdCompressor().compress(b"\0" * 8)),
         DecompressionError),
        ("zstd bomb", _repayload(zs, zstandard.ZstdCompressor().compress(b"\0" * 10_000_000)),
         DecompressionError),
    ]
    for key in ("detector_id", "series_id", "seq", "start_utc", "exposure_s", "shape", "dtype",
                "checksum_algorithm", "checksum"):
        corpus.append((f"{key} missing", _reheader(good, drop=(key,)), HeaderFieldError))
    for key in ("frames_sent", "frames_dropped", "time_utc", "detector_id"):
        corpus.append((f"heartbeat {key} missing", _reheader(hb, drop=(key,)), HeaderFieldError))
    return corpus


def test_malformed_corpus_raises_each_specific_error(make_frame: Any) -> None:
    """Every entry of the malformed corpus raises exactly its documented ProtocolError subclass."""
    wrong = []
    for name, parts, error in _corpus(make_frame):
        try:
            decode_message(parts)
        except ProtocolError as exc:
            if type(exc) is not error:
                wrong.append(f"{name}: {type(exc).__name__} ({exc})")
        else:
            wrong.append(f"{name}: accepted")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("kwargs", "where"), [
    ({"pixels": np.zeros((0, 4), np.uint16)}, "shape"),
    ({"pixels": np.zeros((1, 1, 1, 1), np.uint16)}, "shape"),
    ({"pixels": np.zeros(3, np.complex64)}, "dtype"),
    ({"detector_id": "cam 0"}, "detector_id"),
    ({"start_utc": "2026-11-28 10:00"}, "start_utc"),
    ({"compression": "gzip"}, "compression"),
])
def test_encoder_refuses_what_a_receiver_would_reject(kwargs: dict[str, Any], where: str) -> None:
    """The sender side raises HeaderFieldError for a frame that could never be accepted."""
    args: dict[str, Any] = {"pixels": np.zeros((2, 2), np.uint16), "detector_id": "d",
                            "series_id": 0, "seq": 0, "start_utc": T0, "exposure_s": 1.0}
    args.update(kwargs)
    with pytest.raises(HeaderFieldError) as exc:
        encode_frame(args.pop("pixels"), **args)
    assert exc.value.where == where


def test_unknown_version_is_named_in_the_error(make_frame: Any) -> None:
    """The error for a newer protocol names the version received and the one spoken here."""
    with pytest.raises(UnsupportedVersionError, match=r"astro-edge-frame-2\.0.*astro-edge-frame-1\.0"):
        decode_message(_reheader(make_frame(), htype="astro-edge-frame-2.0"))


def test_newer_minor_version_with_extra_keys_is_read(make_frame: Any) -> None:
    """A 1.x header with keys this receiver does not know is still accepted (minor = additive)."""
    msg = decode_message(_reheader(make_frame(), htype="astro-edge-frame-1.3", gain_e_per_adu=1.5))
    assert isinstance(msg, Frame) and msg.header.htype == "astro-edge-frame-1.3"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
_FRAME_KEYS = ["htype", "detector_id", "series_id", "seq", "start_utc", "exposure_s", "shape",
               "dtype", "compression", "checksum_algorithm", "checksum", "wcs", "keywords"]


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[bytes]:
    """A valid message with one random mutation: a header field, a byte, a cut, or a part."""
    compression = draw(st.sampled_from(["none", "lz4", "zstd"]))
    dtype = draw(st.sampled_from(DTYPES))
    arr = (np.arange(24) % 200).astype(dtype).reshape(4, 6)
    parts = [bytes(p) for p in encode_frame(arr, detector_id="f", series_id=1, seq=0,
                                            start_utc=T0, exposure_s=1.0, compression=compression)]
    how = draw(st.sampled_from(["field", "drop", "header_byte", "payload_byte", "cut", "parts"]))
    if how == "field":
        return _reheader(parts, **{draw(st.sampled_from(_FRAME_KEYS)): draw(_json)})
    if how == "drop":
        return _reheader(parts, drop=(draw(st.sampled_from(_FRAME_KEYS[:-2])),))
    which = 0 if how == "header_byte" else 1
    if how in ("header_byte", "payload_byte"):
        buf = bytearray(parts[which])
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] = draw(st.integers(0, 255))
        parts[which] = bytes(buf)
        return parts
    if how == "cut":
        which = draw(st.integers(0, 1))
        parts[which] = parts[which][: draw(st.integers(0, len(parts[which])))]
        return parts
    return draw(st.lists(st.sampled_from(parts) | st.binary(max_size=64), max_size=4))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.binary(max_size=200), max_size=4) | mutated_messages())
def test_decode_survives_any_bytes(parts: list[bytes]) -> None:
    """Hypothesis: random and mutated messages either decode or raise a ProtocolError, nothing else."""
    try:
        msg = decode_message(parts)
    except ProtocolError:
        return
    if isinstance(msg, Frame):
        assert msg.pixels.nbytes == msg.header.pixel_nbytes


def test_tracker_reports_the_missing_range() -> None:
    """Seq 0, 1, 2, 5 after a series start gives one gap 3..4; a later frame of 6 gives none."""
    t = SequenceTracker()
    t.start("d", 1)
    assert [t.observe("d", 1, s) for s in (0, 1, 2)] == [None, None, None]
    assert t.observe("d", 1, 5) == Gap("d", 1, 3, 4)
    assert t.observe("d", 1, 6) is None


def test_tracker_counts_duplicates_and_keeps_series_apart() -> None:
    """A repeated seq is out of order, not a gap; each (detector, series) has its own count."""
    t = SequenceTracker()
    t.start("d", 1)
    t.start("e", 1)
    assert t.observe("d", 1, 0) is None and t.observe("e", 1, 0) is None
    assert t.observe("d", 1, 0) is None and t.out_of_order == 1
    assert t.observe("e", 1, 2) == Gap("e", 1, 1, 1)


def test_tracker_baseline_without_series_start_and_tail_gap_at_end() -> None:
    """A series joined mid-way starts at its first seq; frames lost before the end are a tail gap."""
    t = SequenceTracker()
    assert t.observe("d", 7, 100) is None
    assert t.observe("d", 7, 101) is None
    assert t.end("d", 7, 105) == Gap("d", 7, 102, 104)
    assert t.end("d", 7, 105) is None


def test_leap_second_and_nanosecond_times_are_accepted(make_frame: Any) -> None:
    """UTC with a leap second or nine fraction digits is valid; the string travels unchanged."""
    for t in ("2016-12-31T23:59:60.5Z", "2026-11-28T10:00:00.123456789Z"):
        msg = decode_message(_reheader(make_frame(), start_utc=t))
        assert isinstance(msg, Frame) and msg.header.start_utc == t
        assert msg.header.start_time.tzinfo is not None


def test_package_exports_the_public_names() -> None:
    """firmware_bridge's __all__ lists the sender, the receiver and every message type, all importable."""
    import firmware_bridge

    for name in ("FrameSender", "FrameReceiver", "Frame", "FrameHeader", "SeriesStart", "SeriesEnd",
                 "Heartbeat", "Gap", "decode_message", "encode_frame"):
        assert name in firmware_bridge.__all__
    assert all(hasattr(firmware_bridge, name) for name in firmware_bridge.__all__)
