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
    run.add_argument("--config", type=Path, help="node config (TOML); defaults apply without one")
    run.add_argument("--calibration", help="calibration bundle (overrides [calibration] bundle)")
    run.add_argument("--status-file", type=Path,
                     help="write the node's counters here as JSON, every second and at exit")
    run.add_argument("--drain-s", type=float, default=5.0,
                     help="at shutdown, keep sending the spool to the ground this long (default 5)")
    run.set_defaults(func=_run)

    proc = subparsers.add_parser(
        "process", help="run the node's pipeline offline on FITS files",
        description="The node's pipeline on FITS files: raw frames with a calibration bundle, or "
                    "calibrated float frames (GAIN/RDNOISE headers used when present, else the noise "
                    "is estimated). Writes OUT/downlink.jsonl and OUT/frames.jsonl.")
    proc.add_argument("frames", nargs="+", type=Path, help="FITS files, processed in the order given")
    proc.add_argument("--out", type=Path, required=True, help="output folder")
    proc.add_argument("--config", type=Path, help="node config (TOML)")
    proc.add_argument("--calibration", help="calibration bundle (overrides [calibration] bundle)")
    proc.set_defaults(func=_process)

    ctl = subparsers.add_parser(
        "ctl", help="send one command to a node's control channel",
        description="Send a command to a running node and print its JSON answer: status; "
                    "set KEY=VALUE ... (triage settings; values are JSON, e.g. alpha=0.02 "
                    "classes_of_interest='[\"streak\"]'; each set bumps the policy version); pause; "
                    "resume; flush (open a new contact window); engine load PATH SHA256 (hot swap after "
                    "checks and a golden-stamp self-test; SHA256 of the folder's manifest.json); "
                    "engine shadow PATH SHA256 [FRAMES] (run it beside the live engine on the next frames "
                    "and report top-1 agreement in status); engine rollback; shutdown. Exit 1 on a refused command, "
                    "3 when no answer came (wrong key, dead node). docs/operations.md.")
    ctl.add_argument("address", help="the node's [control] address, e.g. tcp://node:5557")
    ctl.add_argument("command", help="status | set | pause | resume | flush | engine | shutdown")
    ctl.add_argument("settings", nargs="*", help="KEY=VALUE pairs for set; load PATH SHA256, shadow PATH SHA256 [FRAMES] or rollback for engine")
    ctl.add_argument("--server-key", help="the node's public key file (NAME.key); turns CURVE on")
    ctl.add_argument("--client-key", help="your secret key file (NAME.key_secret)")
    ctl.add_argument("--timeout-ms", type=int, default=5000, help="how long to wait for the answer (default 5000)")
    ctl.set_defaults(func=_ctl)

    keys = subparsers.add_parser("keys", help="CURVE key pairs for the control and downlink channels")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = keys_sub.add_parser("new", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)")
    new.add_argument("--out", type=Path, required=True, help="folder for the key files")
    new.add_argument("--name", required=True, help="name of the key pair, e.g. node-1 or operator-anna")
    new.set_defaults(func=_keys_new)


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
    from edge.node.assemble import build_pipeline
    from edge.node.process import process_files

    config = load_config(args.config)
    pipeline = build_pipeline(config, bundle_override=args.calibration)
    report = process_files(args.frames, args.out, pipeline)
    json.dump({"frames": report.frames, "detections": report.detections, "sent": report.sent,
               "failed": list(report.failed), "out": str(report.out_dir)}, sys.stdout, indent=1)
    print()
    return 1 if report.failed else 0


def _ctl(args: argparse.Namespace) -> int:
    from edge.errors import ConfigError
    from edge.node.control import request

    command, settings = args.command, {}
    if command == "engine":
        words = list(args.settings)
        if words[:1] == ["load"] and len(words) == 3:
            command, settings = "engine.load", {"path": words[1], "sha256": words[2]}
        elif words[:1] == ["shadow"] and len(words) in (3, 4):
            command = "engine.shadow"
            settings = {"path": words[1], "sha256": words[2], "frames": int(words[3]) if len(words) == 4 else 10}
        elif words == ["rollback"]:
            command = "engine.rollback"
        else:
            raise ConfigError("use `engine load PATH SHA256`, `engine shadow PATH SHA256 [FRAMES]` "
                              "or `engine rollback`", where="ctl")
    for item in args.settings if command == args.command else ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r} is not KEY=VALUE", where="ctl")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    answer = request(args.address, command, settings, timeout_ms=args.timeout_ms,
                     server_public_key=args.server_key, client_secret_key=args.client_key)
    if answer is None:
        print(f"no answer from {args.address} within {args.timeout_ms} ms (wrong key, or the node is down)",
              file=sys.stderr)
        return 3
    json.dump(answer, sys.stdout, indent=1)
    print()
    return 0 if answer.get("ok") else 1


def _keys_new(args: argparse.Namespace) -> int:
    from edge.link.keys import new_keypair

    public, secret = new_keypair(args.out, args.name)
    print(f"public key (hand out): {public}\nsecret key (keep): {secret}")
    return 0
