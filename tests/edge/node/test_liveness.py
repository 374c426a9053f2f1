"""Peers that come and go: the ground vanishing and returning a hundred times under a running
downlink thread, and a DAQ that falls silent mid-series and returns, a hundred times, under a
running node. Every record arrives once, silence is reported within three heartbeats, and the
process's file descriptors come back to where they were."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge.codec import read_jsonl
from edge.config import DownlinkSection
from edge.ground.receiver import RECORDS_NAME, GroundReceiver
from edge.link.spool import Spool
from edge.liveness import DEFAULT_HEARTBEAT_MS
from edge.node.daemon import NodeDaemon
from edge.node.forward import Forwarder
from edge.node.health import Health
from edge.records import DownlinkRecord, compress_stamp, record_id
from firmware_bridge import FrameSender

from ..conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CYCLES = 100


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait(predicate: Any, timeout_s: float, what: str, step: Any = None) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        if step is not None:
            step()
        else:
            time.sleep(0.005)
    return time.monotonic() - start


def _record(i: int, rng: np.random.Generator) -> DownlinkRecord:
    return DownlinkRecord(
        record_id=record_id("n1", "s1", i, 0), node_id="n1", detector_id="d1", series_id="s1",
        frame=i, index=0, frame_time="2026-12-03T10:00:00Z", processed_time="2026-12-03T10:00:01Z",
        x=10.0, y=20.0, x_err=0.1, y_err=0.1, ra=None, dec=None, label="streak", confidence=0.95,
        probs={"star": 0.05, "streak": 0.95}, entropy=0.2, aleatoric=0.15, epistemic=0.05,
        anomaly_score=2.0, anomaly_pvalue=0.2, snr=30.0, flux_e=900.0, flux_err_e=30.0, a_px=5.0,
        b_px=1.0, theta_rad=0.3, flags=0, new=False, reasons=("unusual",), priority=1.0,
        policy_version=1, engine_id="e1", calibration_id="c1", stamp=compress_stamp(rng.normal(size=(2, 16, 16))))


def test_the_ground_vanishing_and_returning_a_hundred_times(tmp_path: Path, rng: np.random.Generator) -> None:
    """Each cycle: a ground comes up on the same address and folder, the record spooled meanwhile
    arrives, the ground closes; the downlink thread reports the ground unreachable within three
    heartbeats and reachable again on its return. 100 records at the ground, each once; the fd
    count ends where it started."""
    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "ground"
    ctx = zmq.Context()
    health = Health()
    records = [_record(i, rng) for i in range(CYCLES + 1)]
    detect_s: list[float] = []
    with Spool(tmp_path / "spool.sqlite") as spool:
        forwarder = Forwarder(DownlinkSection(address=address, ack_timeout_s=1.0, compression="none"), health)
        forwarder.start(spool)
        try:
            fds = None
            for i, rec in enumerate(records):
                ground = GroundReceiver(address, out, context=ctx)
                try:
                    spool.put([rec])
                    _wait(lambda: len(spool) == 0, 20, f"record {i} acknowledged", step=lambda g=ground: g.poll(10))
                    _wait(lambda: not health.is_degraded("ground"), 10, "the ground reachable again",
                          step=lambda g=ground: g.poll(10))
                finally:
                    ground.close()
                detect_s.append(_wait(lambda: health.is_degraded("ground"), 10, "the ground reported unreachable"))
                if i == 0:
                    fds = _fds()   # after one cycle: the spool, the thread and its sockets are all open
            assert _fds() <= fds + 1, "file descriptors grew with the reconnects"
        finally:
            forwarder.stop()
    ctx.term()
    got = [m.record_id for m in read_jsonl(out / RECORDS_NAME).messages if isinstance(m, DownlinkRecord)]
    assert sorted(got) == sorted(r.record_id for r in records), "every record at the ground exactly once"
    assert max(detect_s) <= 3 * DEFAULT_HEARTBEAT_MS / 1000, f"slowest detection {max(detect_s):.3f} s"


def test_a_daq_silent_mid_series_is_reported_and_its_return_clears_it(
        node_config_factory: Any, small_twin: Any) -> None:
    """A DAQ that stops in the middle of a series is reported silent (the node's "daq" part
    degraded) within three of its heartbeat periods; its next heartbeat clears it, and its own
    sent / dropped figures show in the node's status. A hundred DAQ disconnects and reconnects
    later the fd count is back where it started."""
    cfg = node_config_factory(receive={"daq_heartbeat_s": 0.1})
    limit_s = 3 * 0.1
    with NodeDaemon(cfg) as node:
        ctx = zmq.Context()
        fds = None
        for cycle in range(CYCLES):
            with FrameSender(node.receiver_endpoint, detector_id="cam0", context=ctx) as tx:
                assert tx.start_series(series_id=cycle)
                t_last = time.monotonic()
                _wait(lambda: node.receiver.series_open, 10, "the series start", step=lambda: node.step(5))
                detected = _wait(lambda: node.health.is_degraded("daq"), 10, "the DAQ reported silent",
                                 step=lambda: node.step(5))
                quiet = time.monotonic() - t_last
                assert limit_s < quiet <= limit_s + 0.2, quiet
                assert tx.heartbeat()
                _wait(lambda: not node.health.is_degraded("daq"), 10, "the heartbeat clearing it",
                      step=lambda: node.step(5))
                assert tx.end_series()
                _wait(lambda: not node.receiver.series_open, 10, "the series end", step=lambda: node.step(5))
            assert detected < 10
            if cycle == 0:
                fds = _fds()
        status = node.status()
        ctx.term()
    assert _fds() <= fds + 2
    # this node has no ground: that, and only that, is what its status reports
    assert set(status["degraded"]) == {"ground"} and status["state"] == "degraded"
    assert status["receiver"]["daq"]["cam0"]["frames_sent"] == 0
