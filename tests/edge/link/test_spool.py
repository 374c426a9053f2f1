"""The SQLite spool: durable puts, priority order, acks, bounded eviction, counters that conserve."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from edge.codec import decode_msgpack
from edge.errors import SpoolError
from edge.link.spool import Spool
from edge.records import DownlinkRecord, FrameSummary, compress_stamp, record_id
from edge.triage import TriagePolicy, triage


def make_record(frame: int, index: int, priority: float, rng: np.random.Generator) -> DownlinkRecord:
    return DownlinkRecord(
        record_id=record_id("n1", "s1", frame, index), node_id="n1", detector_id="d1", series_id="s1",
        frame=frame, index=index, frame_time="2026-11-28T10:00:00Z", processed_time="2026-11-28T10:00:01Z",
        x=10.0 + index, y=20.0, x_err=0.1, y_err=0.1, ra=150.0, dec=2.0, label="star", confidence=0.5,
        probs={"star": 0.5, "galaxy": 0.5}, entropy=0.69, aleatoric=0.6, epistemic=0.09,
        anomaly_score=2.0, anomaly_pvalue=0.01, snr=30.0, flux_e=900.0, flux_err_e=30.0, a_px=1.2,
        b_px=1.0, theta_rad=0.3, flags=0, new=False, reasons=("uncertain",), priority=priority,
        policy_version=1, engine_id="e1", calibration_id="c1",
        stamp=compress_stamp(rng.normal(size=(2, 8, 8))))


def make_summary(frame: int) -> FrameSummary:
    return FrameSummary(node_id="n1", detector_id="d1", series_id="s1", frame=frame,
                        frame_time="2026-11-28T10:00:00Z", detections=3, by_class={"star": 3},
                        sent_by_reason={"uncertain": 1}, sent=1, suppressed=2, dropped_frames=(),
                        noise_model="header", timings_ms={"detect": 3.0}, engine_id="e1",
                        policy_version=1)


def test_put_is_durable_before_it_returns(tmp_path: Path, rng: np.random.Generator) -> None:
    """Once put returns, another connection to the file sees the records, without close or checkpoint."""
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    recs = [make_record(0, i, 1.0, rng) for i in range(5)]
    result = spool.put(recs)
    assert result.accepted == tuple(r.record_id for r in recs)
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 5
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    spool.close()


def test_pending_is_in_priority_order_oldest_first_among_equals(tmp_path: Path, rng: np.random.Generator) -> None:
    """pending() returns the highest priority first, and equal priorities in the order they were put."""
    prios = [0.5, 3.0, 1.0, 3.0, 0.1]
    with Spool(tmp_path / "s.sqlite") as spool:
        recs = [make_record(0, i, p, rng) for i, p in enumerate(prios)]
        spool.put([*recs, make_summary(0)])
        items = spool.pending(10)
        assert [i.id for i in items] == ["n1:s1:0:summary", "n1:s1:0:1", "n1:s1:0:3", "n1:s1:0:2",
                                         "n1:s1:0:0", "n1:s1:0:4"]
        first = decode_msgpack(items[1].payload)
        assert isinstance(first, DownlinkRecord) and first == recs[1]
        assert [i.id for i in spool.pending(2)] == ["n1:s1:0:summary", "n1:s1:0:1"]


def test_ack_removes_and_counters_conserve(tmp_path: Path, rng: np.random.Generator) -> None:
    """An acked record leaves; accepted = acked + evicted + pending per kind, and repeated acks remove nothing."""
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put([make_record(1, i, float(i), rng) for i in range(4)] + [make_summary(1)])
        assert spool.ack(["n1:s1:1:0", "n1:s1:1:summary"]) == 2
        assert spool.ack(["n1:s1:1:0", "never:was:0:0"]) == 0
        c = spool.counters()
        assert c.accepted == {"record": 4, "frame_summary": 1}
        assert c.acked == {"record": 1, "frame_summary": 1}
        assert c.pending == {"record": 3, "frame_summary": 0}
        assert c.conserved()
        assert spool.get("n1:s1:1:0") is None and spool.get("n1:s1:1:1") is not None


def test_duplicate_ids_are_ignored_and_counted(tmp_path: Path, rng: np.random.Generator) -> None:
    """Putting an id that is already spooled keeps the first copy and counts a duplicate."""
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put([make_record(2, 0, 1.0, rng)])
        result = spool.put([make_record(2, 0, 9.0, rng), make_record(2, 1, 1.0, rng)])
        assert result.duplicates == ("n1:s1:2:0",) and result.accepted == ("n1:s1:2:1",)
        assert spool.counters().duplicates["record"] == 1
        assert spool.pending(1)[0].priority == 1.0
        assert len(spool) == 2


def test_full_spool_evicts_lowest_priority_first_and_says_so(tmp_path: Path, rng: np.random.Generator) -> None:
    """Beyond max_rows the lowest-priority records go, newest among equals, counted and logged."""
    with Spool(tmp_path / "s.sqlite", max_rows=4) as spool:
        spool.put([make_record(3, i, p, rng) for i, p in enumerate([5.0, 1.0, 1.0, 4.0])])
        with capture_logs() as logs:
            result = spool.put([make_record(3, 4, 3.0, rng), make_record(3, 5, 0.5, rng)])
        assert set(result.evicted) == {"n1:s1:3:5", "n1:s1:3:2"}
        assert [i.id for i in spool.pending(10)] == ["n1:s1:3:0", "n1:s1:3:3", "n1:s1:3:4", "n1:s1:3:1"]
        c = spool.counters()
        assert c.evicted["record"] == 2 and c.evicted_bytes["record"] > 0 and c.conserved()
        events = [e for e in logs if e["event"] == "spool.evicted"]
        assert len(events) == 1 and events[0]["count"] == 2 and events[0]["log_level"] == "warning"


def test_byte_bound_keeps_payload_bytes_under_max_bytes(tmp_path: Path, rng: np.random.Generator) -> None:
    """With a byte bound, pending payload bytes stay under max_bytes and what goes is never above what stays."""
    one = len(make_record(0, 0, 1.0, rng).stamp.data)  # type: ignore[union-attr]
    with Spool(tmp_path / "s.sqlite", max_bytes=20 * (one + 600)) as spool:
        priority: dict[str, float] = {}
        for frame in range(10):
            recs = [make_record(frame, i, float(rng.random()), rng) for i in range(8)]
            priority.update((r.record_id, r.priority) for r in recs)
            result = spool.put(recs)
            assert spool.counters().pending_bytes <= spool.max_bytes
            kept = [i.priority for i in spool.pending(100)]
            assert all(priority[e] <= min(kept) for e in result.evicted)
        c = spool.counters()
        assert c.evicted["record"] > 0 and c.accepted["record"] == 80 and c.conserved()
        assert len(spool.pending(100)) == c.pending["record"]


def test_in_flight_records_are_hidden_until_released_and_evicted_last(tmp_path: Path, rng: np.random.Generator) -> None:
    """Marked records leave pending(); release brings them back; eviction spares them while others remain."""
    with Spool(tmp_path / "s.sqlite", max_rows=3) as spool:
        spool.put([make_record(4, i, p, rng) for i, p in enumerate([0.1, 2.0, 3.0])])
        spool.mark_in_flight(["n1:s1:4:0"])
        assert "n1:s1:4:0" not in [i.id for i in spool.pending(10)]
        result = spool.put([make_record(4, 3, 1.0, rng)])
        assert result.evicted == ("n1:s1:4:3",)  # lowest priority among those not in flight
        spool.release(["n1:s1:4:0"])
        assert [i.id for i in spool.pending(10)][-1] == "n1:s1:4:0"


def test_reopened_spool_resumes_everything_unacked(tmp_path: Path, rng: np.random.Generator) -> None:
    """After a restart, unacked records (in flight or not) are pending, counters and checkpoints are kept."""
    path = tmp_path / "s.sqlite"
    spool = Spool(path)
    spool.put([make_record(5, i, 1.0, rng) for i in range(6)], checkpoint={"s1.last_frame": "5"})
    spool.ack(["n1:s1:5:0"])
    spool.mark_in_flight(["n1:s1:5:1", "n1:s1:5:2"])
    spool._db.close()  # no checkpoint, no clean close: as a killed process leaves it
    with Spool(path) as again:
        assert len(again) == 5 and len(again.pending(10)) == 5
        c = again.counters()
        assert c.accepted["record"] == 6 and c.acked["record"] == 1 and c.conserved()
        assert again.checkpoint("s1.last_frame") == "5" and again.checkpoint("other") is None


def test_a_file_that_is_not_a_spool_is_a_spool_error(tmp_path: Path) -> None:
    """A corrupt or foreign file gives a SpoolError that names the file and says what to do."""
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(SpoolError, match="move it aside") as exc:
        Spool(path)
    assert str(path) in str(exc.value)
    with pytest.raises(SpoolError):
        Spool(tmp_path / "missing-dir" / "s.sqlite")


def test_priorities_argument_overrides_the_records(tmp_path: Path, rng: np.random.Generator) -> None:
    """Explicit priorities replace the record's own, and a length mismatch is refused."""
    with Spool(tmp_path / "s.sqlite") as spool:
        recs: list[Any] = [make_record(6, 0, 1.0, rng), make_record(6, 1, 2.0, rng)]
        spool.put(recs, priorities=[5.0, 0.0])
        assert [i.id for i in spool.pending(2)] == ["n1:s1:6:0", "n1:s1:6:1"]
        with pytest.raises(ValueError):
            spool.put(recs, priorities=[1.0])


def test_a_closed_spool_says_so(tmp_path: Path, rng: np.random.Generator) -> None:
    """Using a spool after close() is a SpoolError, and closing twice is harmless."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.put([make_record(7, 0, 1.0, rng)])
    with pytest.raises(SpoolError, match="closed"):
        spool.pending(1)


def test_node_conservation_law_holds_from_triage_and_spool_counters(tmp_path: Path,
                                                                    rng: np.random.Generator) -> None:
    """detections = sent + suppressed + evicted, read from the triage results and the spool's counters, with evictions and acks."""
    policy = TriagePolicy(audit_rate=0.05)
    detections = suppressed = 0
    with Spool(tmp_path / "s.sqlite", max_rows=25) as spool:
        for frame in range(12):
            n = 40
            verdict = triage(policy, labels=["star"] * n, confidence=rng.uniform(0.7, 1.0, n),
                             epistemic_nats=rng.uniform(0, 0.12, n), anomaly_pvalue=rng.uniform(0, 1, n),
                             new=rng.random(n) < 0.02, rng=rng)
            detections += n
            suppressed += verdict.suppressed
            sent_idx = np.flatnonzero(verdict.send)
            spool.put([make_record(frame, int(i), float(verdict.priority[i]), rng) for i in sent_idx])
            spool.ack([i.id for i in spool.pending(3)])  # the ground takes a little each frame
            c = spool.counters()
            sent = c.acked["record"] + c.pending["record"]  # delivered or still on its way
            assert detections == sent + suppressed + c.evicted["record"]
        assert c.evicted["record"] > 0 and c.acked["record"] > 0 and suppressed > 0
