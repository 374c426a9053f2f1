"""kill -9 the node in the middle of a streamed run, restart it on the same spool while the rig
re-sends the series: the ground ends with every record of an uninterrupted run exactly once."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.node.assemble import build_pipeline
from edge.testing import Ground, LoopbackDaq
from firmware_bridge.rig import header_fields
from twin import simulate_frame

from ..conftest import frame_input, kill_if_running, stop_node, write_node_toml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _start_node(config: Path, status: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                             "--status-file", str(status)],
                            stdout=log, stderr=subprocess.STDOUT)


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_kill_9_and_restart_gives_every_record_exactly_once(tmp_path: Path, tiny_engine: Path,
                                                             small_twin: Any) -> None:
    """After kill -9 mid-run and a restart on the same spool, the ground holds exactly the record
    ids an uninterrupted run makes, each once, and a summary for every frame."""
    ground = Ground(tmp_path / "ground")
    config, port = write_node_toml(tmp_path, "crash-node", tiny_engine, ground.address)
    frames = [simulate_frame(small_twin, i, 9) for i in range(8)]
    status = tmp_path / "status.json"
    log = (tmp_path / "node.log").open("ab")
    try:
        node = _start_node(config, status, log)
        # the series keeps its start time when it is sent again: the same series, not a new run of id 3
        started = "2026-12-03T20:00:00.000000Z"
        sender = LoopbackDaq(f"tcp://127.0.0.1:{port}", frames, series_id=3, series_start_utc=started)
        _wait(lambda: _status(status).get("counters", {}).get("frames_processed", 0) >= 3, 120,
              "three frames processed")
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        before = _status(status)["counters"]["frames_processed"]
        sender.close()  # the DAQ gives up on the dead node's series (at most one frame's send timeout)
        # the DAQ re-sends the series; the restarted node skips the frames already spooled
        node = _start_node(config, status, log)
        time.sleep(0.5)
        sender = LoopbackDaq(f"tcp://127.0.0.1:{port}", frames, series_id=3, series_start_utc=started)
        sender.join(120)
        _wait(lambda: len({s.frame for s in ground.summaries()}) == len(frames), 120, "every summary at the ground")
        announced = sum(s.sent for s in ground.summaries())
        _wait(lambda: len({r.record_id for r in ground.records()}) >= announced, 60,
              "every record the summaries announce")
        assert stop_node(node) == 0
    finally:
        ground.close()
        kill_if_running(node)
        log.close()
    final = _status(status)["counters"]
    assert final["frames_duplicate"] >= before > 0
    assert final["conserved"]

    pipeline = build_pipeline(load_config(config))
    expected = []
    for tf in frames:
        _, _, wcs, keywords = header_fields(tf.header, fallback_utc="")
        frame = dataclasses.replace(frame_input(tf, series_id="3"), header={**keywords, **wcs})
        expected += [r.record_id for r in pipeline.process(frame).records]
    got = [r.record_id for r in ground.records()]
    assert len(got) == len(set(got)), "a record reached the ground twice"
    missing = sorted(set(expected) - set(got))
    assert not missing, (len(missing), missing[:5], final, len(got), len(expected))
    assert sorted(got) == sorted(expected)
    assert sorted(s.frame for s in ground.summaries()) == list(range(len(frames)))
