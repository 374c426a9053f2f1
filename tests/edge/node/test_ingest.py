"""The ingest queue's accounting of what the receiver refused, beside what the pipeline refused,
and the runs of a series id a restarted DAQ reuses."""

from __future__ import annotations

from pathlib import Path

import zmq

from edge.config import ReceiveSection
from edge.node.counters import NodeCounters
from edge.node.ingest import MAX_SERIES, DoneSets, Ingest, SeriesBook
from firmware_bridge import FrameReceiver


def test_protocol_rejections_add_to_the_reasons_the_pipeline_counted(tmp_path: Path) -> None:
    """A malformed message adds its reason to the node's rejected_by_reason; reasons counted
    earlier by the pipeline (a worker that died) stay, and received = rejected holds."""
    counters = NodeCounters()
    counters.frames_received = counters.frames_rejected = 1
    counters.rejected_by_reason["worker_died"] = 1
    ingest = Ingest(ReceiveSection(), counters, DoneSets(lambda key: None),
                    SeriesBook(lambda key: None, lambda key, value: None))
    ctx: zmq.Context = zmq.Context()
    receiver = FrameReceiver("tcp://127.0.0.1:*", context=ctx)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        push.connect(receiver.endpoint)
        for _ in range(2):
            push.send_multipart([b"not a header"])
            ingest.receive(receiver, timeout_ms=2000)
    finally:
        push.close()
        receiver.close()
        ctx.term()
    assert counters.rejected_by_reason == {"worker_died": 1, "header_decode": 2}
    assert counters.frames_received == counters.frames_rejected == 3
    assert counters.conserved()


def test_a_series_start_with_a_known_id_and_another_time_opens_a_new_run_that_survives_a_restart() -> None:
    """The same start time again is the same series (sent again); another one is a new run of the
    id, named ID-RUN; what was stored is read back by a node started afresh on the same spool."""
    stored: dict[str, str] = {}
    book = SeriesBook(stored.get, stored.__setitem__)
    assert book.name("cam", 17) == "17"                     # frames before any series start
    assert book.started("cam", 17, "2026-12-03T20:00:00.000000Z") == "17"
    assert book.started("cam", 17, "2026-12-03T20:00:00.000000Z") == "17"   # the DAQ re-sent it
    assert book.started("cam", 17, "2026-12-03T21:00:00.000000Z") == "17-1"
    assert book.name("cam", 17) == "17-1" and book.name("other-cam", 17) == "17"
    restarted = SeriesBook(stored.get, stored.__setitem__)
    assert restarted.name("cam", 17) == "17-1"
    assert restarted.started("cam", 17, "2026-12-03T21:00:00.000000Z") == "17-1"
    assert restarted.started("cam", 17, "2026-12-03T22:00:00.000000Z") == "17-2"
    assert stored == {"series:cam:17": '{"start_utc":"2026-12-03T22:00:00.000000Z","run":2}'}


def test_the_series_held_in_memory_are_bounded_and_the_rest_read_back_from_the_spool() -> None:
    """A node that sees many series keeps the most recent MAX_SERIES in memory; an older one is
    read back from its checkpoint, with the same run."""
    stored: dict[str, str] = {}
    reads: list[str] = []

    def read(key: str) -> str | None:
        reads.append(key)
        return stored.get(key)

    book = SeriesBook(read, stored.__setitem__)
    book.started("cam", 0, "2026-12-03T20:00:00.000000Z")
    book.started("cam", 0, "2026-12-03T20:30:00.000000Z")
    for i in range(1, MAX_SERIES + 1):
        book.started("cam", i, "2026-12-03T21:00:00.000000Z")
    assert len(book._runs) == MAX_SERIES
    reads.clear()
    assert book.name("cam", 0) == "0-1" and reads == ["series:cam:0"]
    done = DoneSets(lambda key: None)
    for i in range(MAX_SERIES + 10):
        done.of(f"cam:{i}").add(0)
    assert len(done._sets) == MAX_SERIES
