"""``astro-edge run`` (the live node) and ``astro-edge process`` (the same pipeline on FITS files).

Light at import: the pipeline, workers, sockets and engines are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``run`` and ``process`` to the ``astro-edge`` parser."""
    run = subparsers.add_parser(
        "run", help="the node daemon: receive frames, triage, spool and downlink",
        description="Run the node: bind the frame receiver, start the pipeline workers, spool every "
                    "record durably and downlink from the spool. SIGTERM or Ctrl-C stops it after "
                    "the frames already accepted are processed and spooled.")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="node config (TOML); defaults apply without one")
    run.add_argument("--calibration", metavar="FILE",
                     help="calibration bundle (overrides [calibration] bundle)")
    run.add_argument("--status-file", type=Path, metavar="FILE",
                     help="write the node's counters here as JSON, every second and at exit")
    run.add_argument("--drain-s", type=float, default=5.0, metavar="S",
                     help="at shutdown, keep sending the spool to the ground this long (default 5)")
    run.set_defaults(func=_run)

    proc = subparsers.add_parser(
        "process", help="run the node's pipeline offline on FITS files",
        description="The node's pipeline on FITS files: raw frames with a calibration bundle, or "
                    "calibrated float frames (GAIN/RDNOISE headers used when present, else the noise "
                    "is estimated). Writes DIR/downlink.jsonl and DIR/frames.jsonl (--out DIR).")
    proc.add_argument("frames", nargs="+", type=Path, metavar="FILE",
                      help="FITS files, processed in the order given")
    proc.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    proc.add_argument("--config", type=Path, metavar="FILE", help="node config (TOML)")
    proc.add_argument("--calibration", metavar="FILE",
                      help="calibration bundle (overrides [calibration] bundle)")
    proc.set_defaults(func=_process)


def _run(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.log import configure
    from edge.node.daemon import NodeDaemon

    config = load_config(args.config)
    configure(json=config.log.json if args.log_json is None else True, level=config.log.level)
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # a file-size limit (ulimit -f) makes a spool write fail with EFBIG, which the node outlives
    # as a degraded spool; the signal it also sends would otherwise end the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from edge.node.supervision import SystemdNotifier

    # systemd's notify socket and watchdog period are read here, at the shell, and passed down
    notifier = SystemdNotifier(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))
    daemon = NodeDaemon(config, bundle_override=args.calibration, status_path=args.status_file,
                        notifier=notifier)
    daemon.start()
    try:
        daemon.run(lambda: stop["now"])
    finally:
        daemon.close(drain_s=args.drain_s)
    return 0


def _process(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.node.assemble import (
        build_pipeline,
        check_engine_origin,
        check_engine_runtime,
        engine_dir,
    )
    from edge.node.process import process_files

    config = load_config(args.config)
    check_engine_runtime(config.engine)
    check_engine_origin(engine_dir(config), config.engine)
    pipeline = build_pipeline(config, bundle_override=args.calibration)
    report = process_files(args.frames, args.out, pipeline)
    json.dump({"frames": report.frames, "detections": report.detections, "sent": report.sent,
               "failed": list(report.failed), "out": str(report.out_dir)}, sys.stdout, indent=1)
    print()
    return 1 if report.failed else 0
