"""The node's health states: a fault it outlives is logged once, counted, and cleared by a success."""

from __future__ import annotations

from structlog.testing import capture_logs

from edge.errors import SpoolError
from edge.node.health import Health


def test_a_part_goes_degraded_once_counts_its_faults_and_recovers() -> None:
    now = [100.0]
    health = Health(clock=lambda: now[0])
    assert health.status() == {"state": "ok", "degraded": {}}
    with capture_logs() as logs:
        health.ok("spool")                       # nothing to recover from: silent
        health.degraded("spool", SpoolError("disk full", where="spool.sqlite"))
        now[0] = 101.5
        health.degraded("spool", SpoolError("disk I/O error", where="spool.sqlite"))
        status = health.status()
        now[0] = 104.0
        health.ok("spool")
    assert status["state"] == "degraded"
    assert status["degraded"]["spool"] == {"reason": "spool", "since": 100.0, "faults": 2,
                                           "error": "spool.sqlite: disk I/O error"}
    assert [(e["event"], e["part"]) for e in logs] == [("node.degraded", "spool"), ("node.recovered", "spool")]
    assert logs[1]["faults"] == 2 and logs[1]["after_s"] == 4.0
    assert health.status() == {"state": "ok", "degraded": {}} and not health.is_degraded()
