"""The one structlog set-up of astro-edge.

JSON lines when stderr is not a terminal or when asked (production, CI, files), a readable
console renderer otherwise. Event names are lowercase, dotted and stable (``frame.rejected``);
context goes in key-values, never formatted into the event. This module imports nothing of the
project, so every package may use it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def configure(*, json: bool | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process.

    ``json=None`` picks JSON lines unless ``stream`` (stderr by default) is a terminal.
    """
    out = stream if stream is not None else sys.stderr
    if level.lower() not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {sorted(_LEVELS)}")
    use_json = (not out.isatty()) if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """Return the module's logger (``log = get_logger(__name__)``)."""
    return structlog.get_logger(name)
