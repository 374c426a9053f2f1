"""A disk that fails under a running node: real write failures, injected below SQLite and the
ground's files by a preloaded shim (tests/faults/ioshim.c) that makes write, pwrite, fsync and
fdatasync on the spool's (or the ground's) files fail with ENOSPC, EIO or EROFS, as a full disk, a
failing one and media remounted read-only do. Once: the disk comes back and the node (or the
ground) recovers by itself. Forever: it never does, and neither ever exits on its own."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge.testing import Ground, LoopbackDaq
from twin import simulate_frame

from ..conftest import kill_if_running, stop_node, write_node_toml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: what SQLite makes of each errno (its message, in the node's log)
SQLITE_SAYS = {"ENOSPC": "database or disk is full", "EIO": "disk I/O error", "EROFS": "disk I/O error"}


class _Log:
    """The node's JSON log lines, read from a pipe (a pipe has no file-size limit)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.events: list[dict[str, Any]] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def close(self) -> None:
        """Read to the end of the pipe (the node has ended) and close it."""
        self._thread.join(10)
        self._proc.stdout.close()  # type: ignore[union-attr]

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in list(self.events)
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items())]


def _wait(predicate: Any, timeout_s: float, what: Any) -> None:
    """Wait for ``predicate()``; ``what`` (text, or a function that says it at the timeout) names it."""
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.05)


@pytest.mark.parametrize(("error", "mode"), [("ENOSPC", "once"), ("ENOSPC", "forever"), ("EIO", "once"),
                                             ("EIO", "forever"), ("EROFS", "once")])
def test_a_failing_spool_disk_degrades_the_node_and_it_recovers_when_the_disk_returns(
        error: str, mode: str, tmp_path: Path, tiny_engine: Path, small_twin: Any, disk_fault: Any) -> None:
    """Frames 0-2 spool; the spool's disk fails and frames 3-5 cannot be kept: the node reports the
    spool degraded with SQLite's words for the error, counts them as dropped with their sequence
    numbers and goes on. Once: the disk returns, frames 6-8 reach the ground, the node reports the
    spool recovered and the next summary names 3-5 as dropped. Forever: frames 6-8 are dropped
    too, and the node still stops only when told to, with exit code 0 and its counters conserved."""
    ground = Ground(tmp_path / "ground")
    config, port = write_node_toml(tmp_path, "fault-node", tiny_engine, ground.address, "[log]\njson = true\n")
    status = tmp_path / "status.json"
    disk = disk_fault(tmp_path / "spool.sqlite")
    node = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                             "--status-file", str(status)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=disk.env)
    log = _Log(node)
    fail, heal = threading.Event(), threading.Event()
    frames = [simulate_frame(small_twin, i, 11) for i in range(9)]
    try:
        daq = LoopbackDaq(f"tcp://127.0.0.1:{port}", frames, series_id=4, gates={3: fail, 6: heal})
        _wait(lambda: {s.frame for s in ground.summaries()} >= {0, 1, 2}, 120, "frames 0-2 at the ground")
        disk.fail(error)
        fail.set()
        _wait(lambda: len(log.named("frame.dropped", stage="spool")) >= 3, 120, "frames 3-5 dropped at the spool")
        assert disk.refusals() > 0
        # the downlink's deletes of acknowledged records fail on the same disk
        degraded = log.named("node.degraded")
        parts = [e["part"] for e in degraded]
        assert "spool" in parts and set(parts) <= {"spool", "downlink"}
        assert len(parts) == len(set(parts)), "a part's degradation is logged once, not per fault"
        assert SQLITE_SAYS[error] in next(e for e in degraded if e["part"] == "spool")["error"]
        assert node.poll() is None, "the node ended when its spool failed"
        if mode == "once":
            disk.heal()
        heal.set()
        daq.join(120)
        if mode == "once":
            _wait(lambda: {s.frame for s in ground.summaries()} >= {6, 7, 8}, 120, "frames 6-8 at the ground")
            _wait(lambda: log.named("node.recovered", part="spool"), 30, "the spool reported recovered")
        else:
            _wait(lambda: len(log.named("frame.dropped", stage="spool")) >= 6, 120, "frames 6-8 dropped")
            time.sleep(2.0)
            assert node.poll() is None, "the node ended while its spool kept failing"
        assert stop_node(node) == 0
    finally:
        ground.close()
        kill_if_running(node)
        log.close()
    dropped = sorted(e["seq"] for e in log.named("frame.dropped", stage="spool"))
    at_ground = sorted({s.frame for s in ground.summaries()})
    final = json.loads(status.read_text())
    counters = final["counters"]
    assert counters["conserved"]
    if mode == "once":
        assert dropped == [3, 4, 5]
        assert at_ground == [0, 1, 2, 6, 7, 8]
        named = sorted(f for s in ground.summaries() for f in s.dropped_frames)
        assert named == [3, 4, 5], "the summary after the fault names the frames lost to it"
        assert final["state"] == "ok" and counters["frames_dropped"] == 3
    else:
        assert dropped == [3, 4, 5, 6, 7, 8]
        assert at_ground == [0, 1, 2]
        assert counters["frames_dropped"] == 6
        assert counters["frames_processed"] == 3


@pytest.mark.parametrize(("error", "mode"), [("ENOSPC", "once"), ("EIO", "forever")])
def test_a_failing_ground_disk_loses_nothing_and_the_ground_recovers_when_it_returns(
        error: str, mode: str, tmp_path: Path, tiny_engine: Path, small_twin: Any, disk_fault: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames 0-2 reach the ground; its disk fails, and what frames 3-5 send is neither stored
    nor acknowledged, so the node keeps it spooled and sends it again. Once: the disk returns and
    every record arrives exactly once, and the ground reports itself recovered. Forever: the ground
    still runs and says why it is degraded, and the node still holds every record of frames 3-5."""
    disk = disk_fault(tmp_path / "ground")
    with monkeypatch.context() as env:   # the ground's process (spawned now) loads the shim
        for name in ("LD_PRELOAD", "IOSHIM_PREFIX", "IOSHIM_CONTROL"):
            env.setenv(name, disk.env[name])
        ground = Ground(tmp_path / "ground", own_process=True)
    config, port = write_node_toml(tmp_path, "fault-node", tiny_engine, ground.address, "[log]\njson = true\n")
    status = tmp_path / "status.json"
    node = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                             "--status-file", str(status)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = _Log(node)
    fail = threading.Event()
    frames = [simulate_frame(small_twin, i, 12) for i in range(6)]
    try:
        daq = LoopbackDaq(f"tcp://127.0.0.1:{port}", frames, series_id=5, gates={3: fail})
        _wait(lambda: {s.frame for s in ground.summaries()} == {0, 1, 2}, 120, "frames 0-2 at the ground")
        # every record of frames 0-2 acknowledged too (a summary can land before its frame's last
        # records), so that what the node holds after the failure is frames 3-5's alone; the status
        # file is written once a second, so it must be one written after frame 2's summary was
        # acknowledged (an older one shows nothing pending before frame 2 was even spooled)
        nothing = {"record": 0, "frame_summary": 0}

        def acknowledged_in_full() -> bool:
            spool = json.loads(status.read_text())["spool"] if status.exists() else {}
            return spool.get("pending") == nothing and spool["acked"]["frame_summary"] == 3

        _wait(acknowledged_in_full, 60, "frames 0-2 acknowledged in full")
        disk.fail(error)
        fail.set()
        daq.join(120)
        _wait(lambda: len(log.named("frame.processed")) == 6, 120, "frames 3-5 processed")
        _wait(lambda: disk.refusals() > 0, 30, "the ground's disk refusing a batch")
        time.sleep(3.0)   # a few ack timeouts: the node sends again, the ground refuses again
        assert {s.frame for s in ground.summaries()} == {0, 1, 2}, "nothing reached the ground's files"
        sent_later = sum(e["sent"] for e in log.named("frame.processed") if e["seq"] >= 3)
        held = {"record": sent_later, "frame_summary": 3}
        seen: list[Any] = []
        _wait(lambda: seen.append(json.loads(status.read_text())["spool"]) or seen[-1]["pending"] == held,
              30, lambda: f"the node holding every record and summary of frames 3-5 ({held}; last status: {seen[-1:]})")
        if mode == "once":
            disk.heal()
            _wait(lambda: {s.frame for s in ground.summaries()} == set(range(6)), 120, "every frame at the ground")
        assert node.poll() is None
        assert stop_node(node) == 0
    finally:
        ground.close()
        kill_if_running(node)
        log.close()
    counters = ground.counters
    assert counters is not None and counters.write_failures > 0
    records = [r.record_id for r in ground.records()]
    assert len(records) == len(set(records)), "a record stored twice"
    announced = sum(s.sent for s in ground.summaries())
    if mode == "once":
        assert counters.degraded is None
        assert len(records) == announced == sum(e["sent"] for e in log.named("frame.processed"))
    else:
        assert counters.degraded is not None and "Input/output error" in counters.degraded["error"]
        assert len(records) == announced
