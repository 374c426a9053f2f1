"""systemd notify and watchdog, the housekeeping PUB socket and the Prometheus endpoint, for real."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections import deque
from pathlib import Path

import pytest
import zmq

from edge.node.daemon import NodeDaemon
from edge.node.supervision import SystemdNotifier, process_figures

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def notify_socket(tmp_path: Path):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def _messages(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.2)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


def test_ready_watchdog_and_stopping_reach_systemd(node_config_factory, notify_socket) -> None:
    """An idle node says READY, pings the watchdog with a STATUS line, and says STOPPING at the end."""
    path, sock = notify_socket
    node = NodeDaemon(node_config_factory(), notifier=SystemdNotifier(path, "2000000"))
    node.start()
    turns = iter(range(200))
    try:
        node.run(lambda: next(turns) >= 150, status_every_s=0.5)  # a few pings: the test reads at the end
    finally:
        node.close()
    text = "\n".join(_messages(sock))
    assert "READY=1" in text and "WATCHDOG=1" in text and "STOPPING=1" in text
    assert "STATUS=frames 0 finished" in text
    assert node.notifier.watchdog_interval_s == pytest.approx(1.0)


def test_no_watchdog_ping_while_frames_wait_and_none_finish(node_config_factory, notify_socket) -> None:
    """With frames waiting and none finished since the last ping, the watchdog is not pinged."""
    path, sock = notify_socket
    node = NodeDaemon(node_config_factory(), notifier=SystemdNotifier(path))
    node.start()
    try:
        node.ingest.queue = deque([("stuck frame", 0.0)])  # type: ignore[list-item]
        node._watchdog(1.0)
        node._watchdog(2.0)
        pings = [m for m in _messages(sock) if "WATCHDOG=1" in m]
        assert len(pings) == 1
        node.counters.frames_processed += 1
        node._watchdog(3.0)
        assert any("WATCHDOG=1" in m for m in _messages(sock))
    finally:
        node.ingest.queue.clear()
        node.close()


def test_a_dead_downlink_loop_stops_the_watchdog_pings(node_config_factory, notify_socket) -> None:
    """An idle node pings; once its downlink thread has ended, the next watchdog turn withholds the
    ping (logged once as watchdog.withheld), so systemd restarts a node that can no longer send."""
    from structlog.testing import capture_logs

    path, sock = notify_socket
    node = NodeDaemon(node_config_factory(), notifier=SystemdNotifier(path))
    node.start()
    try:
        node._watchdog(1.0)
        assert any("WATCHDOG=1" in m for m in _messages(sock))
        node.forwarder.stop()
        with capture_logs() as logs:
            node._watchdog(2.0)
            node._watchdog(3.0)
        assert not any("WATCHDOG=1" in m for m in _messages(sock))
        assert [e["stuck"] for e in logs if e["event"] == "watchdog.withheld"] == [["downlink"]]
    finally:
        node.close()


def test_housekeeping_pub_and_prometheus(node_config_factory, small_twin, ground) -> None:
    """The PUB socket carries the node's figures; /metrics, scraped over HTTP and read with
    prometheus_client's own parser, carries them as typed metrics: counters with labels per
    reason, class, kind and stage, histograms of a frame's time, gauges, the process's memory
    and descriptors, each worker's memory; the values are the node's own."""
    from prometheus_client.parser import text_string_to_metric_families

    from edge.testing import LoopbackDaq
    from twin import simulate_frame

    cfg = node_config_factory(housekeeping={"address": "tcp://127.0.0.1:0", "interval_s": 0.1,
                                            "prometheus_address": "127.0.0.1:0"},
                              receive={"queue_policy": "block", "queue_frames": 2},
                              downlink={"address": ground.address})
    node = NodeDaemon(cfg)
    node.start()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"housekeeping")
    try:
        sub.connect(node.housekeeping.endpoint)
        frames = [simulate_frame(small_twin, i, 6) for i in range(3)]
        daq = LoopbackDaq(node.receiver_endpoint, frames, series_id=1)
        # a malformed message: a reason to label
        raw = ctx.socket(zmq.PUSH)
        raw.connect(node.receiver_endpoint)
        raw.send_multipart([b"not a header"])
        raw.close(linger=5000)   # it must leave: linger 0 could drop it before the connection is up
        message = None
        deadline = time.monotonic() + 60

        def stop() -> bool:
            nonlocal message
            while sub.poll(0):
                message = sub.recv_multipart()
            done = node.counters.frames_processed == len(frames) and node.counters.frames_rejected == 1
            return (done and message is not None and json.loads(message[1])["counters"]["frames_processed"] == 3
                    ) or time.monotonic() > deadline

        node.run(stop)
        daq.join(10)
        assert node.counters.frames_processed == len(frames) and node.counters.frames_rejected == 1, \
            node.counters.snapshot()
        assert message is not None and message[0] == b"housekeeping"
        figures = json.loads(message[1])
        for key in ("counters", "engine_id", "policy_version", "queue_depth", "spool", "process",
                    "stage_latency_ms", "worker_rss_bytes"):
            assert key in figures, key
        assert figures["process"]["memory_rss_bytes"] > 0 and figures["worker_rss_bytes"][0] > 0
        url = f"http://127.0.0.1:{node.housekeeping.prometheus_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            body = reply.read().decode()
        c = node.counters
    finally:
        sub.close()
        node.close()
    families = {f.name: f for f in text_string_to_metric_families(body)}

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in families[name].samples
                    if s.name.endswith(("_total", name)) and s.labels == labels)

    assert families["astro_edge_frames_processed"].type == "counter"
    assert value("astro_edge_frames_processed") == c.frames_processed == 3
    assert value("astro_edge_detections") == c.detections > 0
    assert value("astro_edge_frames_rejected", reason="header_decode") == 1
    by_class = {s.labels["class"]: s.value for s in families["astro_edge_detections_by_class"].samples
                if s.name.endswith("_total")}
    assert by_class == c.by_class and sum(by_class.values()) == c.detections
    sent = {s.labels["reason"]: s.value for s in families["astro_edge_records_sent_by_reason"].samples
            if s.name.endswith("_total")}
    assert sent == c.sent_by_reason
    latency = families["astro_edge_frame_latency_seconds"]
    assert latency.type == "histogram"
    assert next(s.value for s in latency.samples if s.name.endswith("_count")) == 3
    stages = {s.labels["stage"] for s in families["astro_edge_stage_seconds"].samples if s.name.endswith("_count")}
    assert {"detect", "infer"} <= stages
    assert {s.labels["kind"] for s in families["astro_edge_spool_accepted"].samples} == {"record", "frame_summary"}
    assert families["astro_edge_queue_depth"].type == "gauge"
    assert value("astro_edge_policy_version") == 1
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_open_fds"].samples[0].value > 0
    assert families["astro_edge_worker_resident_memory_bytes"].samples[0].labels == {"worker": "0"}


def test_process_figures_read_this_machine() -> None:
    """Load and memory are read here; GPU temperature is None where no GPU can be read."""
    figures = process_figures()
    assert len(figures["cpu_load"]) == 3 and figures["memory_rss_bytes"] > 0
    assert figures["gpu_temperature_c"] is None or all(t > -50 for t in figures["gpu_temperature_c"])
