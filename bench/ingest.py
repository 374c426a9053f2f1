"""Ingest throughput: FrameReceiver against a bare pyzmq PULL loop, same sender, same run.

A separate process sends 4096x4096 uint16 protocol frames (header + 32 MiB payload) as fast as
the socket takes them, over ipc:// and tcp://127.0.0.1. The receiving side is either a bare
``recv_multipart(copy=False)`` loop (the reference) or ``FrameReceiver.recv`` (full validation,
xxh3-64 checksum, zero-copy view). Rounds alternate between the two so load changes hit both.
The machine is shared, so each round of FrameReceiver is paired with the bare round just before
it and the ratio is taken per pair; the last line prints the median of the paired ratios per
transport (target >= 0.9 on both). Rates are printed as the best and the median round, with the
receiving process's CPU time per frame, which other jobs disturb less than wall time.

    .venv/bin/python bench/ingest.py [--frames 24] [--rounds 9] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import numpy as np
import zmq

from edge.cli.progress import track
from firmware_bridge.protocol import decode_header, encode_frame
from firmware_bridge.receiver import FrameReceiver


def _send(address: str, n_frames: int, size: int, ready: mp.synchronize.Event) -> None:
    """Sender process: connect, then push n_frames protocol frames with blocking sends."""
    pixels = np.random.default_rng(1).integers(0, 65535, (size, size), dtype=np.uint16)
    header_bytes, payload = encode_frame(pixels, detector_id="bench", series_id=1, seq=0,
                                         start_utc="2026-11-28T00:00:00Z", exposure_s=1.0)
    header = decode_header(header_bytes)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.connect(address)
    ready.wait()
    for seq in range(n_frames):
        header["seq"] = seq  # the payload is the same, so its checksum is too
        sock.send_multipart([json.dumps(header).encode(), payload], copy=False)
    sock.close(linger=-1)
    ctx.term()


def _bare(sock: zmq.Socket, n_frames: int) -> int:
    nbytes = 0
    for _ in range(n_frames):
        parts = sock.recv_multipart(copy=False)
        nbytes += sum(len(p) for p in parts)
    return nbytes


def _run(address: str, n_frames: int, size: int, kind: str) -> tuple[float, float, float]:
    """One round: frames/s and GB/s received, timed from the first frame to the last, and the
    receiving process's CPU ms per frame (all its threads, ZeroMQ's I/O thread included)."""
    ctx = zmq.Context()
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_send, args=(address, n_frames, size, ready))
    if kind == "bare":
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.bind(address)
        proc.start()
        ready.set()
        first = sock.recv_multipart(copy=False)
        t0, c0 = time.perf_counter(), time.process_time()
        nbytes = _bare(sock, n_frames - 1)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        nbytes += sum(len(p) for p in first)
        sock.close(linger=0)
    else:
        receiver = FrameReceiver(address, rcvhwm=4, context=ctx)
        proc.start()
        ready.set()
        first_msg = receiver.recv()
        assert first_msg is not None
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_frames - 1):
            receiver.recv()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert receiver.counters.frames == n_frames and receiver.counters.rejected == 0
        nbytes = receiver.counters.bytes_received
        receiver.close()
    proc.join()
    ctx.term()
    rate = (n_frames - 1) / elapsed
    return rate, rate * nbytes / n_frames / 1e9, cpu / (n_frames - 1) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="frames per round (default 24)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per receiver (default 9)")
    parser.add_argument("--size", type=int, default=4096, help="frame side in pixels (default 4096)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (cpus: {os.cpu_count()})")
    with tempfile.TemporaryDirectory() as tmp:
        transports = {"ipc": f"ipc://{tmp}/ingest.sock", "tcp": "tcp://127.0.0.1:5599"}
        ratios = {}
        for name, address in transports.items():
            results: dict[str, list[tuple[float, float, float]]] = {"bare": [], "receiver": []}
            for _ in track(range(args.rounds), f"{name} rounds (bare, then FrameReceiver)"):
                for kind in ("bare", "receiver"):
                    results[kind].append(_run(address, args.frames, args.size, kind))
            best = {k: max(v) for k, v in results.items()}
            ratios[name] = statistics.median(
                r[0] / b[0] for b, r in zip(results["bare"], results["receiver"], strict=True))
            for kind in ("bare", "receiver"):
                fps, gbps, _ = best[kind]
                median = statistics.median(r[0] for r in results[kind])
                cpu_ms = statistics.median(r[2] for r in results[kind])
                print(f"{name:3s} {kind:8s} {fps:7.1f} frames/s {gbps:6.2f} GB/s best of "
                      f"{args.rounds} rounds of {args.frames} frames {args.size}x{args.size} "
                      f"uint16 (median {median:.1f} frames/s, {cpu_ms:.1f} CPU ms/frame)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(" ".join(f"{name} FrameReceiver/bare = {r:.3f}" for name, r in ratios.items())
          + " (median of paired rounds)")


if __name__ == "__main__":
    main()
