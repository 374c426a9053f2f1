"""The C DAQ client feeding a running node (in process, driven with ``step()``): every frame is
received, checksummed and processed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CClient, run_example

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    """A one-worker node with the tiny engine, frames on a random loopback port, the block policy
    (the DAQ waits for room instead of dropping), and a downlink to a port nobody listens on."""
    from edge.config import config_from_mapping
    from edge.node.daemon import NodeDaemon
    from engines.testing import write_tiny_engine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        downlink_port = s.getsockname()[1]
    cfg = config_from_mapping({
        "node": {"id": "c-daq-node", "workers": 1},
        "receive": {"address": "tcp://127.0.0.1:0", "queue_policy": "block", "queue_frames": 4},
        "engine": {"path": str(write_tiny_engine(tmp_path / "engine"))},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "downlink": {"address": f"tcp://127.0.0.1:{downlink_port}"},
        "log": {"level": "warning"},
    })
    with NodeDaemon(cfg) as daemon:
        yield daemon


def test_a_node_receives_and_processes_every_frame_of_the_c_client(c_client: CClient, node: Any) -> None:
    """100 frames from the example DAQ reach the node: its receiver counts 100 frames and no
    rejection, and the node processes all of them, rejecting and dropping none."""
    c = node.counters

    def step() -> bool:
        before = node.receiver.counters.received
        node.step()
        return bool(node.receiver.counters.received != before or c.frames_in_flight)

    stats = run_example(c_client, node.receiver_endpoint, 100, "--ny", "96", "--nx", "96",
                        "--send-timeout-ms", "60000", on_idle=step, timeout_s=240)
    received = node.receiver.counters
    assert stats["frames_sent"] == 100 and stats["frames_dropped"] == 0
    assert (received.frames, received.rejected, received.gaps) == (100, 0, 0)
    assert (c.frames_processed, c.frames_rejected, c.frames_dropped) == (100, 0, 0), c.snapshot()
