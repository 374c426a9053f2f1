"""The live node over real sockets: frames in from a DAQ sender, records out to a ground receiver,
counters that conserve frames and detections, and bounded queues under overload."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edge.node.counters import DROPPED_SEQS_KEPT, NodeCounters
from edge.node.daemon import NodeDaemon
from edge.testing import Ground, LoopbackDaq
from firmware_bridge import FrameSender
from twin import simulate_frame

pytestmark = pytest.mark.timeout(180)


def _twin_frames(config: Any, n: int, seed: int = 5) -> list[Any]:
    return [simulate_frame(config, i, seed) for i in range(n)]


def _run_until(node: NodeDaemon, done: Callable[[], bool], timeout_s: float = 120.0,
               check: Callable[[], None] | None = None) -> None:
    end = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < end, f"node did not finish: {node.counters.snapshot()}"
        node.step()
        if check is not None:
            check()
        assert node.counters.conserved(), node.counters.snapshot()


def test_streamed_frames_reach_the_ground_exactly_once(node_config_factory, small_twin, ground: Ground) -> None:
    """Every streamed frame is processed once, its summary and records reach the ground once, and
    the counters conserve frames and detections at every step."""
    cfg = node_config_factory(receive={"queue_policy": "block", "queue_frames": 2},
                              downlink={"address": ground.address, "ack_timeout_s": 2.0})
    frames = _twin_frames(small_twin, 5)
    with NodeDaemon(cfg) as node:
        sender = LoopbackDaq(node.receiver_endpoint, frames, series_id=7)
        c = node.counters
        _run_until(node, lambda: c.frames_processed == len(frames))
        sender.join(10)
        _run_until(node, lambda: len(node.spool) == 0, timeout_s=60)
        status = node.status()
    assert c.frames_received == len(frames) and c.frames_dropped == 0 and c.frames_rejected == 0
    assert status["spool"]["accepted"]["record"] == c.spooled > 0
    seqs = sorted(s.frame for s in ground.summaries())
    assert seqs == list(range(len(frames)))
    records = ground.records()
    assert len(records) == len({r.record_id for r in records}) == c.spooled
    assert sum(s.detections for s in ground.summaries()) == c.detections
    assert {r.engine_id for r in records} == {node.engine_id}


def test_idle_workers_take_frames_in_turn(node_config_factory, small_twin, ground: Ground) -> None:
    """At a low frame rate, when every worker is idle for each frame, the frames still go to every
    worker in turn: each meets the node's frames early and reaches its full size during warm-up,
    not hours later (bench/soak.py)."""
    cfg = node_config_factory(node={"workers": 2}, downlink={"address": ground.address})
    frames = _twin_frames(small_twin, 2)
    with NodeDaemon(cfg) as node:
        with FrameSender(node.receiver_endpoint, detector_id="twin-cam", sndhwm=1,
                         send_timeout_ms=30_000) as sender:
            sender.start_series(3)
            for i in range(6):
                tf = frames[i % 2]
                sender.send_frame(tf.raw_adu, exposure_s=float(tf.header["EXPTIME"]))
                _run_until(node, lambda n=i + 1: node.counters.frames_processed == n)
            sender.end_series()
        status = node.status()
    assert status["worker_frames"] == [3, 3]


def test_a_long_overload_keeps_the_status_small() -> None:
    """Days of drops must not grow the node's memory or its status messages: the counters keep
    the most recent sequence numbers and count every drop."""
    c = NodeCounters()
    n = 3 * DROPPED_SEQS_KEPT + 17
    for seq in range(n):
        c.frames_received += 1
        c.frames_dropped += 1
        c.dropped_seqs.append(seq)
    snap = c.snapshot()
    assert snap["frames_dropped"] == n
    assert snap["dropped_seqs"] == list(range(n - DROPPED_SEQS_KEPT, n))
    assert snap["conserved"]
    json.dumps(snap)  # the status and housekeeping messages are JSON


def test_overload_drops_are_counted_with_their_sequence_numbers(node_config_factory, small_twin,
                                                                 ground: Ground) -> None:
    """A rig faster than the node: the node stays up, its queue stays bounded, and the dropped
    frames are exactly those that never reached scoring, reported in the next summaries."""
    cfg = node_config_factory(receive={"queue_policy": "drop_oldest", "queue_frames": 1},
                              downlink={"address": ground.address})
    frames = _twin_frames(small_twin, 3)
    frames = [dataclasses.replace(frames[i % 3], index=i) for i in range(14)]
    with NodeDaemon(cfg) as node:
        sender = LoopbackDaq(node.receiver_endpoint, frames, series_id=7)
        c = node.counters
        queue_frames = cfg.receive.queue_frames

        def bounded() -> None:
            assert len(node.ingest.queue) <= queue_frames

        _run_until(node, lambda: not sender.is_alive() and c.frames_in_flight == 0
                   and c.frames_received == len(frames), check=bounded)
        _run_until(node, lambda: len(node.spool) == 0, timeout_s=60)
    assert c.frames_dropped > 0, "the rig was not faster than the node"
    assert c.frames_received == c.frames_processed + c.frames_dropped
    summaries = ground.summaries()
    processed = {s.frame for s in summaries}
    assert processed.isdisjoint(c.dropped_seqs)
    assert processed | set(c.dropped_seqs) == set(range(len(frames)))
    reported = [seq for s in summaries for seq in s.dropped_frames]
    # drops after the last processed frame have no later summary to ride in
    assert set(reported) == {d for d in c.dropped_seqs if d < max(processed)}


def test_workers_past_their_frame_limit_are_replaced_between_frames(node_config_factory, small_twin,
                                                                   ground: Ground) -> None:
    """With [node] worker_max_frames, each worker is replaced by a fresh process once it has taken
    that many frames: every frame is still processed exactly once, the counters conserve at every
    step, and the new processes run the node's current policy and engine."""
    cfg = node_config_factory(node={"workers": 2, "worker_max_frames": 2},
                              receive={"queue_policy": "block", "queue_frames": 2},
                              downlink={"address": ground.address, "ack_timeout_s": 2.0})
    frames = _twin_frames(small_twin, 9)
    with NodeDaemon(cfg) as node:
        first_pids = {w.pid for w in node.workers}
        answer = node.handle_command("test", "set", {"audit_rate": 0.5})
        assert answer["ok"] and node.policy.version == 2
        sender = LoopbackDaq(node.receiver_endpoint, frames, series_id=7)
        c = node.counters
        _run_until(node, lambda: c.frames_processed == len(frames) and c.workers_recycled >= 2)
        sender.join(10)
        _run_until(node, lambda: len(node.spool) == 0, timeout_s=60)
        pids = {w.pid for w in node.workers}
        engine_ids = {w.engine_id for w in node.workers}
    assert c.frames_rejected == 0 and c.frames_dropped == 0 and c.workers_died == 0
    assert not pids & first_pids
    assert engine_ids == {node.engine_id}
    assert sorted(s.frame for s in ground.summaries()) == list(range(len(frames)))
    assert {s.policy_version for s in ground.summaries()} == {2}
    records = ground.records()
    assert len(records) == len({r.record_id for r in records}) == c.spooled


def test_a_daq_that_restarts_and_reuses_its_series_id_has_every_new_frame_processed(
        node_config_factory, small_twin, ground: Ground) -> None:
    """A DAQ sends series 9; it restarts and counts series 9 from seq 0 again, with a new start
    time: every frame of the new run is processed (none taken for a duplicate), its records and
    summaries reach the ground under series 9-1 beside the first run's; the same run sent again
    (its original start time) is skipped as duplicates."""
    cfg = node_config_factory(receive={"queue_policy": "block", "queue_frames": 2},
                              downlink={"address": ground.address, "ack_timeout_s": 2.0})
    frames = _twin_frames(small_twin, 3)
    runs = ["2026-12-03T20:00:00.000000Z", "2026-12-03T21:00:00.000000Z", "2026-12-03T21:00:00.000000Z"]
    with NodeDaemon(cfg) as node:
        c = node.counters
        for n, start in enumerate(runs, 1):
            sender = LoopbackDaq(node.receiver_endpoint, frames, series_id=9, series_start_utc=start)
            _run_until(node, lambda n=n: c.frames_processed + c.frames_duplicate == n * len(frames))
            sender.join(10)
        _run_until(node, lambda: len(node.spool) == 0, timeout_s=60)
    assert c.frames_processed == 6 and c.frames_duplicate == 3 and c.conserved()
    by_series = sorted((s.series_id, s.frame) for s in ground.summaries())
    assert by_series == [("9", 0), ("9", 1), ("9", 2), ("9-1", 0), ("9-1", 1), ("9-1", 2)]
    records = ground.records()
    assert len(records) == len({r.record_id for r in records}) == c.spooled > 0
    assert {r.series_id for r in records} == {"9", "9-1"}


@contextlib.contextmanager
def _busy_worker(node_config_factory: Any, small_twin: Any, ground: Ground, *, series_id: int,
                 **node_section: Any) -> Iterator[tuple[NodeDaemon, LoopbackDaq, list[Any]]]:
    """A one-worker node fed 4 twin frames (block policy), handed over once its worker holds one."""
    cfg = node_config_factory(node={"workers": 1, **node_section},
                              receive={"queue_policy": "block", "queue_frames": 4},
                              downlink={"address": ground.address})
    frames = _twin_frames(small_twin, 4)
    with NodeDaemon(cfg) as node:
        sender = LoopbackDaq(node.receiver_endpoint, frames, series_id=series_id)
        _run_until(node, lambda: node.workers[0].busy is not None)
        yield node, sender, frames


def test_a_worker_killed_mid_frame_is_replaced_and_its_frame_counted_rejected(
        node_config_factory, small_twin, ground: Ground) -> None:
    """A worker process killed while it holds a frame does not take the node down: that frame is
    counted rejected (reason worker_died), a new worker takes the next frames, and a worker killed
    while idle is replaced without losing anything."""
    import os
    import signal

    with _busy_worker(node_config_factory, small_twin, ground, series_id=7) as (node, sender, frames):
        c = node.counters
        victim = node.workers[0].pid
        os.kill(victim, signal.SIGKILL)
        _run_until(node, lambda: c.frames_processed + c.frames_rejected == len(frames))
        sender.join(10)
        assert c.frames_rejected == 1 and c.rejected_by_reason == {"worker_died": 1}
        assert c.frames_processed == len(frames) - 1 and c.workers_died == 1
        assert node.workers[0].pid != victim
        idle = node.workers[0].pid
        os.kill(idle, signal.SIGKILL)
        node.workers[0]._proc.join(10)
        # dying again soon after its start, the worker comes back after a short delay
        _run_until(node, lambda: c.workers_died == 2 and len(node.workers) == 1)
        assert node.workers[0].pid not in (victim, idle) and node.workers[0].alive()
    assert c.frames_received == len(frames) and c.conserved()


def test_node_daemon_refuses_a_missing_provider_before_any_worker_starts(node_config_factory) -> None:
    """A node asked for the CUDA provider on a CPU-only ONNX Runtime stops at start, with no worker spawned."""
    import onnxruntime

    from edge.errors import EngineCompatibilityError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: the request is honoured here")
    cfg = node_config_factory(engine={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    node = NodeDaemon(cfg)
    with pytest.raises(EngineCompatibilityError, match="CUDAExecutionProvider"):
        node.start()
    assert node.workers == [] and node.receiver is None
    node.close()


def test_a_hung_worker_is_killed_at_its_deadline_and_its_frame_rejected(
        node_config_factory, small_twin, ground: Ground) -> None:
    """A worker stopped (SIGSTOP) while it holds a frame is a hung worker: past [node]
    frame_deadline_s it is killed and replaced, the frame is rejected as frame_timeout, and the
    frames after it are processed by the new worker."""
    import os
    import signal

    deadline_s = 8.0   # a fresh worker's first frame, on a loaded machine, stays well inside it
    with _busy_worker(node_config_factory, small_twin, ground, series_id=8,
                      frame_deadline_s=deadline_s) as (node, sender, frames):
        c = node.counters
        victim = node.workers[0].pid
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        _run_until(node, lambda: c.frames_rejected == 1)
        held = time.monotonic() - stopped_at
        _run_until(node, lambda: c.frames_processed + c.frames_rejected == len(frames))
        sender.join(10)
        assert c.rejected_by_reason == {"frame_timeout": 1} and c.frames_processed == len(frames) - 1
        assert node.workers[0].pid != victim and c.workers_died == 1
        assert deadline_s - 0.5 < held < deadline_s + 5.0
    assert c.conserved()


def test_a_worker_that_keeps_dying_is_restarted_after_growing_delays(node_config_factory) -> None:
    """Killed again and again right after each start, a worker is restarted after 0.5 s, 1 s, 2 s:
    a crash loop costs the node a few restarts a minute, not a restart per turn."""
    import os
    import signal

    from structlog.testing import capture_logs

    with NodeDaemon(node_config_factory(node={"workers": 1})) as node:
        c = node.counters
        with capture_logs() as logs:
            for deaths in range(1, 5):
                victim = node.workers[0]
                os.kill(victim.pid, signal.SIGKILL)
                victim._proc.join(10)
                _run_until(node, lambda d=deaths: c.workers_died == d and len(node.workers) == 1, timeout_s=60)
        delays = [e["delay_s"] for e in logs if e["event"] == "worker.restart_delayed"]
        assert delays == [0.5, 1.0, 2.0]
        assert [e["event"] for e in logs if e["event"] == "worker.restarted"] == ["worker.restarted"] * 4
        assert node.workers[0].alive()


def test_curve_on_the_frame_feed_lets_in_only_the_daqs_it_knows(node_config_factory, tmp_path) -> None:
    """With [receive] CURVE keys, frames from the allowed DAQ's key arrive; a DAQ with another key
    and one without CURVE are refused at the handshake, and none of their frames reach the node."""
    import numpy as np
    import zmq
    from structlog.testing import capture_logs

    from edge.link.curve import make_curve_client
    from edge.link.keys import new_keypair
    from firmware_bridge import FrameSender

    keys = {name: new_keypair(tmp_path / "keys", name) for name in ("node", "daq", "stranger")}
    cfg = node_config_factory(receive={"curve_server_secret_key": str(keys["node"][1]),
                                       "allowed_daq_keys": [str(keys["daq"][0])], "queue_frames": 16})
    pixels = np.arange(64, dtype="<u2").reshape(8, 8)

    def client(name: str):
        return lambda sock: make_curve_client(sock, keys[name][1], keys["node"][0])

    ctx = zmq.Context()
    with capture_logs() as logs, NodeDaemon(cfg) as node:
        senders = {"daq": FrameSender(node.receiver_endpoint, detector_id="daq", context=ctx, setup=client("daq")),
                   "stranger": FrameSender(node.receiver_endpoint, detector_id="stranger", context=ctx,
                                           setup=client("stranger")),
                   "plain": FrameSender(node.receiver_endpoint, detector_id="plain", context=ctx)}
        try:
            for _ in range(50):   # the handshakes settle while the node turns
                node.step(10)
            for tx in senders.values():
                tx.send_frame(pixels, exposure_s=1.0)
            end = time.monotonic() + 10
            while node.receiver.counters.received < 1 and time.monotonic() < end:
                node.step(10)
            for _ in range(100):
                node.step(10)
            got = node.receiver.counters.as_dict()
        finally:
            for tx in senders.values():
                tx.close()
    ctx.term()
    assert got["frames"] == 1 and got["received"] == 1, got
    assert any(e["event"] == "receive.refused" for e in logs)
