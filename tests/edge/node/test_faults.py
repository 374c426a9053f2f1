"""A spool whose disk fails under a running node: real write failures, injected by lowering the
node process's file-size limit (RLIMIT_FSIZE) from outside, so that every spool commit fails in
the kernel with EFBIG, as a full disk fails one with ENOSPC. Once: the limit is lifted again and
the node recovers by itself. Forever: it never is, and the node still never exits on its own."""

from __future__ import annotations

import json
import resource
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

#: a commit writes at least two pages to the WAL; no WAL write past 8 KiB succeeds
FAILING_LIMIT = 8192


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


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["once", "forever"])
def test_a_failing_spool_disk_degrades_the_node_and_it_recovers_when_the_disk_returns(
        mode: str, tmp_path: Path, tiny_engine: Path, small_twin: Any) -> None:
    """Frames 0-2 spool; the limit drops and frames 3-5 cannot be kept: the node reports the spool
    degraded, counts them as dropped with their sequence numbers and goes on. Once: the limit
    returns, frames 6-8 reach the ground, the node reports the spool recovered and the next summary
    names 3-5 as dropped. Forever: frames 6-8 are dropped too, and the node still stops only when
    told to, with exit code 0 and its counters conserved."""
    ground = Ground(tmp_path / "ground")
    config, port = write_node_toml(tmp_path, "fault-node", tiny_engine, ground.address, "[log]\njson = true\n")
    status = tmp_path / "status.json"
    node = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                             "--status-file", str(status)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = _Log(node)
    fail, heal = threading.Event(), threading.Event()
    frames = [simulate_frame(small_twin, i, 11) for i in range(9)]
    try:
        daq = LoopbackDaq(f"tcp://127.0.0.1:{port}", frames, series_id=4, gates={3: fail, 6: heal})
        _wait(lambda: {s.frame for s in ground.summaries()} >= {0, 1, 2}, 120, "frames 0-2 at the ground")
        resource.prlimit(node.pid, resource.RLIMIT_FSIZE, (FAILING_LIMIT, resource.RLIM_INFINITY))
        fail.set()
        _wait(lambda: len(log.named("frame.dropped", stage="spool")) >= 3, 120, "frames 3-5 dropped at the spool")
        # the downlink's deletes of acknowledged records fail on the same disk; the status file may too
        parts = [e["part"] for e in log.named("node.degraded")]
        assert "spool" in parts and set(parts) <= {"spool", "downlink", "status_file"}
        assert len(parts) == len(set(parts)), "a part's degradation is logged once, not per fault"
        assert node.poll() is None, "the node ended when its spool failed"
        if mode == "once":
            resource.prlimit(node.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        heal.set()
        daq.join(120)
        if mode == "once":
            _wait(lambda: {s.frame for s in ground.summaries()} >= {6, 7, 8}, 120, "frames 6-8 at the ground")
            _wait(lambda: log.named("node.recovered", part="spool"), 30, "the spool reported recovered")
        else:
            _wait(lambda: len(log.named("frame.dropped", stage="spool")) >= 6, 120, "frames 6-8 dropped")
            time.sleep(2.0)
            assert node.poll() is None, "the node ended while its spool kept failing"
            resource.prlimit(node.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
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
