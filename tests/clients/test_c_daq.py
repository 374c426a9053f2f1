"""The reference DAQ client in C (clients/c) against the Python receiver and a running node: every
frame accepted with its checksum, strings escaped, nothing lost at close, control messages
retried while the queue is full, compressed payloads that carry their content size."""

from __future__ import annotations

import ctypes
import json
import threading
import time
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import pytest
import zmq
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.protocol import Frame, SeriesEnd, decode_header, decode_message
from firmware_bridge.receiver import FrameReceiver

from .conftest import (
    DROPPED,
    ERR_ARG,
    ERR_STATE,
    SENT,
    CClient,
    make_client,
    run_example,
)

pytestmark = pytest.mark.timeout(180)


def _reader(rx: FrameReceiver, into: list[Any]) -> Any:
    """An ``on_idle`` for run_example: one message off the receiver into ``into``."""
    def read() -> bool:
        message = rx.recv(timeout_ms=300)
        if message is not None:
            into.append(message)
        return message is not None
    return read


def test_the_client_builds_without_a_warning_as_c11(c_client: CClient, tmp_path: Path) -> None:
    """The same sources build as C11 with -Wall -Wextra -Werror -pedantic (the session built C99)."""
    made = make_client(tmp_path / "c11", "c11")
    assert made.returncode == 0, made.stderr
    assert "-std=c11" in made.stdout and (tmp_path / "c11" / "example_daq").is_file()


def test_a_hundred_frames_from_the_c_client_are_all_accepted_with_their_checksums(c_client: CClient) -> None:
    """The example DAQ's series of 100 frames arrives whole: 100 frames accepted (checksums, sizes
    and fields all valid), none rejected, no gap, and the DAQ counts them sent."""
    messages: list[Any] = []
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=4) as rx:
        stats = run_example(c_client, rx.endpoint, 100, "--send-timeout-ms", "20000", on_idle=_reader(rx, messages))
        counters = rx.counters
    assert (counters.frames, counters.rejected, counters.received) == (100, 0, counters.accepted)
    assert (counters.series_starts, counters.series_ends, counters.gaps) == (1, 1, 0)
    assert stats["frames_sent"] == 100 and stats["frames_dropped"] == 0 and stats["drained"] is True
    frames = [m for m in messages if isinstance(m, Frame)]
    assert [f.header.seq for f in frames] == list(range(100))
    first = frames[0]
    assert first.pixels.shape == (64, 64) and first.pixels.dtype == np.dtype("uint16")
    assert dict(first.header.keywords) == {"FILTER": "r", "GAIN": 1.5, "RDNOISE": 5.0, "IMAGETYP": "LIGHT"}
    end = next(m for m in messages if isinstance(m, SeriesEnd))
    assert (end.frames_sent, end.frames_dropped) == (100, 0)


def test_a_detector_id_with_a_quote_and_a_backslash_arrives_exact(c_client: CClient) -> None:
    """Every header of a DAQ named `cam"0\\x` is valid JSON and carries that name unchanged."""
    name = 'cam"0\\x'
    messages: list[Any] = []
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=4) as rx:
        run_example(c_client, rx.endpoint, 3, "--detector-id", name, "--send-timeout-ms", "20000",
                    on_idle=_reader(rx, messages))
        assert rx.counters.rejected == 0
    assert len(messages) == 5 and {m.header.detector_id if isinstance(m, Frame) else m.detector_id
                                   for m in messages} == {name}


def test_closing_right_after_the_last_send_loses_nothing(c_client: CClient) -> None:
    """A DAQ that queues 100 frames of 128 KiB at once and closes straight after its series end
    still delivers all of them and the series end: its close drains the queue."""
    messages: list[Any] = []
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=4) as rx:
        stats = run_example(c_client, rx.endpoint, 100, "--ny", "256", "--nx", "256", "--sndhwm", "1000",
                            "--heartbeat-every", "0", on_idle=_reader(rx, messages))
        counters = rx.counters
    assert stats["frames_sent"] == 100 and stats["drained"] is True
    assert (counters.frames, counters.series_ends, counters.rejected) == (100, 1, 0)
    assert isinstance(messages[-1], SeriesEnd)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_frames_carry_their_content_size_and_their_checksum(c_client: CClient,
                                                                          compression: str) -> None:
    """lz4 and zstd payloads decode as the spec says, checksummed as sent, and each records the
    pixel bytes as its content size."""
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    parts: list[list[bytes]] = []

    def read() -> bool:
        if pull.poll(300):
            parts.append(pull.recv_multipart())
            return True
        return False

    try:
        run_example(c_client, f"tcp://127.0.0.1:{port}", 5, "--compression", compression,
                    "--send-timeout-ms", "20000", on_idle=read)
    finally:
        pull.close()
        ctx.term()
    frames = [p for p in parts if len(p) == 2]
    assert len(frames) == 5
    for header, payload in frames:
        frame = decode_message([header, payload])
        assert isinstance(frame, Frame) and frame.header.compression == compression
        size = (lz4.frame.get_frame_info(payload)["content_size"] if compression == "lz4"
                else zstandard.frame_content_size(payload))
        assert size == 64 * 64 * 2 > len(payload)


def _open(lib: ctypes.CDLL, address: str, detector_id: bytes = b"cam0", sndhwm: int = 4,
          send_timeout_ms: int = 0) -> int:
    error = ctypes.c_int(0)
    daq = lib.ae_daq_open(address.encode(), detector_id, sndhwm, send_timeout_ms, ctypes.byref(error))
    assert daq, f"ae_daq_open failed with {error.value}"
    return int(daq)


def test_the_spec_example_frame_is_sent_byte_for_byte(libdaq: ctypes.CDLL) -> None:
    """The 2 x 3 <u2 frame of docs/protocol.md 2.6 leaves with the spec's checksum and payload."""
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    daq = _open(libdaq, f"tcp://127.0.0.1:{port}")
    pixels = np.arange(6, dtype="<u2").reshape(2, 3)
    try:
        assert libdaq.ae_daq_series_start(daq, 17, b"2026-11-28T09:59:59.900000Z", 100, None) == SENT
        assert libdaq.ae_daq_send_frame(daq, pixels.ctypes.data, 2, 3, 2, 30.0, b"2026-11-28T10:00:00.250000Z",
                                        0, None) == SENT
        assert libdaq.ae_daq_close(daq, 5000) == SENT
        start = decode_header(pull.recv_multipart()[0])
        header, payload = pull.recv_multipart()
    finally:
        pull.close()
        ctx.term()
    assert start == {"htype": "astro-edge-series-start-1.0", "detector_id": "cam0", "series_id": 17,
                     "start_utc": "2026-11-28T09:59:59.900000Z", "expected_frames": 100}
    fields = json.loads(header)
    assert payload.hex() == "000001000200030004000500" and fields["checksum"] == "5b8941c9810ed71e"
    assert {k: fields[k] for k in ("series_id", "seq", "shape", "dtype", "exposure_s", "compression")} == \
        {"series_id": 17, "seq": 0, "shape": [2, 3], "dtype": "<u2", "exposure_s": 30.0, "compression": "none"}


def _fill(lib: ctypes.CDLL, daq: int) -> tuple[int, int]:
    """Send 1 MiB frames until the queue refuses one even after a pause in which the connection's
    buffers could take more (nothing moves any longer); the frames queued and dropped."""
    pixels = np.zeros((512, 1024), dtype="<u2")
    queued = dropped = 0
    for _ in range(5000):
        rc = lib.ae_daq_send_frame(daq, pixels.ctypes.data, 512, 1024, 2, 1.0, None, 0, None)
        assert rc in (SENT, DROPPED)
        queued += rc == SENT
        dropped += rc == DROPPED
        if rc == DROPPED:
            time.sleep(0.2)
            if lib.ae_daq_send_frame(daq, pixels.ctypes.data, 512, 1024, 2, 1.0, None, 0, None) == DROPPED:
                return queued, dropped + 1
            queued += 1
    raise AssertionError("the queue never filled")


def test_a_series_end_refused_by_a_full_queue_is_retried_until_there_is_room(libdaq: ctypes.CDLL) -> None:
    """With the queue full (the node not reading), a series end waits and goes when the node reads
    again; it arrives after every queued frame and accounts for the frames dropped."""
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    pull.rcvhwm = 1
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    daq = _open(libdaq, f"tcp://127.0.0.1:{port}", sndhwm=1)
    received: list[list[bytes]] = []

    def node_reads_later() -> None:
        time.sleep(0.5)
        while not received or len(received[-1]) != 1 or b"series-end" not in received[-1][0]:
            if pull.poll(10_000):
                received.append(pull.recv_multipart())
            else:
                return

    reader = threading.Thread(target=node_reads_later)
    try:
        assert libdaq.ae_daq_series_start(daq, 3, None, -1, None) == SENT
        queued, dropped = _fill(libdaq, daq)
        libdaq.ae_daq_set_control_retry_ms(daq, 20_000)
        reader.start()
        assert libdaq.ae_daq_series_end(daq) == SENT
        counters = libdaq.ae_daq_get_counters(daq)
        assert libdaq.ae_daq_close(daq, 10_000) == SENT
        reader.join(30)
    finally:
        pull.close()
        ctx.term()
    assert counters.control_retries >= 1 and counters.messages_dropped == 0
    end = decode_message(received[-1])
    assert isinstance(end, SeriesEnd) and (end.frames_sent, end.frames_dropped) == (queued, dropped)
    assert sum(len(m) == 2 for m in received) == queued


def test_without_a_retry_bound_a_full_queue_refuses_the_series_end(libdaq: ctypes.CDLL) -> None:
    """A retry bound of 0 tries once: with the queue full the series end is refused and counted."""
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    pull.rcvhwm = 1
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    daq = _open(libdaq, f"tcp://127.0.0.1:{port}", sndhwm=1)
    try:
        assert libdaq.ae_daq_series_start(daq, 3, None, -1, None) == SENT
        _fill(libdaq, daq)
        libdaq.ae_daq_set_control_retry_ms(daq, 0)
        assert libdaq.ae_daq_series_end(daq) == DROPPED
        counters = libdaq.ae_daq_get_counters(daq)
        libdaq.ae_daq_close(daq, 0)
    finally:
        pull.close()
        ctx.term()
    assert (counters.messages_dropped, counters.control_retries) == (1, 0)


def test_the_client_refuses_what_a_receiver_would_reject(libdaq: ctypes.CDLL) -> None:
    """A detector id with a space, a NaN exposure and a series end with no series open are refused
    before anything is sent, and a refused frame uses no sequence number."""
    error = ctypes.c_int(0)
    assert not libdaq.ae_daq_open(b"tcp://127.0.0.1:9", b"cam 0", 4, 0, ctypes.byref(error))
    assert error.value == ERR_ARG
    daq = _open(libdaq, "tcp://127.0.0.1:9")
    pixels = np.zeros((2, 2), dtype="<u2")
    try:
        assert libdaq.ae_daq_series_end(daq) == ERR_STATE
        assert libdaq.ae_daq_send_frame(daq, pixels.ctypes.data, 2, 2, 2, float("nan"), None, 0, None) == ERR_ARG
        assert b"exposure_s" in libdaq.ae_daq_error(daq)
        assert libdaq.ae_daq_send_frame(daq, pixels.ctypes.data, 2, 2, 2, 1.0, b"2026-11-28 10:00:00Z", 0,
                                        None) == ERR_ARG
        assert libdaq.ae_daq_next_seq(daq) == 0
    finally:
        libdaq.ae_daq_close(daq, 0)


def _escape(lib: ctypes.CDLL, text: str) -> str:
    raw = text.encode("utf-8")
    need = lib.ae_daq_json_escape(None, 0, raw)
    out = ctypes.create_string_buffer(need + 1)
    assert lib.ae_daq_json_escape(out, need + 1, raw) == need
    return out.value.decode("utf-8")


def test_the_escaper_writes_quotes_backslashes_and_control_characters_as_json_does(libdaq: ctypes.CDLL) -> None:
    """`"` and `\\` get a backslash, control characters and DEL become \\u00XX, the rest stays."""
    assert _escape(libdaq, 'a"b\\c\n\x01\x7fé') == 'a\\"b\\\\c\\u000a\\u0001\\u007fé'


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_any_text_escaped_by_the_client_reads_back_unchanged(libdaq: ctypes.CDLL, text: str) -> None:
    """A JSON parser reads the client's escaped form of any text (no NUL) back to that text."""
    assert json.loads(f'"{_escape(libdaq, text)}"') == text
