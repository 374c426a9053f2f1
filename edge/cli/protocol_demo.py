"""``astro-edge demo --protocol-only``: just frames through the wire protocol, no node.

A ``FrameSender`` in a thread streams twin frames (synthetic star fields without the twin) to a
``FrameReceiver`` on 127.0.0.1, with a corrupted frame and a skipped sequence number injected, so
the output shows rejections and gaps being caught. It must stay fast (well under a minute by
default) and must not touch files. ``edge.cli.demo`` registers the command and hands over here.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def _protocol_frames(n: int, size: int, seed: int, synthetic: bool) -> tuple[str, Iterator[Any]]:
    """The frame source's name and an iterator of FrameSource objects."""
    from edge.testing import synthetic_frames
    from firmware_bridge.rig import twin_frames

    if not synthetic:
        try:
            import twin

            if hasattr(twin, "simulate_frame"):
                return "twin", twin_frames(n, size_px=size, seed=seed)
        except ImportError:
            pass
    return "synthetic", synthetic_frames(n, size_px=size, seed=seed)


def run_protocol_demo(args: argparse.Namespace) -> int:
    """Run the protocol-only demo and print its report; exit code 0 when every good frame arrived intact."""
    import zmq

    from edge.errors import ConfigError
    from firmware_bridge import Frame, FrameReceiver, FrameSender, SeriesEnd
    from firmware_bridge.protocol import encode_frame

    if args.n < 1 or not 16 <= args.size <= 8192:
        raise ConfigError("--n must be >= 1 and --size in [16, 8192]")
    source, frames = _protocol_frames(args.n, args.size, args.seed, args.synthetic)
    faults = not args.no_faults and args.n >= 3
    ctx = zmq.Context()
    rx = FrameReceiver("tcp://127.0.0.1:*", rcvhwm=8, context=ctx)
    print(f"demo: receiver bound at {rx.endpoint}; sending {args.n} {source} frames of "
          f"{args.size}x{args.size} uint16, compression {args.compression}"
          + ("; injecting 1 corrupted frame and 1 skipped seq" if faults else ""))
    sent: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def daq() -> None:
        # not edge.testing's LoopbackDaq: this DAQ misbehaves on purpose, frame by frame
        try:
            with FrameSender(rx.endpoint, detector_id="demo-cam", sndhwm=8, send_timeout_ms=30_000,
                             compression=args.compression, context=ctx) as tx:
                tx.start_series(1, expected_frames=args.n)
                for seq, f in enumerate(frames):
                    if faults and seq == 1:  # lost on the way: the node must see a gap
                        continue
                    if faults and seq == 2:  # a bit flip in transit: the node must reject it
                        parts = encode_frame(f.pixels, detector_id="demo-cam", series_id=1,
                                             seq=seq, start_utc=f.start_utc,
                                             exposure_s=f.exposure_s)
                        payload = bytearray(parts[1])
                        payload[len(payload) // 2] ^= 0x10
                        tx.send_parts([parts[0], bytes(payload)])
                        continue
                    sent[seq] = f.pixels.tobytes()
                    tx.send_frame(f.pixels, seq=seq, start_utc=f.start_utc,
                                  exposure_s=f.exposure_s, wcs=f.wcs, keywords=f.keywords)
                tx.end_series()
                tx.close(linger_ms=10_000)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which owns the exit code
            errors.append(exc)

    t0 = time.perf_counter()
    thread = threading.Thread(target=daq, name="demo-daq", daemon=True)
    thread.start()
    intact = 0
    t_first = t_last = None
    try:
        while True:
            msg = rx.recv(timeout_ms=60_000)
            if msg is None:
                print("demo: nothing arrived for 60 s; giving up")
                break
            if isinstance(msg, Frame):
                now = time.perf_counter()
                t_first = t_first or now
                t_last = now
                h = msg.header
                ok = sent.get(h.seq) == msg.pixels.tobytes()
                intact += ok
                print(f"  frame seq={h.seq:<3d} {h.shape[1]}x{h.shape[0]} {h.dtype} "
                      f"{h.payload_nbytes / 2**20:6.2f} MiB on the wire  "
                      f"median {float(np.median(msg.pixels[::8, ::8])):7.1f} ADU  "
                      f"{'bit-exact' if ok else 'DIFFERS'}")
            elif isinstance(msg, SeriesEnd):
                print(f"  series end: DAQ says {msg.frames_sent} sent, {msg.frames_dropped} dropped")
                break
    finally:
        thread.join(30)
        rx.close()
        if not thread.is_alive():  # a stuck DAQ thread still owns a socket; term() would wait on it
            ctx.term()
    if errors:
        raise errors[0]
    c = rx.counters
    elapsed = time.perf_counter() - t0
    span = (t_last - t_first) if (t_first and t_last and t_last > t_first) else None
    rate = f"{(c.frames - 1) / span:.1f} frames/s" if span else "n/a"
    print(f"demo: received {c.received} messages ({c.frames} frames, "
          f"{c.bytes_received / 1e6:.1f} MB) in {elapsed:.1f} s; arrival rate {rate} (paced by how fast the DAQ thread makes frames)")
    reasons = f" {dict(c.rejected_by_reason)}" if c.rejected_by_reason else ""
    print(f"demo: accepted {c.accepted}, rejected {c.rejected}{reasons}, gaps {c.gaps} "
          f"(missing {', '.join(f'{g.first_missing}-{g.last_missing}' for g in rx.gaps) or 'none'})")
    print(f"demo: {intact} of {len(sent)} good frames arrived bit-exact")
    return 0 if intact == len(sent) else 1
