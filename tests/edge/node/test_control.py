"""The control channel over real sockets: CURVE keeps strangers out, a known operator can change
the triage policy and the next records carry the new policy version; pause, resume and shutdown."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from structlog.testing import capture_logs
from zmq.utils.monitor import recv_monitor_message

from edge.config import ControlSection
from edge.link.keys import new_keypair
from edge.node.control import ControlServer, request
from edge.node.daemon import NodeDaemon
from edge.testing import Ground, LoopbackDaq
from twin import simulate_frame

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key pairs for the node, an allowed operator and a stranger."""
    out: dict[str, Path] = {}
    for name in ("node", "operator", "stranger"):
        out[name], out[name + "_secret"] = new_keypair(tmp_path / "keys", name)
    return out


def _serve(node: NodeDaemon, stop: threading.Event) -> threading.Thread:
    """Run the node's loop in a thread (it owns its sockets there after start)."""
    def main() -> None:
        while not stop.is_set() and not node.operator.shutdown_requested:
            node.step()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    return t


def test_unknown_key_gets_nothing_and_a_known_key_changes_the_policy(
        node_config_factory, small_twin, keys, tmp_path: Path) -> None:
    """A stranger's key gets no reply and changes nothing; the operator's `set` bumps the policy
    version, and records of frames sent afterwards carry it."""
    ground = Ground(tmp_path / "ground")
    cfg = node_config_factory(
        receive={"queue_policy": "block"},
        downlink={"address": ground.address},
        control={"address": "tcp://127.0.0.1:0", "server_secret_key": str(keys["node_secret"]),
                 "allowed_client_keys": [str(keys["operator"])]},
        triage={"confidence_min": 1.0},  # every detection is sent, so every frame has records
    )
    node = NodeDaemon(cfg)
    node.start()
    stop = threading.Event()
    loop = _serve(node, stop)
    address = node.control.endpoint
    try:
        stranger = request(address, "set", {"alpha": 0.5}, timeout_ms=1500,
                           server_public_key=str(keys["node"]), client_secret_key=str(keys["stranger_secret"]))
        assert stranger is None
        assert node.policy.version == 1 and node.policy.alpha == cfg.triage.alpha
        anonymous = request(address, "status", timeout_ms=1500)
        assert anonymous is None

        op = {"server_public_key": str(keys["node"]), "client_secret_key": str(keys["operator_secret"])}
        LoopbackDaq(node.receiver_endpoint, [simulate_frame(small_twin, 0, 4)], series_id=1).join()
        # the frame was sent, not yet processed: the policy changes only once it is (series 1: policy 1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = request(address, "status", **op)
            if status and status["status"]["counters"]["frames_processed"] == 1:
                break
            time.sleep(0.1)
        answer = request(address, "set", {"alpha": 0.02, "classes_of_interest": ["streak", "galaxy"]}, **op)
        assert answer is not None and answer["ok"] and answer["policy_version"] == 2
        assert answer["changed"]["alpha"] == [cfg.triage.alpha, 0.02]
        bad = request(address, "set", {"alpha": 7, "no_such_knob": 1}, **op)
        assert bad is not None and not bad["ok"] and "no_such_knob" in bad["error"]
        assert node.policy.version == 2

        LoopbackDaq(node.receiver_endpoint, [simulate_frame(small_twin, 1, 4)], series_id=2).join()
        status = None
        deadline = time.monotonic() + 120  # a loaded 2-core machine takes seconds per frame
        while time.monotonic() < deadline:
            status = request(address, "status", **op)
            if status and status["status"]["counters"]["frames_processed"] == 2:
                break
            time.sleep(0.1)
        assert status is not None and status["status"]["policy_version"] == 2
        assert status["status"]["counters"]["frames_processed"] == 2
    finally:
        stop.set()
        loop.join(30)
        node.close(drain_s=10)
        ground.close()
    by_series = {}
    for rec in ground.records():
        by_series.setdefault(rec.series_id, set()).add(rec.policy_version)
    assert by_series == {"1": {1}, "2": {2}}


class _RefusedFirst(zmq.Socket):  # type: ignore[type-arg]
    """A client socket whose connect returns only once the server has refused its CURVE key, so
    the command is sent on a connection that is already gone (what a slow client meets)."""

    def connect(self, addr: str) -> Any:  # type: ignore[override]
        if self.type != zmq.DEALER:  # the monitor's own PAIR socket connects plainly
            return super().connect(addr)
        monitor = self.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)
        out = super().connect(addr)
        try:
            seen = []
            while zmq.EVENT_DISCONNECTED not in seen:  # the refusal, then the connection torn down
                assert monitor.poll(10_000), f"the server never refused the key (events {seen})"
                seen.append(recv_monitor_message(monitor)["event"])
            assert seen[0] == zmq.EVENT_HANDSHAKE_FAILED_AUTH, seen
            # let the socket take in the pipe's termination, as a client that is slow to send would
            deadline = time.monotonic() + 2.0
            while self.getsockopt(zmq.EVENTS) & zmq.POLLOUT and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self.disable_monitor()
            monitor.close(linger=0)
        return out


class _RefusedFirstContext(zmq.Context):  # type: ignore[type-arg]
    _socket_class = _RefusedFirst


@pytest.mark.timeout(30)
def test_a_refused_key_never_hangs_the_client(keys: dict[str, Path]) -> None:
    """When the node has already torn down the connection of a refused key, request() still
    answers None within its timeout instead of blocking on send."""
    ctx = _RefusedFirstContext()
    server = ControlServer(ControlSection(address="tcp://127.0.0.1:*", server_secret_key=str(keys["node_secret"]),
                                          allowed_client_keys=(str(keys["operator"]),)))
    try:
        answer = request(server.endpoint, "status", timeout_ms=500, context=ctx,
                         server_public_key=str(keys["node"]), client_secret_key=str(keys["stranger_secret"]))
        assert answer is None
        assert server.poll() == []
    finally:
        server.close()
        ctx.term()


def test_curve_off_is_said_loudly_and_pause_resume_shutdown_work(node_config_factory) -> None:
    """Without CURVE the node logs control.insecure; pause and resume flip the node; shutdown ends run()."""
    cfg = node_config_factory(control={"address": "tcp://127.0.0.1:0", "curve": False})
    node = NodeDaemon(cfg)
    with capture_logs() as logs:
        node.start()
    try:
        assert any(e["event"] == "control.insecure" for e in logs)
        assert node.handle_command("anonymous", "pause", {}) == {"ok": True, "paused": True}
        assert node.status()["paused"] is True
        assert node.handle_command("anonymous", "resume", {})["paused"] is False
        assert not node.handle_command("anonymous", "launch", {})["ok"]
        answer = {}

        def ask() -> None:
            answer.update(request(node.control.endpoint, "shutdown", timeout_ms=5000) or {})

        asker = threading.Thread(target=ask)
        asker.start()
        counters = node.run(lambda: False)   # returns once the shutdown command is carried out
        asker.join(10)
        assert answer.get("ok") is True and counters.conserved()
    finally:
        node.close()


def test_ctl_command_prints_answers_and_exit_codes(node_config_factory, capsys) -> None:
    """`astro-edge ctl` sends set with JSON values, prints the answer, and exits 0, 1 or 3."""
    from edge.cli import main
    from edge.log import configure

    configure(json=True, stream=sys.stderr)   # keep the node's own log lines off stdout
    cfg = node_config_factory(control={"address": "tcp://127.0.0.1:0", "curve": False})
    node = NodeDaemon(cfg)
    node.start()
    stop = threading.Event()
    loop = _serve(node, stop)
    try:
        address = node.control.endpoint
        assert main(["ctl", address, "set", "alpha=0.05", 'classes_of_interest=["streak", "galaxy"]']) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["policy_version"] == 2 and node.policy.classes_of_interest == ("streak", "galaxy")
        assert main(["ctl", address, "engine", "rollback"]) == 1
        assert "no previous engine" in json.loads(capsys.readouterr().out)["error"]
    finally:
        stop.set()
        loop.join(30)
        node.close()
    assert main(["ctl", address, "status", "--timeout-ms", "300"]) == 3


def test_an_unknown_command_is_refused_with_every_command_the_node_knows(node_config_factory) -> None:
    """A command the node does not know is answered ok=false, naming each command it does carry out."""
    from edge.node.control import COMMANDS
    from edge.node.daemon import NodeDaemon

    node = NodeDaemon(node_config_factory())
    answer = node.handle_command("operator", "reboot", {})
    assert answer["ok"] is False and "'reboot'" in answer["error"]
    assert all(name in answer["error"] for name in COMMANDS)
    assert {"engine.load", "engine.shadow", "engine.rollback"} <= set(COMMANDS)
    for name in COMMANDS:
        if name != "shutdown":
            assert "unknown command" not in node.handle_command("operator", name, {}).get("error", "")
