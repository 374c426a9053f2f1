"""``astro-edge ctl``: send one command to a running node's control channel and print its answer.

Light at import: pyzmq and the control client are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge.errors import ConfigError

#: the verbs of the control channel, as the node's control server knows them
COMMANDS = ("status", "set", "pause", "resume", "flush", "engine", "shutdown")


def register(subparsers: Any) -> None:
    """Add ``ctl`` to the ``astro-edge`` parser."""
    ctl = subparsers.add_parser(
        "ctl", help="send one command to a node's control channel",
        description="Send a command to a running node and print its JSON answer: status; "
                    "set KEY=VALUE ... (triage settings; values are JSON, e.g. alpha=0.02 "
                    "classes_of_interest='[\"streak\"]'; each set bumps the policy version); pause; "
                    "resume; flush (open a new contact window); engine load PATH SHA256 (hot swap after "
                    "checks and a golden-stamp self-test; SHA256 of the folder's manifest.json); "
                    "engine shadow PATH SHA256 [FRAMES] (run it beside the live engine on the next frames "
                    "and report top-1 agreement in status); engine rollback; shutdown. Exit 1 on a refused "
                    "command, 3 when no answer came (wrong key, dead node). docs/operations.md.")
    ctl.add_argument("address", metavar="ADDRESS", help="the node's [control] address, e.g. tcp://node:5557")
    ctl.add_argument("command", metavar="COMMAND", help=" | ".join(COMMANDS))
    ctl.add_argument("settings", nargs="*", metavar="ARG",
                     help="KEY=VALUE pairs for set; load PATH SHA256, shadow PATH SHA256 [FRAMES] "
                          "or rollback for engine")
    ctl.add_argument("--server-key", metavar="FILE",
                     help="the node's public key file (NAME.key); turns CURVE on")
    ctl.add_argument("--client-key", metavar="FILE", help="your secret key file (NAME.key_secret)")
    ctl.add_argument("--timeout-ms", type=int, default=5000, metavar="MS",
                     help="how long to wait for the answer (default 5000)")
    ctl.set_defaults(func=_ctl)


def parse_request(command: str, words: list[str]) -> tuple[str, dict[str, Any]]:
    """The control verb and its settings from the command line's COMMAND and ARG words."""
    settings: dict[str, Any] = {}
    if command == "engine":
        if words[:1] == ["load"] and len(words) == 3:
            return "engine.load", {"path": words[1], "sha256": words[2]}
        if words[:1] == ["shadow"] and len(words) in (3, 4):
            frames = words[3] if len(words) == 4 else "10"
            if not frames.isdigit():
                raise ConfigError(f"FRAMES {frames!r} of `engine shadow` is not a whole number", where="ctl")
            return "engine.shadow", {"path": words[1], "sha256": words[2], "frames": int(frames)}
        if words == ["rollback"]:
            return "engine.rollback", {}
        raise ConfigError("use `engine load PATH SHA256`, `engine shadow PATH SHA256 [FRAMES]` "
                          "or `engine rollback`", where="ctl")
    for item in words:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r} is not KEY=VALUE", where="ctl")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    return command, settings


def _ctl(args: argparse.Namespace) -> int:
    from edge.node.control import request

    command, settings = parse_request(args.command, list(args.settings))
    answer = request(args.address, command, settings, timeout_ms=args.timeout_ms,
                     server_public_key=args.server_key, client_secret_key=args.client_key)
    if answer is None:
        print(f"no answer from {args.address} within {args.timeout_ms} ms (wrong key, or the node is down)",
              file=sys.stderr)
        return 3
    json.dump(answer, sys.stdout, indent=1)
    print()
    return 0 if answer.get("ok") else 1
