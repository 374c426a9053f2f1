"""The ``astro-edge`` command: one entry point, one subcommand group per area.

Each area registers its own subcommands from a light ``cli`` module (``register(subparsers)``)
that imports its heavy modules only when a subcommand runs, so ``astro-edge --help`` is fast.
Typed errors end the command with exit code 2 and one line that says what to do; they are never
shown as tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edge import __version__
from edge.errors import AstroEdgeError
from edge.log import configure, get_logger

# modules that contribute subcommands, in the order --help lists them
_AREAS = (
    "edge.cli.demo",
    "edge.cli.rig",
    "edge.cli.twin",
    "edge.cli.calib",
    "edge.cli.engines",
    "edge.cli.ground",
    "edge.cli.node",
)

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="astro-edge",
        description="Edge inference next to astronomical detectors.",
    )
    parser.add_argument("--version", action="version", version=f"astro-edge {__version__}")
    parser.add_argument("--log-json", action="store_true", default=None,
                        help="log JSON lines even on a terminal (default: JSON unless stderr is a terminal)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="log level (default: info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _AREAS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(json=args.log_json, level=args.log_level)
    try:
        return int(args.func(args) or 0)
    except AstroEdgeError as exc:
        log.error("command.failed", command=args.command, reason=exc.reason, error=str(exc))
        print(f"astro-edge {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


