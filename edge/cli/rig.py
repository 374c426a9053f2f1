"""The ``astro-edge rig`` subcommands: stream, replay, record, score, inject, conformance.

Light on purpose: argparse only at import; the rig, sockets, astropy and the twin are imported
inside the handlers, so ``astro-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


def register(subparsers: Any) -> None:
    """Add ``rig`` and its subcommands to the ``astro-edge`` parser."""
    rig = subparsers.add_parser(
        "rig", help="hardware-in-the-loop rig: stream, replay, record, score, inject, conformance",
        description="The hardware-in-the-loop rig: play a detector into a node through the frame "
                    "protocol (the node cannot tell it from a DAQ), record a live feed, inject twin "
                    "objects into real frames, score what a node sent down against truth "
                    "(docs/rig.md), check a DAQ's stream against the protocol (docs/protocol.md).")
    sub = rig.add_subparsers(dest="rig_command", metavar="ACTION", required=True)

    def add_sender_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=DEFAULT_ADDRESS, metavar="ADDRESS",
                       help=f"the node's frame address (default {DEFAULT_ADDRESS})")
        p.add_argument("--bind", action="store_true",
                       help="bind the PUSH socket instead of connecting (when the node connects)")
        p.add_argument("--rate-hz", type=float, default=0.0, metavar="HZ",
                       help="frames per second, dropping what the node cannot take like a DAQ; "
                            "0 (default): as fast as the node takes them")
        p.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none",
                       help="payload compression (default none)")
        p.add_argument("--detector-id", default="rig", metavar="ID", help="detector id in headers (default rig)")
        p.add_argument("--sndhwm", type=int, default=4, metavar="N", help="send high-water mark (default 4)")

    p = sub.add_parser(
        "stream", help="play digital-twin frames into a node",
        description="Simulate N digital-twin frames and send them to a node as one series (series "
                    "start, frames, series end); print the send statistics as one JSON line.")
    add_sender_args(p)
    p.add_argument("--n", type=int, default=10, metavar="N", help="number of frames (default 10)")
    p.add_argument("--size", type=int, default=2048, metavar="PX", help="frame side in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="twin seed (default 1)")
    p.add_argument("--anomalies", default="", metavar="FAMILY,...",
                   help="comma-separated anomaly families to switch on (default none)")
    p.set_defaults(func=_stream)

    p = sub.add_parser(
        "replay", help="play a directory of FITS frames, or a recording, into a node",
        description="Send a directory of FITS frames (in name order, as one series) or a recording "
                    "made by `rig record` (message for message, byte-exactly) to a node; print the "
                    "send statistics as one JSON line.")
    add_sender_args(p)
    p.add_argument("source", type=Path, metavar="PATH", help="directory of FITS frames, or a file from `rig record`")
    p.add_argument("--realtime", action="store_true",
                   help="for a recording: keep the recorded intervals between messages")
    p.set_defaults(func=_replay)

    p = sub.add_parser(
        "record", help="record a live feed byte-exactly",
        description="Receive a DAQ's frame messages on a PULL socket and store them byte-exactly, with "
                    "their arrival times, in a recording file that `rig replay` plays back. Stops "
                    "after --count messages or --duration-s seconds, whichever comes first, or on "
                    "Ctrl-C; prints the statistics as one JSON line.")
    p.add_argument("address", metavar="ADDRESS", help="address to listen on (bound) or to connect to (--connect)")
    p.add_argument("out", type=Path, metavar="FILE", help="recording file to write")
    p.add_argument("--connect", action="store_true", help="connect instead of binding")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="stop after this many messages (default: no limit)")
    p.add_argument("--duration-s", type=float, default=None, metavar="S",
                   help="stop after this many seconds (default: no limit)")
    p.set_defaults(func=_record)

    p = sub.add_parser(
        "score", help="score a downlink (JSON lines) against truth (ECSV)",
        description="Match downlinked records one-to-one to the truth objects of their frame within a "
                    "radius (an extended object within its size), nearest pairs first, and print the "
                    "score as JSON: recall per label and family, the fraction of ordinary objects sent, "
                    "and latency.")
    p.add_argument("--truth", type=Path, required=True, metavar="FILE",
                   help="truth table, ECSV (e.g. truth.ecsv of `twin frames`)")
    p.add_argument("--downlink", type=Path, required=True, metavar="FILE",
                   help="downlinked records, JSON lines (e.g. downlink.jsonl of `ground`)")
    p.add_argument("--radius-px", type=float, default=3.0, metavar="PX", help="match radius in pixels (default 3)")
    p.add_argument("--snr-min", type=float, default=None, metavar="S",
                   help="count only truth objects of snr_expected >= S in the recall figures (default: all)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the score here as JSON")
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "inject", help="add twin objects to real FITS frames, with truth, to measure recall on real sky",
        description="Add digital-twin objects to real FITS frames with each frame's own measured PSF "
                    "(Moffat FWHM, beta and their variation over the field), gain, flat and noise: "
                    "the objects' electrons, with Poisson noise, go into the raw pixels, so the node "
                    "processes DIR/<stem>_inj.fits exactly like the original. Each object's flux is "
                    "set by an S/N drawn log-uniform in [--snr-min, --snr-max] (matched filter, against "
                    "the frame's own variance). Writes the frames, DIR/truth.ecsv (the twin's truth "
                    "columns plus file and series_id, for `rig score`) and DIR/inject.json (the PSF "
                    "used and the counts per frame); prints a summary as one JSON line. A frame with "
                    "too few stars to measure its PSF is named and skipped (exit code 1).")
    p.add_argument("frames", nargs="+", type=Path, metavar="FRAME", help="real FITS frames (raw, or calibrated float)")
    p.add_argument("--families", required=True, metavar="FAMILY,...",
                   help="comma-separated families to inject: star (the control), transient, streak, "
                        "lens_arc, comet, lobster_psf, close_double, ghost; or all")
    p.add_argument("--per-frame", type=int, required=True, metavar="N",
                   help="objects per frame, the families in turn")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--calibration", type=Path, default=None, metavar="BUNDLE",
                   help="calibration bundle of the camera (default: none; the header's GAIN/RDNOISE, or "
                        "the noise estimated from the frame, as `process` does)")
    p.add_argument("--snr-min", type=float, default=20.0, metavar="S", help="lowest S/N drawn (default 20)")
    p.add_argument("--snr-max", type=float, default=200.0, metavar="S", help="highest S/N drawn (default 200)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="random seed; the same seed and frame give the same pixels (default 0)")
    p.set_defaults(func=_inject)

    p = sub.add_parser(
        "conformance", help="check a DAQ's stream against the frame protocol",
        description="Bind a PULL socket where a DAQ sends its frames and judge every message against "
                    "docs/protocol.md: what a receiver rejects (section 3), sequence numbers, gaps and the "
                    "series accounting (sections 2.5 and 2.7), and 2-D images for the node. Prints a "
                    "report with each check PASS or FAIL and, below a failure, the offending message's "
                    "index (0-based, in arrival order) and reason. Stops after --count messages or "
                    "--timeout-s seconds without one, or on Ctrl-C. Exit code 0 when every check passes, "
                    "1 otherwise.")
    p.add_argument("--bind", required=True, metavar="ADDRESS",
                   help="address to bind, where the DAQ connects (e.g. tcp://0.0.0.0:5555)")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="stop after this many messages (default: no limit)")
    p.add_argument("--timeout-s", type=float, default=10.0, metavar="S",
                   help="stop when no message has arrived for this long (default 10)")
    p.add_argument("--max-frame-bytes", type=int, default=None, metavar="N",
                   help="the largest frame accepted, in pixel bytes (default: the node's, 268435456)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.set_defaults(func=_conformance)


def _check_rate(args: argparse.Namespace) -> None:
    from edge.errors import ConfigError

    if args.rate_hz < 0:
        raise ConfigError(f"--rate-hz must be >= 0, not {args.rate_hz}")
    if args.sndhwm < 1:
        raise ConfigError(f"--sndhwm must be >= 1, not {args.sndhwm}")


def _print_stats(stats: Any) -> None:
    import dataclasses

    print(json.dumps(dataclasses.asdict(stats)))


def _stream(args: argparse.Namespace) -> int:
    from edge.errors import ConfigError
    from firmware_bridge.rig import play_frames, twin_frames
    from firmware_bridge.sender import FrameSender

    _check_rate(args)
    if args.n < 1 or args.size < 16:
        raise ConfigError("--n must be >= 1 and --size >= 16")
    anomalies = tuple(a for a in args.anomalies.split(",") if a)
    with FrameSender(args.address, bind=args.bind, detector_id=args.detector_id,
                     sndhwm=args.sndhwm, compression=args.compression) as tx:
        stats = play_frames(tx, twin_frames(args.n, size_px=args.size, seed=args.seed,
                                            anomalies=anomalies),
                            rate_hz=args.rate_hz, expected_frames=args.n)
        tx.close(linger_ms=5000)
    _print_stats(stats)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from firmware_bridge.rig import replay
    from firmware_bridge.sender import FrameSender

    _check_rate(args)
    with FrameSender(args.address, bind=args.bind, detector_id=args.detector_id,
                     sndhwm=args.sndhwm, compression=args.compression) as tx:
        stats = replay(args.source, tx, rate_hz=args.rate_hz, realtime=args.realtime)
        tx.close(linger_ms=5000)
    _print_stats(stats)
    return 0


def _record(args: argparse.Namespace) -> int:
    from firmware_bridge.rig import record

    stats = record(args.address, args.out, bind=not args.connect, count=args.count,
                   duration_s=args.duration_s)
    _print_stats(stats)
    return 0


def _score(args: argparse.Namespace) -> int:
    from firmware_bridge.rig import score_files

    result = score_files(args.truth, args.downlink, radius_px=args.radius_px, snr_min=args.snr_min)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.flush()
    return 0


def _inject(args: argparse.Namespace) -> int:
    from edge.commission.inject import InjectSettings, parse_families
    from edge.commission.inject_files import inject_files

    settings = InjectSettings(families=parse_families(args.families), per_frame=args.per_frame,
                              snr_min=args.snr_min, snr_max=args.snr_max)
    report = inject_files(args.frames, args.out, settings, seed=args.seed, calibration=args.calibration)
    print(json.dumps({"frames": report.frames, "injected": report.injected, "failed": list(report.failed),
                      "out": str(report.out_dir), "truth": str(report.truth)}))
    sys.stdout.flush()
    return 1 if report.failed else 0


def _conformance(args: argparse.Namespace) -> int:
    from edge.config import ReceiveSection
    from edge.errors import ConfigError
    from firmware_bridge.conformance import ConformanceListener

    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be >= 1, not {args.count}")
    if not args.timeout_s > 0:
        raise ConfigError(f"--timeout-s must be > 0, not {args.timeout_s}")
    node = ReceiveSection()
    with ConformanceListener(args.bind, max_frame_bytes=args.max_frame_bytes or node.max_frame_bytes,
                             max_compression_ratio=node.max_compression_ratio) as listener:
        try:
            report = listener.run(count=args.count, timeout_s=args.timeout_s)
        except KeyboardInterrupt:
            report = listener.report("interrupted")
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.to_text())
    sys.stdout.flush()
    return 0 if report.passed else 1
