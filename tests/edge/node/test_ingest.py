"""The ingest queue's accounting of what the receiver refused, beside what the pipeline refused."""

from __future__ import annotations

from pathlib import Path

import zmq

from edge.config import ReceiveSection
from edge.node.counters import NodeCounters
from edge.node.ingest import DoneSets, Ingest
from firmware_bridge import FrameReceiver


def test_protocol_rejections_add_to_the_reasons_the_pipeline_counted(tmp_path: Path) -> None:
    """A malformed message adds its reason to the node's rejected_by_reason; reasons counted
    earlier by the pipeline (a worker that died) stay, and received = rejected holds."""
    counters = NodeCounters()
    counters.frames_received = counters.frames_rejected = 1
    counters.rejected_by_reason["worker_died"] = 1
    ingest = Ingest(ReceiveSection(), counters, DoneSets(lambda key: None))
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
