"""systemd notify and watchdog, the housekeeping PUB socket and the Prometheus endpoint, for real."""

from __future__ import annotations

import json
import socket
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


def test_housekeeping_pub_and_prometheus(node_config_factory) -> None:
    """The PUB socket carries the node's figures and /metrics serves the same as gauges."""
    cfg = node_config_factory(housekeeping={"address": "tcp://127.0.0.1:0", "interval_s": 0.1,
                                            "prometheus_address": "127.0.0.1:0"})
    node = NodeDaemon(cfg)
    node.start()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"housekeeping")
    try:
        sub.connect(node.housekeeping.endpoint)
        turns = iter(range(10_000))
        message = None

        def stop() -> bool:
            nonlocal message
            if sub.poll(0):
                message = sub.recv_multipart()
            return message is not None or next(turns) > 5_000

        node.run(stop)
        assert message is not None and message[0] == b"housekeeping"
        figures = json.loads(message[1])
        for key in ("counters", "engine_id", "policy_version", "queue_depth", "spool", "process", "stage_latency_ms"):
            assert key in figures, key
        assert figures["process"]["memory_rss_bytes"] > 0
        url = f"http://127.0.0.1:{node.housekeeping.prometheus_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "# TYPE astro_edge_counters_frames_received gauge" in body
        assert "astro_edge_policy_version 1.0" in body
    finally:
        sub.close()
        node.close()


def test_process_figures_read_this_machine() -> None:
    """Load and memory are read here; GPU temperature is None where no GPU can be read."""
    figures = process_figures()
    assert len(figures["cpu_load"]) == 3 and figures["memory_rss_bytes"] > 0
    assert figures["gpu_temperature_c"] is None or all(t > -50 for t in figures["gpu_temperature_c"])
