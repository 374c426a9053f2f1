"""``astro-edge ground``: the ground receiver that stores and acknowledges downlinked records.

Light on purpose: argparse only at import; the receiver, pyzmq and astropy are imported inside
the handler, so ``astro-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from typing import Any

from edge.errors import ConfigError

DEFAULT_GROUND_BIND = "tcp://127.0.0.1:5556"


def register(subparsers: Any) -> None:
    """Add ``ground`` to the ``astro-edge`` parser."""
    p = subparsers.add_parser(
        "ground", help="receive, store and acknowledge downlinked records",
        description="The ground receiver: writes DIR/downlink.jsonl (records), DIR/frames.jsonl "
                    "(frame summaries) and DIR/downlink-YYYYMMDD.fits (the records received on "
                    "that UTC day as a FITS table), acknowledges what it stored and drops "
                    "duplicates by record id. Stops on Ctrl-C or SIGTERM, after writing the FITS tables. With a "
                    "subcommand instead: `review` serves the review desk over such a folder and `labels "
                    "export` writes the labels given there (docs/review.md).")
    p.add_argument("--bind", default=DEFAULT_GROUND_BIND, metavar="ADDRESS",
                   help=f"address to bind the ROUTER socket to (default {DEFAULT_GROUND_BIND})")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (created if absent); required to receive")
    p.add_argument("--fits-interval-s", type=float, default=60.0, metavar="S",
                   help="rewrite the day's FITS table every this many seconds when records arrived "
                        "(default 60; 0: only at exit)")
    p.add_argument("--curve-secret-key", default=None, metavar="FILE",
                   help="this ground's NAME.key_secret: turns CURVE on (then give --allow-key)")
    p.add_argument("--allow-key", action="append", default=[], metavar="FILE",
                   help="a node's NAME.key allowed to downlink (repeat for several); with CURVE only")
    p.add_argument("--duration-s", type=float, default=0.0, metavar="S",
                   help="stop after this many seconds (default 0: run until stopped)")
    p.add_argument("--publish", default="", metavar="URL",
                   help="also publish every stored record and frame summary, once, to the NATS "
                        "JetStream stream ASTRO_EDGE at URL, nats://HOST:PORT (needs astro-edge[ground]; "
                        "docs/jetstream.md)")
    p.add_argument("--publish-packets", default="json", choices=("json", "avro"), metavar="FORMAT",
                   help="what a record's message carries: its JSON line (json, default) or its Avro "
                        "alert packet (avro, docs/alerts.md); the Content-Type header says which")
    p.add_argument("--publish-replicas", type=int, default=1, metavar="N",
                   help="replicas of the stream when this ground creates it (default 1; 3 on a 3-server cluster)")
    p.set_defaults(func=_ground)
    from edge.cli.review import add_ground_commands

    add_ground_commands(p.add_subparsers(dest="ground_command", metavar="SUBCOMMAND", title="subcommands (the "
                                         "receiver runs without one)"))


def _ground(args: argparse.Namespace) -> int:
    from edge.ground.receiver import GroundReceiver
    from edge.log import get_logger

    if not args.out:
        raise ConfigError("the receiver needs --out DIR (or give a subcommand: review, labels)", where="ground")
    if args.fits_interval_s < 0 or args.duration_s < 0:
        raise ConfigError("--fits-interval-s and --duration-s must be >= 0", where="ground")
    if args.publish:
        if not args.publish.startswith(("nats://", "tls://")) or args.publish_replicas < 1:
            raise ConfigError("--publish takes nats://HOST:PORT and --publish-replicas a count >= 1", where="ground")
        try:
            import nats  # noqa: F401 - only to say what is missing before anything starts
        except ImportError:
            raise ConfigError("--publish needs nats-py: pip install 'astro-edge[ground]'", where="ground") from None
    if bool(args.curve_secret_key) != bool(args.allow_key):
        raise ConfigError("CURVE needs both --curve-secret-key and at least one --allow-key", where="ground")
    log = get_logger(__name__)
    curve = (args.curve_secret_key, args.allow_key) if args.curve_secret_key else None
    if curve is None:
        log.warning("ground.insecure", detail="CURVE is off: any node that reaches this address can downlink")
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    end = time.monotonic() + args.duration_s if args.duration_s > 0 else None
    try:
        with GroundReceiver(args.bind, args.out, fits_interval_s=args.fits_interval_s, curve=curve) as ground:
            print(f"astro-edge ground: listening on {ground.address}, writing {ground.out_dir}",
                  flush=True)
            publisher = None
            if args.publish:
                from edge.ground.publish import Publisher

                publisher = Publisher(ground.out_dir, args.publish, replicas=args.publish_replicas,
                                      packets=args.publish_packets)
                publisher.start()
            try:
                # Ctrl-C is the normal way to stop: fall through to write the FITS table
                with contextlib.suppress(KeyboardInterrupt):
                    ground.serve(lambda: stop["now"] or (end is not None and time.monotonic() >= end))
            finally:
                if publisher is not None:
                    published = publisher.stop(drain_s=5.0)
                    print(f"astro-edge ground: published {published.published} to {args.publish} "
                          f"({published.duplicates} already there, {publisher.lag_bytes()} bytes left "
                          f"for the next start)", flush=True)
            counters = ground.counters()
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("ground.summary", records=counters.records, summaries=counters.summaries,
             duplicates=counters.duplicates, malformed=sum(counters.malformed.values()))
    print(f"astro-edge ground: {counters.records} records, {counters.summaries} frame summaries, "
          f"{counters.duplicates} duplicates dropped, {sum(counters.malformed.values())} malformed")
    return 0
