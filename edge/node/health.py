"""The node's health: which of its parts are degraded, why and since when.

A fault the node can outlive (a spool write that fails because the disk is full or broken, a
downlink whose spool reads fail) is a state, not a crash: the part that met it reports
``degraded(part, error)``, the node goes on (counting what it could not keep), and the first
success afterwards reports ``ok(part)``. Each transition is logged once (``node.degraded``,
``node.recovered``); the ``status`` answer carries ``state`` (``"ok"`` or ``"degraded"``) and one
entry per degraded part. Thread-safe: the downlink thread reports too.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge.errors import AstroEdgeError
from edge.log import get_logger

__all__ = ["Health"]

log = get_logger(__name__)


class Health:
    """Degraded parts of the node, with their reason, last error, since when and how many faults."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[str, dict[str, Any]] = {}

    def degraded(self, part: str, error: AstroEdgeError) -> None:
        """``part`` met ``error``; the first fault of a run is logged, later ones are counted."""
        with self._lock:
            entry = self._parts.get(part)
            if entry is None:
                entry = {"reason": error.reason, "since": self._clock(), "faults": 0}
                self._parts[part] = entry
                log.error("node.degraded", part=part, reason=error.reason, error=str(error))
            entry["faults"] += 1
            entry["error"] = str(error)

    def ok(self, part: str) -> None:
        """``part`` worked again (a no-op when it was not degraded)."""
        with self._lock:
            entry = self._parts.pop(part, None)
        if entry is not None:
            log.warning("node.recovered", part=part, reason=entry["reason"], faults=entry["faults"],
                        after_s=round(self._clock() - entry["since"], 3))

    def is_degraded(self, part: str | None = None) -> bool:
        with self._lock:
            return bool(self._parts) if part is None else part in self._parts

    def status(self) -> dict[str, Any]:
        """``{"state": "ok" | "degraded", "degraded": {part: {reason, error, since, faults}}}``."""
        with self._lock:
            parts = {p: dict(e) for p, e in self._parts.items()}
        return {"state": "degraded" if parts else "ok", "degraded": parts}
