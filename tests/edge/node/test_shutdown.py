"""SIGTERM in the middle of a streamed run loses no accepted frame's records; a bad config stops
`astro-edge run` at start with one message naming every bad key."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge import FrameSender
from firmware_bridge.rig import header_fields
from twin import simulate_frame

from ..conftest import free_port
from .test_crash import _status, _wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_sigterm_mid_run_spools_every_accepted_frame(tmp_path: Path, tiny_engine: Path, small_twin: Any) -> None:
    """After SIGTERM the node finishes the frames it accepted: none is left in flight, and the spool
    holds exactly the records its counters say were spooled."""
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nworkers = 1\n[receive]\naddress = "tcp://127.0.0.1:{port}"\nqueue_policy = "block"\n'
        f'queue_frames = 3\n[engine]\npath = "{tiny_engine}"\n[spool]\npath = "{tmp_path / "spool.sqlite"}"\n'
        f'[downlink]\naddress = "tcp://127.0.0.1:{free_port()}"\n'   # no ground: everything stays spooled
    )
    status = tmp_path / "status.json"
    with (tmp_path / "node.log").open("ab") as log:
        node = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                                 "--status-file", str(status), "--drain-s", "0"], stdout=log, stderr=subprocess.STDOUT)
        try:
            with FrameSender(f"tcp://127.0.0.1:{port}", sndhwm=1, send_timeout_ms=30_000) as sender:
                sender.start_series(1)
                for i in range(6):
                    tf = simulate_frame(small_twin, i % 3, 2)
                    start, exposure_s, wcs, keywords = header_fields(tf.header, fallback_utc="")
                    sender.send_frame(tf.raw_adu, start_utc=start, exposure_s=exposure_s, wcs=wcs, keywords=keywords)
                _wait(lambda: _status(status).get("counters", {}).get("frames_received", 0) >= 3, 60,
                      "three frames received")
                node.send_signal(signal.SIGTERM)
                assert node.wait(60) == 0
        finally:
            if node.poll() is None:
                node.kill()
                node.wait(10)
    final = json.loads(status.read_text())
    c = final["counters"]
    assert c["frames_in_flight"] == 0 and c["conserved"]
    assert c["frames_processed"] == c["frames_received"] >= 3
    assert final["spool"]["accepted"]["record"] == c["spooled"] > 0
    assert final["spool"]["accepted"]["frame_summary"] == c["frames_processed"]


def test_bad_config_names_every_bad_key(tmp_path: Path) -> None:
    """`astro-edge run` with a bad config exits 2 with one message listing each problem."""
    config = tmp_path / "bad.toml"
    config.write_text('[node]\nworkers = 0\n[receive]\nqueue_policy = "never"\nport = 5\n[triage]\nalpha = "low"\n')
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    for needle in ("workers must be >= 1", "queue_policy", "receive.port: unknown key", "triage.alpha"):
        assert needle in out.stderr, needle
    assert "4 problem(s)" in out.stderr
