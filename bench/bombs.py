"""Hostile frames at the node's receiver: how long a refusal takes and what it costs in memory.

One process holds a FrameReceiver with the node's default bounds ([receive] max_frame_bytes 256 MiB,
max_compression_ratio 64) and a bare PUSH socket that sends, over tcp://127.0.0.1:

- a header declaring 2 GiB of pixels (32768 x 16384 float32) with a 4 KB payload;
- zstd payloads of zeros declaring 4096 x 4096 and 8192 x 8192 float32 frames (64 and 256 MiB;
  2 KB and 8 KB of payload);
- a 65 KB zstd payload (random bytes; only its length matters to the bound) declaring 8192 x 8192.

Each refusal is timed from the send to the rejection counted, and the process's peak RSS is read
before and after. The reference, in the same process, is what the bound saves: decoding one of
the same bombs with the ratio bound lifted (checksum and inflation of its declared pixels).
The last line prints the slowest refusal, the peak RSS rise and the ratio of the reference's time
to the slowest refusal.

    .venv/bin/python bench/bombs.py
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any

import numpy as np
import zmq
import zstandard

from edge.config import ReceiveSection
from firmware_bridge.protocol import checksum_xxh3_64, decode_message, encode_frame
from firmware_bridge.receiver import FrameReceiver


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _template() -> dict[str, Any]:
    header, _ = encode_frame(np.zeros((4, 4), np.float32), detector_id="bomb", series_id=1, seq=0,
                             start_utc="2026-12-03T00:00:00Z", exposure_s=1.0)
    return json.loads(bytes(header))


def _bomb(shape: tuple[int, int], level: int) -> list[bytes]:
    nbytes = shape[0] * shape[1] * 4
    comp = zstandard.ZstdCompressor(level=level).compressobj()
    chunk = bytes(1 << 20)
    payload = b"".join(comp.compress(chunk) for _ in range(nbytes // len(chunk))) + comp.flush()
    header = {**_template(), "shape": list(shape), "dtype": "<f4", "compression": "zstd",
              "checksum": checksum_xxh3_64(payload)}
    return [json.dumps(header).encode(), payload]


def _sized(shape: tuple[int, int], nbytes: int) -> list[bytes]:
    payload = np.random.default_rng(0).bytes(nbytes)
    header = {**_template(), "shape": list(shape), "dtype": "<f4", "compression": "zstd",
              "checksum": checksum_xxh3_64(payload)}
    return [json.dumps(header).encode(), payload]


def main() -> None:
    section = ReceiveSection()
    huge_payload = bytes(4096)
    huge = [json.dumps({**_template(), "shape": [32768, 16384], "dtype": "<f4",
                        "checksum": checksum_xxh3_64(huge_payload)}).encode(), huge_payload]
    cases = [("2 GiB header, 4 KB payload", huge),
             ("zstd bomb declaring 4096x4096 f4", _bomb((4096, 4096), 19)),
             ("zstd bomb declaring 8192x8192 f4", _bomb((8192, 8192), 19)),
             ("65 KB zstd payload declaring 8192x8192 f4", _sized((8192, 8192), 65 << 10))]
    ctx = zmq.Context()
    rss0 = _peak_rss_mib()
    slowest = 0.0
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=8, context=ctx, max_frame_bytes=section.max_frame_bytes,
                       max_compression_ratio=section.max_compression_ratio) as rx:
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        push.connect(rx.endpoint)
        for name, parts in cases:
            before = rx.counters.rejected
            reasons = dict(rx.counters.rejected_by_reason)
            t0 = time.perf_counter()
            push.send_multipart(parts)
            # what FrameReceiver.recv does, one message at a time, so the clock stops at the refusal
            while rx.counters.rejected == before:
                if rx.socket.poll(2000, zmq.POLLIN):
                    rx.accept(rx.socket.recv_multipart(copy=False))
            ms = (time.perf_counter() - t0) * 1000.0
            slowest = max(slowest, ms)
            (reason,) = [r for r, n in rx.counters.rejected_by_reason.items() if n != reasons.get(r, 0)]
            print(f"{name}: payload {len(parts[1])} bytes, refused as {reason} in {ms:.2f} ms")
        push.close()
    rss1 = _peak_rss_mib()
    # the reference: the 256 MiB bomb decoded as if no ratio bound existed
    parts = cases[2][1]
    t0 = time.perf_counter()
    msg = decode_message(parts, max_frame_bytes=section.max_frame_bytes, max_compression_ratio=float("inf"))
    ref_ms = (time.perf_counter() - t0) * 1000.0
    rss2 = _peak_rss_mib()
    del msg
    ctx.term()
    print(f"reference: the 8192x8192 bomb decoded with no ratio bound took {ref_ms:.0f} ms and raised "
          f"peak RSS by {rss2 - rss1:.0f} MiB")
    print(f"slowest refusal {slowest:.2f} ms; peak RSS rise during the refusals {rss1 - rss0:.1f} MiB "
          f"(frame bound {section.max_frame_bytes >> 20} MiB); reference/slowest refusal "
          f"{ref_ms / slowest:.0f}x")


if __name__ == "__main__":
    main()
