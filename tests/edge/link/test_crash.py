"""kill -9 a process that spools and downlinks; restarted on the same spool, the ground ends with every record once.

The process under test is :func:`drive` below, run as ``python test_crash.py SPOOL ADDRESS``: for
each frame it puts the frame's records and summary into the spool in one durable transaction
(with the next frame number as checkpoint), prints ``durable N``, and pumps the downlink, whose
byte budget is smaller than what the frames make, so a backlog builds up. It resumes at the
checkpoint after a restart and, after the last frame, drains the spool and prints ``done`` with
its counters.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge.codec import read_jsonl
from edge.ground.receiver import GroundReceiver
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.log import configure
from edge.records import DownlinkRecord, FrameSummary, compress_stamp, record_id

N_FRAMES = 24
SERIES = "crash"
KILL_AFTER_FRAME = 10
BUDGET_BYTES_PER_S = 80_000
FRAME_PERIOD_S = 0.02


def frame_messages(frame: int) -> tuple[list[DownlinkRecord], FrameSummary]:
    """The same records and summary for a frame every time (seeded by the frame number)."""
    rng = np.random.default_rng([20261128, frame])
    n = int(rng.integers(5, 15))
    recs = []
    for i in range(n):
        p = float(rng.uniform(1e-4, 1.0))
        recs.append(DownlinkRecord(
            record_id=record_id("node-c", SERIES, frame, i), node_id="node-c", detector_id="twin",
            series_id=SERIES, frame=frame, index=i, frame_time="2026-11-28T10:00:00Z",
            processed_time="2026-11-28T10:00:01Z", x=float(rng.uniform(0, 2048)),
            y=float(rng.uniform(0, 2048)), x_err=0.05, y_err=0.05, ra=None, dec=None,
            label="star", confidence=0.6, probs={"star": 0.6, "galaxy": 0.4}, entropy=0.67,
            aleatoric=0.6, epistemic=0.07, anomaly_score=3.0, anomaly_pvalue=p, snr=25.0,
            flux_e=5000.0, flux_err_e=200.0, a_px=1.5, b_px=1.4, theta_rad=0.1, flags=0, new=False,
            reasons=("uncertain",), priority=float(-np.log10(p)), policy_version=1,
            engine_id="cnn-1", calibration_id="none:estimated",
            stamp=compress_stamp(rng.normal(size=(2, 16, 16)))))
    summ = FrameSummary(node_id="node-c", detector_id="twin", series_id=SERIES, frame=frame,
                        frame_time="2026-11-28T10:00:00Z", detections=n + 3, by_class={"star": n + 3},
                        sent_by_reason={"uncertain": n}, sent=n, suppressed=3, dropped_frames=(),
                        noise_model="estimated", timings_ms={"detect": 1.0}, engine_id="cnn-1",
                        policy_version=1)
    return recs, summ


def drive(spool_path: str, address: str) -> None:
    """The node stand-in: spool every frame durably, downlink within budget, drain at the end."""
    configure(json=True, stream=sys.stderr)  # stdout carries the progress lines the test reads
    with Spool(spool_path) as spool, Downlink(spool, address, budget_bytes_per_s=BUDGET_BYTES_PER_S,
                                              ack_timeout_s=1.0) as dl:
        start = int(spool.checkpoint(f"{SERIES}.next_frame") or 0)
        print(f"resume {start}", flush=True)
        for frame in range(start, N_FRAMES):
            recs, summ = frame_messages(frame)
            spool.put([*recs, summ], checkpoint={f"{SERIES}.next_frame": str(frame + 1)})
            print(f"durable {frame}", flush=True)
            end = time.monotonic() + FRAME_PERIOD_S
            while time.monotonic() < end:
                dl.pump(5)
        if not dl.drain(timeout_s=40):
            raise SystemExit("the spool did not drain")
        c = spool.counters()
        print("done " + json.dumps({"accepted": c.accepted, "acked": c.acked, "evicted": c.evicted,
                                    "pending": c.pending, "retries": dl.counters().retries,
                                    "conserved": c.conserved()}), flush=True)


def start_driver(spool: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, str(spool), address], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[3])


@contextlib.contextmanager
def driver(spool: Path, address: str) -> Iterator[subprocess.Popen[str]]:
    """The driver process; killed (if still running) and its pipe closed on exit."""
    with start_driver(spool, address) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


@contextlib.contextmanager
def running_ground(out: Path, ctx: zmq.Context[Any]) -> Iterator[GroundReceiver]:
    """A ground receiver serving in a thread; stopped, joined and closed on exit, whatever happened."""
    ground = GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0)
    stop = threading.Event()
    # the socket moves to this thread and is used only there until join()
    thread = threading.Thread(target=ground.serve, args=(stop.is_set, 20), daemon=True)
    thread.start()
    try:
        yield ground
    finally:
        stop.set()
        thread.join()
        ground.close()


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for the driver's ``done`` line and its clean exit; return its counters."""
    assert proc.stdout is not None
    done = None
    for line in proc.stdout:
        if line.startswith("done "):
            done = json.loads(line[5:])
    assert proc.wait(timeout=60) == 0
    assert done is not None, "the driver did not finish"
    return done


def ground_ids(out: Path) -> tuple[list[str], list[str]]:
    records = [m.id for m in read_jsonl(out / "downlink.jsonl").messages]
    frames = [m.id for m in read_jsonl(out / "frames.jsonl").messages]
    return records, frames


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_mid_stream_then_restart_gives_every_record_exactly_once(tmp_path: Path) -> None:
    """SIGKILL while the backlog is in flight, restart on the same spool: the ground holds the ids of an uninterrupted run, each once."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with running_ground(tmp_path / "ref", ctx) as ground, \
                driver(tmp_path / "ref.sqlite", ground.address) as proc:
            ref_counters = finish(proc)  # the uninterrupted reference run
        ref_records, ref_frames = ground_ids(tmp_path / "ref")

        spool_path = tmp_path / "crash.sqlite"
        with running_ground(tmp_path / "crash", ctx) as ground:
            with driver(spool_path, ground.address) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.strip() == f"durable {KILL_AFTER_FRAME}":
                        break
                proc.kill()  # SIGKILL: no cleanup, no WAL checkpoint, acks possibly in flight
                proc.wait(timeout=10)
            with Spool(spool_path) as spool:
                left = spool.counters()
            assert left.conserved() and sum(left.pending.values()) > 0, "the kill did not catch a backlog"
            with driver(spool_path, ground.address) as resumed:
                assert resumed.stdout is not None
                first = resumed.stdout.readline().split()
                assert first[0] == "resume" and int(first[1]) > KILL_AFTER_FRAME
                after = finish(resumed)
        crash_counters = ground.counters()
    finally:
        ctx.term()
    records, frames = ground_ids(tmp_path / "crash")
    assert ref_counters["conserved"] and after["conserved"]
    assert sorted(ref_records) == sorted({r.record_id for f in range(N_FRAMES) for r in frame_messages(f)[0]})
    assert len(ref_frames) == N_FRAMES
    duplicated = [i for i, n in Counter(records + frames).items() if n > 1]
    assert duplicated == []
    assert sorted(records) == sorted(ref_records)
    assert sorted(frames) == sorted(ref_frames)
    assert crash_counters.malformed == {}
    # whatever arrived twice (stored, but its ack died with the process) was dropped, not written
    c = crash_counters
    assert c.received == c.records + c.summaries + c.duplicates
    assert (c.records, c.summaries) == (len(ref_records), N_FRAMES)



@contextlib.contextmanager
def ground_command(address: str, out: Path) -> Iterator[subprocess.Popen[str]]:
    """`astro-edge ground` as its own process, once it listens; killed on exit if still running."""
    with subprocess.Popen([sys.executable, "-m", "edge.cli", "ground", "--bind", address, "--out",
                           str(out), "--fits-interval-s", "0"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True,
                          cwd=Path(__file__).resolve().parents[3]) as proc:
        try:
            assert proc.stdout is not None and "listening on" in proc.stdout.readline()
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_the_ground_mid_stream_then_restart_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the ground command while records stream in, restart it on the same folder: every id once."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    out = tmp_path / "ground"
    with ground_command(address, out) as ground, driver(tmp_path / "s.sqlite", address) as node:
        assert node.stdout is not None
        for line in node.stdout:
            if line.strip() == "durable 8":
                break
        ground.kill()
        ground.wait(timeout=10)
        stored_before = len(ground_ids(out)[0])
        with ground_command(address, out) as again:
            counters = finish(node)
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=30) == 0
    records, frames = ground_ids(out)
    expected = sorted(r.record_id for f in range(N_FRAMES) for r in frame_messages(f)[0])
    assert 0 < stored_before < len(expected), "the kill did not land mid-stream"
    assert sorted(records) == expected and len(frames) == N_FRAMES == len(set(frames))
    assert counters["conserved"] and sum(counters["pending"].values()) == 0


if __name__ == "__main__":
    drive(sys.argv[1], sys.argv[2])
