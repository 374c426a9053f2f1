"""The ``astro-edge`` command: one entry point, one subcommand group per area.

Each command group has its own module here (``register(subparsers)``), which declares the
arguments, checks them, calls the library and prints; it imports its heavy modules only when a
subcommand runs, so ``astro-edge --help`` is fast. Typed errors end the command with exit code 2
and one line that says what to do; they are never shown as tracebacks. Long commands draw
progress bars on stderr when it is a terminal (:mod:`edge.cli.progress`); ``--quiet`` turns them off.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from edge import __version__
from edge.cli.progress import BarSafeStream, bars_wanted
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
    "edge.cli.link",
    "edge.cli.node",
    "edge.cli.ctl",
    "edge.cli.keys",
)

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="astro-edge",
        description="Edge inference next to astronomical detectors: calibrate, detect, classify with "
                    "calibrated uncertainty, and downlink only the uncertain, unusual and unknown.",
        epilog="astro-edge COMMAND --help describes a command and its options. The options above "
               "go before COMMAND.",
    )
    parser.add_argument("--version", action="version", version=f"astro-edge {__version__}")
    parser.add_argument("--log-json", action="store_true", default=None,
                        help="log JSON lines even on a terminal (default: JSON unless stderr is a terminal)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="log level (default: info)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="draw no progress bars (they show only when stderr is a terminal)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name in _AREAS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # with bars on the terminal, log lines are written above them instead of through them
    stream = BarSafeStream(sys.stderr) if bars_wanted(args.quiet) else sys.stderr
    configure(json=args.log_json, level=args.log_level, stream=cast(TextIO, stream))
    try:
        return int(args.func(args) or 0)
    except AstroEdgeError as exc:
        log.error("command.failed", command=args.command, reason=exc.reason, error=str(exc))
        print(f"astro-edge {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


