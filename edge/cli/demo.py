"""``astro-edge demo``: the node demo (edge.cli.demo_node), or with ``--protocol-only`` the wire protocol
end to end over loopback TCP, and what arrived.

The protocol-only demo: a DAQ-side ``FrameSender``
in a thread streams digital-twin frames (synthetic star fields when the twin package is not
importable) to a ``FrameReceiver`` bound on 127.0.0.1, with a few faults injected on purpose (a
corrupted frame, a skipped sequence number) so the output shows rejections and gaps being caught.
It must stay fast (well under a minute by default) and must not touch files.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to the ``astro-edge`` parser."""
    p = subparsers.add_parser(
        "demo", help="a whole node on loopback, scored against the twin's truth",
        description="Start a ground receiver, a node with the shipped engine and an embedded config, "
                    "and the rig streaming twin frames with every anomaly family and transients, all "
                    "over tcp://127.0.0.1; then print a scoreboard (frames/s, latency, bytes in vs "
                    "down, recall per anomaly family at S/N >= 20, ordinary detections sent, drops, "
                    "records lost). With --protocol-only: just frames through the wire protocol, "
                    "with a corrupted frame and a skipped sequence number caught.")
    p.add_argument("--n", type=int, default=None, help="frames to send (default 50; 12 with --protocol-only)")
    p.add_argument("--size", type=int, default=2048, help="frame side in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=None, help="seed for the frames (default 2026; 1 with --protocol-only)")
    p.add_argument("--workers", type=int, default=2, help="node pipeline processes (default 2)")
    p.add_argument("--out", default=None,
                   help="folder for the ground's files, the spool and scoreboard.json (default: a new temporary folder)")
    p.add_argument("--protocol-only", action="store_true",
                   help="only stream frames through the protocol and show what arrived")
    p.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none",
                   help="--protocol-only: payload compression (default none)")
    p.add_argument("--synthetic", action="store_true",
                   help="--protocol-only: synthetic star fields even when the twin is available")
    p.add_argument("--no-faults", action="store_true",
                   help="--protocol-only: do not inject the corrupted frame and the skipped sequence number")
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.protocol_only:
        args.n = 12 if args.n is None else args.n
        args.seed = 1 if args.seed is None else args.seed
        return run(args)
    return run_node_demo(args)


def run_node_demo(args: argparse.Namespace) -> int:
    """The node demo (edge.cli.demo_node); exit code 0 when no accepted record was lost."""
    from pathlib import Path

    from edge.cli.demo_node import DEMO_LOG_LEVEL, DemoSettings, print_scoreboard, run_demo
    from edge.errors import ConfigError
    from edge.log import configure

    n = 50 if args.n is None else args.n
    if n < 1 or not 256 <= args.size <= 8192 or args.workers < 1:
        raise ConfigError("--n must be >= 1, --size in [256, 8192] and --workers >= 1 for the node demo")
    # as `astro-edge run` does, the node logs at its config's level: the embedded config's is
    # warning, so one line per frame does not bury the progress line
    configure(json=args.log_json, level=DEMO_LOG_LEVEL)
    board = run_demo(DemoSettings(n_frames=n, size_px=args.size, seed=2026 if args.seed is None else args.seed,
                                  workers=args.workers, out_dir=Path(args.out) if args.out else None))
    print_scoreboard(board)
    return 0 if board["records_lost"] == 0 and board["conserved"] else 1


def synthetic_frame(shape: tuple[int, int], index: int, rng: np.random.Generator) -> NDArray[np.uint16]:
    """A quick raw-looking uint16 frame: bias, sky, Gaussian stars, read and shot noise."""
    ny, nx = shape
    sky = np.full(shape, 500.0 + 20.0, dtype=np.float32)
    n_stars = max(5, ny * nx // 20000)
    ys = rng.uniform(0, ny, n_stars)
    xs = rng.uniform(0, nx, n_stars)
    flux = 10 ** rng.uniform(2.5, 4.5, n_stars)
    for y0, x0, f in zip(ys, xs, flux, strict=True):
        y_lo, y_hi = max(0, int(y0) - 6), min(ny, int(y0) + 7)
        x_lo, x_hi = max(0, int(x0) - 6), min(nx, int(x0) + 7)
        yy, xx = np.mgrid[y_lo:y_hi, x_lo:x_hi]
        sky[y_lo:y_hi, x_lo:x_hi] += f / (2 * np.pi * 2.0**2) * np.exp(
            -((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 2.0**2))
    noisy = rng.normal(sky, np.sqrt(sky) + 3.0).astype(np.float32)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def _frames(n: int, size: int, seed: int, synthetic: bool) -> tuple[str, Iterator[Any]]:
    """The frame source's name and an iterator of FrameSource objects."""
    from firmware_bridge.rig import FrameSource, twin_frames

    if not synthetic:
        try:
            import twin

            if hasattr(twin, "simulate_frame"):
                return "twin", twin_frames(n, size_px=size, seed=seed)
        except ImportError:
            pass

    def gen() -> Iterator[FrameSource]:
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield FrameSource(synthetic_frame((size, size), i, rng),
                              f"2026-11-28T00:00:{i % 60:02d}.000000Z", 30.0, {}, {"FILTER": "r"},
                              f"synthetic-{i}")

    return "synthetic", gen()


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its report; exit code 0 when every good frame arrived intact."""
    import zmq

    from edge.errors import ConfigError
    from firmware_bridge import Frame, FrameReceiver, FrameSender, SeriesEnd
    from firmware_bridge.protocol import encode_frame

    if args.n < 1 or not 16 <= args.size <= 8192:
        raise ConfigError("--n must be >= 1 and --size in [16, 8192]")
    source, frames = _frames(args.n, args.size, args.seed, args.synthetic)
    faults = not args.no_faults and args.n >= 3
    ctx = zmq.Context()
    rx = FrameReceiver("tcp://127.0.0.1:*", rcvhwm=8, context=ctx)
    print(f"demo: receiver bound at {rx.endpoint}; sending {args.n} {source} frames of "
          f"{args.size}x{args.size} uint16, compression {args.compression}"
          + ("; injecting 1 corrupted frame and 1 skipped seq" if faults else ""))
    sent: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def daq() -> None:
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
        except BaseException as exc:  # reported by the main thread, which owns the exit code
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
    expected_good = len(sent)
    print(f"demo: {intact} of {expected_good} good frames arrived bit-exact")
    return 0 if intact == expected_good else 1
