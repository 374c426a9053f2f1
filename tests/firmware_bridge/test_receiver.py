"""FrameReceiver over real sockets: round trips, rejections counted and logged, gaps, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from firmware_bridge import Frame, FrameReceiver, FrameSender, SeriesEnd, SeriesStart
from firmware_bridge.protocol import checksum_xxh3_64

pytestmark = pytest.mark.timeout(60)


def _recv_all(rx: FrameReceiver, n: int, timeout_ms: int = 5000) -> list[Any]:
    out = []
    for _ in range(n):
        msg = rx.recv(timeout_ms)
        assert msg is not None, f"only {len(out)} of {n} messages arrived"
        out.append(msg)
    return out


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_round_trip_over_sockets_is_bit_exact(transport: str, context: zmq.Context[Any],
                                              tmp_path: Path, rng: np.random.Generator) -> None:
    """Every dtype, byte order, compression and several shapes arrive bit-exact over tcp and ipc."""
    address = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/rx.sock"
    cases = [(dtype, order, comp, shape)
             for dtype in ("u1", "u2", "i2", "i4", "f4")
             for order in ("<", ">")
             for comp in ("none", "lz4", "zstd")
             for shape in ((1,), (7, 13), (64, 48), (2, 9, 4))]
    with FrameReceiver(address, rcvhwm=1000, context=context) as rx, \
            FrameSender(rx.endpoint, sndhwm=1000, send_timeout_ms=2000, context=context) as tx:
        sent = []
        for seq, (dtype, order, comp, shape) in enumerate(cases):
            arr = rng.integers(-30000, 30000, shape).astype(order + dtype if dtype != "u1" else "u1")
            assert tx.send_frame(arr, seq=seq, exposure_s=seq * 0.5, compression=comp)
            sent.append(arr)
        got = _recv_all(rx, len(cases))
    for arr, msg, (_, _, comp, _) in zip(sent, got, cases, strict=True):
        assert isinstance(msg, Frame)
        assert msg.pixels.dtype == arr.dtype and msg.pixels.shape == arr.shape
        assert msg.pixels.tobytes() == arr.tobytes()
        assert msg.header.compression == comp
    assert rx.counters.accepted == len(cases) and rx.counters.rejected == 0 and rx.counters.gaps == 0


def _read(path: Path) -> np.ndarray:
    with fits.open(path) as hdul:
        return np.array(hdul[0].data)


# sep-ntt's ESO-LOG cards are non-standard; astropy's warning is about the file, not this code
@pytest.mark.filterwarnings("ignore:The following header keyword is invalid:astropy.utils.exceptions.AstropyUserWarning")
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_real_frames_round_trip(compression: str, m13_path: Path, real_data: Path,
                                receiver: FrameReceiver, context: zmq.Context[Any]) -> None:
    """The real M13 uint16 frame and the NTT float32 frame arrive bit-exact with their keywords."""
    m13 = _read(m13_path)
    ntt = _read(real_data / "sep-ntt" / "image.fits")
    with FrameSender(receiver.endpoint, send_timeout_ms=2000, context=context) as tx:
        tx.start_series(4, expected_frames=2)
        assert tx.send_frame(m13, exposure_s=5.0, keywords={"INSTRUME": "Orion SSDSI"},
                             compression=compression)
        assert tx.send_frame(ntt, exposure_s=1200.0, compression=compression)
        tx.end_series()
        start, f1, f2, end = _recv_all(receiver, 4)
    assert isinstance(start, SeriesStart) and isinstance(end, SeriesEnd)
    assert f1.pixels.dtype == np.uint16 and np.array_equal(f1.pixels, m13)
    assert f1.header.keywords["INSTRUME"] == "Orion SSDSI" and f1.header.exposure_s == 5.0
    assert f2.pixels.tobytes() == np.ascontiguousarray(ntt).tobytes()
    assert (end.frames_sent, end.frames_dropped) == (2, 0) and receiver.counters.gaps == 0


def _reheader(parts: list[bytes], **changes: Any) -> list[bytes]:
    h = json.loads(parts[0])
    h.update(changes)
    return [json.dumps(h).encode(), *parts[1:]]


def test_malformed_messages_are_counted_logged_once_and_survived(
        make_frame: Any, receiver: FrameReceiver, raw_push: zmq.Socket[Any]) -> None:
    """Each bad message is rejected under its reason, logged once, and the good frame after it arrives."""
    good = make_frame()
    bad = {
        "part_count": [*good, b"extra"],
        "header_decode": [b"\xff not json", good[1]],
        "unsupported_version": _reheader(good, htype="astro-edge-frame-9.0"),
        "header_field": _reheader(good, shape=[-6, 5]),
        "payload_size": [good[0], good[1][:-2]],
        "checksum": [good[0], bytes(len(good[1]))],
        "decompression": _reheader([good[0], b"not lz4"], compression="lz4",
                                   checksum=checksum_xxh3_64(b"not lz4")),
    }
    with capture_logs() as logs:
        for parts in bad.values():
            raw_push.send_multipart(parts)
        raw_push.send_multipart(make_frame(seq=0))
        msg = receiver.recv(5000)
    assert isinstance(msg, Frame) and msg.header.seq == 0
    c = receiver.counters
    assert dict(c.rejected_by_reason) == {reason: 1 for reason in bad}
    assert (c.received, c.accepted, c.rejected) == (len(bad) + 1, 1, len(bad))
    rejected = [e for e in logs if e["event"] == "frame.rejected"]
    assert sorted(e["reason"] for e in rejected) == sorted(bad)


def test_sequence_gap_is_counted_and_logged_with_the_missing_range(
        make_frame: Any, receiver: FrameReceiver, raw_push: zmq.Socket[Any]) -> None:
    """Frames 0-2 then 6-7 give one gap 3..5 (three missing), logged as series.gap and counted."""
    with capture_logs() as logs:
        for seq in (0, 1, 2, 6, 7):
            raw_push.send_multipart(make_frame(seq=seq, series_id=2))
        got = _recv_all(receiver, 5)
    assert [m.header.seq for m in got] == [0, 1, 2, 6, 7]
    assert (receiver.counters.gaps, receiver.counters.frames_missing) == (1, 3)
    gaps = [e for e in logs if e["event"] == "series.gap"]
    assert len(gaps) == 1
    assert (gaps[0]["series_id"], gaps[0]["first_missing"], gaps[0]["last_missing"]) == (2, 3, 5)


def test_recv_returns_none_on_timeout(receiver: FrameReceiver) -> None:
    """With nothing sent, recv gives None after its timeout rather than blocking."""
    assert receiver.recv(50) is None
    assert receiver.counters.received == 0


def _mutate(parts: list[bytes], which: int, index: int, value: int, cut: bool) -> list[bytes]:
    """A good message with one byte replaced, or cut short at that byte."""
    part = parts[which]
    i = index % max(1, len(part))
    parts = list(parts)
    parts[which] = part[:i] if cut else part[:i] + bytes([value]) + part[i + 1:]
    return parts


_GOOD = [b'{"htype":"astro-edge-frame-1.0","detector_id":"z","series_id":5,"seq":0,'
         b'"start_utc":"2026-11-28T10:00:00Z","exposure_s":1,"shape":[2,2],"dtype":"<u2",'
         b'"checksum_algorithm":"xxh3-64","checksum":"' + checksum_xxh3_64(bytes(8)).encode() + b'"}',
         bytes(8)]
_messages = st.lists(
    st.lists(st.binary(max_size=120), min_size=1, max_size=3)
    | st.builds(_mutate, st.just(_GOOD), st.integers(0, 1), st.integers(0, 400),
                st.integers(0, 255), st.booleans()),
    min_size=1, max_size=60)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(junk=_messages)
def test_receiver_survives_fuzz_and_accepts_the_next_good_frame(
        junk: list[list[bytes]], make_frame: Any, receiver: FrameReceiver,
        raw_push: zmq.Socket[Any]) -> None:
    """Hypothesis: after batches of random messages the receiver still accepts a good frame, and
    received == accepted + rejected holds."""
    for parts in junk:
        raw_push.send_multipart(parts)
    marker = make_frame(seq=receiver.counters.frames, series_id=77)
    raw_push.send_multipart(marker)
    while True:
        msg = receiver.recv(5000)
        assert msg is not None
        if isinstance(msg, Frame) and msg.header.series_id == 77:
            break
    c = receiver.counters
    assert c.received == c.accepted + c.rejected
    assert c.rejected == sum(c.rejected_by_reason.values())


def _zero_bomb(make_frame: Any, shape: tuple[int, int], dtype: str = "<f4") -> list[bytes]:
    """A zstd payload of a few KB that inflates to a whole frame of zeros, with a matching checksum."""
    import zstandard

    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    writer = zstandard.ZstdCompressor(level=19).compressobj()
    chunk = bytes(1 << 20)
    payload = b"".join(writer.compress(chunk[:min(len(chunk), nbytes - i)]) for i in range(0, nbytes, len(chunk)))
    payload += writer.flush()
    return _reheader([make_frame()[0], payload], shape=list(shape), dtype=dtype, compression="zstd",
                     checksum=checksum_xxh3_64(payload))


def test_decompression_bombs_and_oversized_headers_are_refused_before_inflating(
        make_frame: Any, context: zmq.Context[Any], rng: np.random.Generator) -> None:
    """With the node's default bounds (256 MiB of pixels, 64x compression), a header declaring
    2 GiB is refused for its shape and zstd payloads of a few KB declaring 64 MiB and 256 MiB for
    their ratio; a real frame compressed the same way still arrives."""
    from edge.config import ReceiveSection

    section = ReceiveSection()
    huge = _reheader(make_frame(), shape=[32768, 16384], dtype="<f4")     # 2 GiB declared
    bombs = [_zero_bomb(make_frame, (4096, 4096)), _zero_bomb(make_frame, (8192, 8192))]
    assert all(len(b[1]) < 65536 for b in bombs)
    ntt = rng.normal(1000.0, 30.0, (512, 512)).astype("<f4")              # 1 MiB of noisy sky
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=64, context=context,
                       max_frame_bytes=section.max_frame_bytes,
                       max_compression_ratio=section.max_compression_ratio) as rx, \
            FrameSender(rx.endpoint, detector_id="cam0", context=context, sndhwm=8) as tx, \
            capture_logs() as logs:
        # one connection keeps the order: the three refusals come before the good frame
        for parts in (huge, *bombs):
            assert tx.send_parts(parts)
        assert tx.send_frame(np.pad(ntt, ((0, 512), (0, 0))), exposure_s=1.0, compression="zstd")
        msg = rx.recv(10000)
    assert isinstance(msg, Frame) and msg.pixels.shape == (1024, 512)
    assert dict(rx.counters.rejected_by_reason) == {"header_field": 1, "compression_ratio": 2}
    reasons = [e["reason"] for e in logs if e["event"] == "frame.rejected"]
    assert sorted(reasons) == ["compression_ratio", "compression_ratio", "header_field"]


def test_a_peer_sending_a_part_over_the_message_bound_is_dropped_and_the_stream_goes_on(
        make_frame: Any, context: zmq.Context[Any]) -> None:
    """ZMQ_MAXMSGSIZE: a 4 MiB part to a receiver bounded at 64 KiB of pixels never reaches it."""
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=64, context=context, max_frame_bytes=1 << 16) as rx:
        push = context.socket(zmq.PUSH)
        push.linger = 0
        push.connect(rx.endpoint)
        try:
            push.send_multipart([make_frame()[0], bytes(4 << 20)])
            push.send_multipart(make_frame(seq=1))
            msg = rx.recv(10000)
        finally:
            push.close()
    assert isinstance(msg, Frame) and msg.header.seq == 1
    assert rx.counters.received == 1 and rx.counters.rejected == 0
