"""The ``astro-edge`` command: one entry point, one subcommand group per area.

Each command group has its own module here (``register(subparsers)``), which declares the
arguments, checks them, calls the library and prints; it imports its heavy modules only when a
subcommand runs, so ``astro-edge --help`` is fast. Typed errors end the command with one line that
says what to do, never a traceback, and an exit code per cause (:data:`EXIT_CODES`): 2 for bad
config or input, 74 for a disk that cannot be used (EX_IOERR); an error nobody foresaw is logged
with its traceback and exits 70 (EX_SOFTWARE). systemd can then restart on the last two and not
on the first (``RestartPreventExitStatus=2``), which no restart can fix. Long commands draw
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
    "edge.cli.commission",
    "edge.cli.engines",
    "edge.cli.ground",
    "edge.cli.review",
    "edge.cli.alerts",
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
        code = exit_code(exc)
        log.error("command.failed", command=args.command, reason=exc.reason, error=str(exc), exit_code=code)
        print(f"astro-edge {args.command}: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: say so, with the traceback
        log.exception("command.crashed", command=args.command, error=f"{type(exc).__name__}: {exc}")
        print(f"astro-edge {args.command}: internal error {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


#: exit code per cause: bad config or input (also every typed error not listed), a disk the node
#: or ground cannot use, and an error nobody foresaw
EXIT_CONFIG, EXIT_DISK, EXIT_INTERNAL = 2, 74, 70
EXIT_CODES = {"spool": EXIT_DISK, "ground_store": EXIT_DISK, "status_file": EXIT_DISK}


def exit_code(exc: AstroEdgeError) -> int:
    """The exit code of a typed error: by its reason, else that of bad config or input."""
    return EXIT_CODES.get(exc.reason, EXIT_CONFIG)


