"""The live node: receive frames over ZeroMQ, run the pipeline in worker processes, spool every
record durably, and downlink from the spool.

Threads and processes, each owning its own things:

- the main thread owns the FrameReceiver (PULL socket), the bounded ingest queue and the spool
  writes: a frame's records are acknowledged (counted as spooled) only once ``Spool.put`` has
  committed them;
- ``workers`` processes run :class:`edge.pipeline.Pipeline` (sep holds the GIL, so frames overlap
  across cores only in processes);
- one downlink thread owns the downlink socket and pumps the spool to the ground.

The counters obey, at every moment: frames received = processed + rejected + dropped + in flight,
and detections = suppressed + spooled (spooled records then leave as acked or evicted, or wait).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge.config import NodeConfig
from edge.errors import AstroEdgeError
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.log import get_logger
from edge.node.allocator import fix_mmap_threshold
from edge.node.assemble import build_pipeline, engine_dir
from edge.node.done import DoneSet
from edge.node.housekeeping import Housekeeping
from edge.node.supervision import SystemdNotifier, process_figures
from edge.node.workers import FrameFailure, Worker
from edge.pipeline import FrameInput, FrameResult

log = get_logger(__name__)

#: how many of the most recent dropped sequence numbers the counters (and so every status and
#: housekeeping message) carry; every drop is also in the next frame summary's ``dropped_frames``
DROPPED_SEQS_KEPT = 1000


@dataclass
class NodeCounters:
    """What the node has done since it started; see the module docstring for the conservation laws."""

    frames_received: int = 0      # frames accepted by the protocol, plus messages it rejected
    frames_processed: int = 0
    frames_rejected: int = 0      # protocol rejections plus frames the pipeline refused
    frames_dropped: int = 0       # frames the ingest queue let go (drop_oldest)
    frames_in_flight: int = 0     # queued or in a worker
    frames_duplicate: int = 0     # frames already in the spool (a DAQ re-sent them): not processed again
    #: the most recent DROPPED_SEQS_KEPT of them: a long overload must not grow the node's memory
    dropped_seqs: deque[int] = field(default_factory=lambda: deque(maxlen=DROPPED_SEQS_KEPT))
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    detections: int = 0
    suppressed: int = 0
    spooled: int = 0              # records committed to the spool (they leave as acked or evicted)
    spool_duplicates: int = 0
    evicted: int = 0
    latency_ms: list[float] = field(default_factory=list)   # receive -> spooled, last 1000 frames
    workers_recycled: int = 0     # workers replaced after [node] worker_max_frames frames
    workers_died: int = 0         # worker processes that ended on their own (and were replaced)

    def conserved(self) -> bool:
        """Both conservation laws hold."""
        frames = (self.frames_processed + self.frames_rejected + self.frames_dropped
                  + self.frames_in_flight + self.frames_duplicate)
        return self.frames_received == frames and self.detections == self.suppressed + self.spooled

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy (latencies summarised)."""
        out = asdict(self)
        lat = sorted(out.pop("latency_ms"))
        out["dropped_seqs"] = list(self.dropped_seqs)
        out["latency_p50_ms"] = lat[len(lat) // 2] if lat else None
        out["latency_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None
        out["conserved"] = self.conserved()
        return out


class NodeDaemon:
    """The live node; ``run(should_stop)`` until told to stop, then drain what was accepted."""

    def __init__(self, config: NodeConfig, *, bundle_override: str | None = None,
                 build: Callable[..., Any] = build_pipeline, status_path: str | Path | None = None,
                 notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self.counters = NodeCounters()
        self.status_path = Path(status_path) if status_path else None
        self._build = build
        self._bundle = bundle_override
        self._queue: deque[tuple[FrameInput, float]] = deque()
        self._pending_drops: list[int] = []
        self._stop_downlink = threading.Event()
        self.engine_id = ""
        self.receiver: Any = None
        self.spool: Spool | None = None
        self.workers: list[Worker] = []
        self._downlink_thread: threading.Thread | None = None
        self.downlink_counters: dict[str, Any] = {}
        self.receiver_endpoint = ""
        self._drain_s = 0.0
        self.policy = config.triage
        self.control: Any = None
        self._paused = False
        self._shutdown_requested = False
        self._flush = threading.Event()
        self.notifier = notifier or SystemdNotifier(None)
        self.housekeeping: Housekeeping | None = None
        self._stage_ms: dict[str, deque[float]] = {}
        self._last_ping = (0.0, -1)        # (monotonic time, frames finished) at the last watchdog ping
        self._engine_path = ""            # the folder the workers run now
        self._engine_history: list[str] = []
        self._shadow: dict[str, Any] | None = None   # the last shadow run and its agreement
        self._done: dict[str, DoneSet] = {}   # finished frames per series, mirrored in the spool
        self._turn = 0                        # the worker that is offered the next frame first
        self._replacements: dict[int, Worker] = {}   # worker index -> its successor, starting
        self._recycle_at: dict[int, int] = {}        # worker index -> frames at which to replace it
        self._mmap_threshold = 0

    # ---- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        """Open the spool, start the workers (each builds and checks the pipeline), bind the receiver."""
        from firmware_bridge import FrameReceiver

        cfg = self.config
        mmap_threshold = self._mmap_threshold = cfg.node.mmap_threshold_kib * 1024
        fix_mmap_threshold(mmap_threshold)
        self.spool = Spool(cfg.spool.path, max_bytes=cfg.spool.max_bytes)
        try:
            self.workers = [Worker(i, self._build, (cfg, self._bundle), mmap_threshold=mmap_threshold)
                            for i in range(cfg.node.workers)]
            self.engine_id = self.workers[0].engine_id
            self._engine_path = str(engine_dir(cfg))
            self.receiver = FrameReceiver(cfg.receive.address, bind=cfg.receive.bind,
                                          rcvhwm=max(2, cfg.receive.queue_frames))
        except BaseException:
            self.close()
            raise
        self.receiver_endpoint = self.receiver.endpoint
        if cfg.control.address:
            from edge.node.control import ControlServer

            try:
                self.control = ControlServer(cfg.control)
            except BaseException:
                self.close()
                raise
        hk = cfg.housekeeping
        if hk.address or hk.prometheus_address:
            try:
                self.housekeeping = Housekeeping(hk.address, hk.prometheus_address)
            except BaseException:
                self.close()
                raise
        self._downlink_thread = threading.Thread(target=self._downlink_loop, name="downlink", daemon=True)
        self._downlink_thread.start()
        if not cfg.downlink.curve_client_secret_key:
            log.warning("downlink.insecure", address=cfg.downlink.address,
                        detail="CURVE is off on the downlink: records leave unencrypted and unauthenticated")
        log.info("node.started", node=cfg.node.id, workers=len(self.workers), engine=self.engine_id,
                 receive=self.receiver_endpoint, downlink=cfg.downlink.address, spool=str(cfg.spool.path),
                 queue_policy=cfg.receive.queue_policy)

    def close(self, drain_s: float = 0.0) -> None:
        """Stop the workers and the downlink (after up to ``drain_s`` of sending), close everything."""
        self._drain_s = drain_s
        self._stop_downlink.set()
        if self._downlink_thread is not None:
            self._downlink_thread.join(drain_s + 10.0)
        for w in [*self.workers, *self._replacements.values()]:
            w.close()
        self.workers = []
        self._replacements = {}
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.housekeeping is not None:
            self.housekeeping.close()
            self.housekeeping = None
        self.notifier.close()
        self._write_status()   # the final figures, spool included
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def __enter__(self) -> NodeDaemon:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], *, status_every_s: float = 1.0) -> NodeCounters:
        """Receive and process until ``should_stop()``; then finish every accepted frame."""
        now = time.monotonic()
        next_status = now + status_every_s
        next_hk = now + self.config.housekeeping.interval_s
        self.notifier.notify("READY=1", f"STATUS=receiving on {self.receiver_endpoint}, engine {self.engine_id}")
        while not should_stop() and not self._shutdown_requested:
            self.step()
            now = time.monotonic()
            if now >= next_status:
                self._write_status()
                self._watchdog(now)
                next_status = now + status_every_s
            if self.housekeeping is not None and now >= next_hk:
                self.housekeeping.publish(self.housekeeping_figures())
                next_hk = now + self.config.housekeeping.interval_s
        self.notifier.notify("STOPPING=1", "STATUS=finishing the accepted frames")
        self.finish()
        log.info("node.stopped", **{k: v for k, v in self.counters.snapshot().items() if k != "dropped_seqs"})
        return self.counters

    def _watchdog(self, now: float) -> None:
        """Ping systemd's watchdog only when frames were finished since the last ping, or when the
        node has nothing to do; a pipeline holding frames without finishing any gets no ping."""
        c = self.counters
        finished = c.frames_processed + c.frames_rejected
        idle = not self._queue and not self._busy()
        if finished != self._last_ping[1] or idle:
            self.notifier.notify("WATCHDOG=1", f"STATUS=frames {finished} finished, {c.frames_dropped} dropped, "
                                 f"queue {len(self._queue)}, engine {self.engine_id}, policy {self.policy.version}")
            self._last_ping = (now, finished)

    def housekeeping_figures(self) -> dict[str, Any]:
        """status() plus per-stage latency p50/p99, spool age and the process's CPU, memory and GPU figures."""
        figures = self.status()
        figures["stage_latency_ms"] = {
            stage: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
            for stage, v in self._stage_ms.items() if v}
        figures["spool_oldest_age_s"] = self._spool_oldest_age_s()
        figures["process"] = process_figures()
        return figures

    def _spool_oldest_age_s(self) -> float | None:
        from datetime import datetime, timezone

        from edge.records import DownlinkRecord, decode_msgpack

        item = self.spool.oldest() if self.spool is not None else None
        if item is None:
            return None
        msg = decode_msgpack(item.payload)
        stamp = msg.processed_time if isinstance(msg, DownlinkRecord) else msg.frame_time
        then = datetime.strptime(stamp.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - then).total_seconds()

    def step(self, timeout_ms: int = 20) -> None:
        """One turn: take what arrived, hand frames to idle workers, spool what they finished."""
        if self.control is not None:
            for req in self.control.poll():
                self.control.reply(req.identity, self.handle_command(req.user, req.command, req.args))
        block = self.config.receive.queue_policy == "block"
        room = len(self._queue) < self.config.receive.queue_frames
        if self._paused:
            time.sleep(timeout_ms / 1000)
        elif room or not block:
            if self._busy():
                # sleep until a frame or a command arrives or a worker finishes, not in a spin
                self._wait_any(timeout_ms)
                self._receive(0)
            else:
                self._receive(timeout_ms)
        self._dispatch()
        self._collect(0 if room or not block else timeout_ms / 1000)
        self._maintain_workers()

    def _wait_any(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        poller.register(self.receiver.socket, zmq.POLLIN)
        if self.control is not None:
            poller.register(self.control.socket, zmq.POLLIN)
        for w in self.workers:
            if w.busy is not None:
                poller.register(w.connection.fileno(), zmq.POLLIN)
        poller.poll(timeout_ms)

    def finish(self) -> None:
        """Process every frame already accepted (queue and workers) and spool its records."""
        while self._queue or self._busy():
            self._dispatch()
            self._collect(0.05)
            self._maintain_workers()

    def _busy(self) -> bool:
        return any(w.busy is not None for w in self.workers)

    def _receive(self, timeout_ms: int) -> None:
        from firmware_bridge import Frame

        before = self.receiver.counters.rejected
        msg = self.receiver.recv(timeout_ms)
        rejected = self.receiver.counters.rejected - before
        if rejected:
            self.counters.frames_received += rejected
            self.counters.frames_rejected += rejected
            self.counters.rejected_by_reason = dict(self.receiver.counters.rejected_by_reason)
        if not isinstance(msg, Frame):
            return
        h = msg.header
        header = {**dict(h.keywords), **dict(h.wcs)}
        frame = FrameInput(detector_id=h.detector_id, series_id=str(h.series_id), seq=h.seq,
                           frame_time=h.start_utc, exposure_s=h.exposure_s, pixels=msg.pixels,
                           header=header, filter_name=_filter(header))
        self.counters.frames_received += 1
        if self._already_spooled(frame):
            self.counters.frames_duplicate += 1
            log.info("frame.duplicate", series=frame.series_id, seq=frame.seq)
            return
        if len(self._queue) >= self.config.receive.queue_frames:
            old, _ = self._queue.popleft()
            self.counters.frames_in_flight -= 1
            self.counters.frames_dropped += 1
            self.counters.dropped_seqs.append(old.seq)
            self._pending_drops.append(old.seq)
            log.warning("frame.dropped", stage="ingest_queue", series=old.series_id, seq=old.seq,
                        policy=self.config.receive.queue_policy)
        self._queue.append((frame, time.monotonic()))
        self.counters.frames_in_flight += 1

    def _done_set(self, series_key: str) -> DoneSet:
        done = self._done.get(series_key)
        if done is None:
            stored = self.spool.checkpoint(f"done:{series_key}") if self.spool is not None else None
            done = self._done[series_key] = DoneSet.from_json(stored)
        return done

    def _already_spooled(self, frame: FrameInput) -> bool:
        return frame.seq in self._done_set(f"{frame.detector_id}:{frame.series_id}")

    def _dispatch(self) -> None:
        # idle workers take frames in turn, so each meets every kind of frame early (and grows to
        # its full size during warm-up) instead of the first worker taking nearly all at low rates
        n = len(self.workers)
        for k in range(n):
            if not self._queue:
                return
            i = (self._turn + k) % n
            w = self.workers[i]
            successor = self._replacements.get(w.index)
            # a worker whose successor is ready takes no more frames: it is switched out when idle
            if w.busy is None and not (successor is not None and successor.ready) and w.alive():
                frame, t0 = self._queue.popleft()
                drops, self._pending_drops = tuple(self._pending_drops), []
                w.submit(frame, drops, received_at=t0)
                self._turn = (i + 1) % n

    def _collect(self, timeout_s: float) -> None:
        busy = [w for w in self.workers if w.busy is not None]
        if not busy:
            if timeout_s:
                time.sleep(min(timeout_s, 0.005))
            return
        ready = wait([w.connection for w in busy], timeout=timeout_s)
        for w in busy:
            if w.connection in ready:
                t0 = w.received_at
                try:
                    result: FrameResult | FrameFailure = w.result()
                except (EOFError, OSError):
                    result = self._worker_died(w)
                self._finish_frame(result, t0)

    # ---- worker lifecycle -----------------------------------------------------------------
    def _worker_config(self) -> NodeConfig:
        """The config a new worker is built with: the engine and policy the node runs now."""
        import dataclasses

        cfg = self.config
        return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, path=self._engine_path),
                                   triage=self.policy)

    def _new_worker(self, index: int, *, wait: bool) -> Worker:
        return Worker(index, self._build, (self._worker_config(), self._bundle),
                      mmap_threshold=self._mmap_threshold, wait=wait)

    def _worker_died(self, w: Worker) -> FrameFailure:
        """A worker process ended with a frame in it: replace it, and reject that frame."""
        frame = w.busy
        assert frame is not None
        detail = f"worker {w.index} (pid {w.pid}) ended with exit code {w.exitcode} while processing the frame"
        self._replace_dead(w, seq=frame.seq, series=frame.series_id)
        return FrameFailure(frame.seq, frame.series_id, "worker_died", detail)

    def _replace_dead(self, w: Worker, **context: Any) -> None:
        self.counters.workers_died += 1
        log.error("worker.died", worker=w.index, pid=w.pid, exitcode=w.exitcode, **context)
        w.busy = None
        w.close()
        successor = self._replacements.pop(w.index, None)
        if successor is not None:
            successor.close()
        i = self.workers.index(w)
        try:
            self.workers[i] = self._new_worker(w.index, wait=True)
        except AstroEdgeError as exc:
            del self.workers[i]
            self._turn = 0
            log.error("worker.restart_failed", worker=w.index, error=str(exc), workers_left=len(self.workers))
            if not self.workers:
                raise
            return
        self._recycle_at.pop(w.index, None)
        log.warning("worker.restarted", worker=w.index, pid=self.workers[i].pid)

    def _maintain_workers(self) -> None:
        """Replace dead idle workers; replace workers past [node] worker_max_frames by a fresh
        process started beside them and switched in between two frames."""
        limit = self.config.node.worker_max_frames
        shadow_running = self._shadow is not None and not self._shadow["done"]
        for w in list(self.workers):
            if w.busy is None and not w.alive():
                self._replace_dead(w)
                continue
            successor = self._replacements.get(w.index)
            if successor is None:
                due = self._recycle_at.setdefault(w.index, limit)
                if limit and not shadow_running and w.frames_submitted >= due:
                    self._replacements[w.index] = self._new_worker(w.index, wait=False)
                    log.info("worker.recycling", worker=w.index, pid=w.pid, frames=w.frames_submitted)
                continue
            try:
                ready = successor.poll_ready()
            except AstroEdgeError as exc:
                # the old worker goes on; try again after another limit's worth of frames
                del self._replacements[w.index]
                self._recycle_at[w.index] = w.frames_submitted + limit
                log.error("worker.recycle_failed", worker=w.index, error=str(exc))
                continue
            if ready and w.busy is None:
                i = self.workers.index(w)
                self.workers[i] = successor
                del self._replacements[w.index]
                self._recycle_at.pop(w.index, None)
                w.close()
                self.counters.workers_recycled += 1
                log.info("worker.recycled", worker=w.index, old_pid=w.pid, pid=successor.pid,
                         frames=w.frames_submitted)

    def _cancel_replacements(self) -> None:
        """Drop successors still starting: they were built for an engine or policy that is changing."""
        for successor in self._replacements.values():
            successor.close()
        self._replacements.clear()

    def _finish_frame(self, result: FrameResult | FrameFailure, t0: float) -> None:
        c = self.counters
        c.frames_in_flight -= 1
        if isinstance(result, FrameFailure):
            c.frames_rejected += 1
            c.rejected_by_reason[result.reason] = c.rejected_by_reason.get(result.reason, 0) + 1
            log.error("frame.rejected", stage="pipeline", series=result.series_id, seq=result.seq,
                      reason=result.reason, error=result.message)
            return
        s = result.summary
        series_key = f"{s.detector_id}:{s.series_id}"
        done = self._done_set(series_key)
        done.add(s.frame)
        put = self.spool.put([*result.records, s],  # type: ignore[union-attr]
                             checkpoint={f"done:{series_key}": done.to_json()})
        n_dup = sum(1 for i in put.duplicates if i != s.id)
        c.frames_processed += 1
        self._note_shadow(result.shadow)
        c.detections += s.detections
        c.suppressed += s.suppressed
        c.spooled += s.sent
        c.spool_duplicates += n_dup
        c.evicted += len(put.evicted)
        c.latency_ms.append((time.monotonic() - t0) * 1000.0)
        for stage, ms in s.timings_ms.items():
            self._stage_ms.setdefault(stage, deque(maxlen=1000)).append(ms)
        del c.latency_ms[:-1000]
        log.info("frame.processed", series=s.series_id, seq=s.frame, detections=s.detections,
                 sent=s.sent, suppressed=s.suppressed, noise_model=s.noise_model,
                 ms=round(c.latency_ms[-1], 1))

    # ---- control -----------------------------------------------------------------------------
    def handle_command(self, user: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out one operator command; the answer says what changed or what was wrong."""
        log.info("control.command", user=user, command=command, args=args)
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command == "set":
            return self._set_policy(user, args)
        if command in ("pause", "resume"):
            self._paused = command == "pause"
            log.warning(f"node.{command}d", user=user)
            return {"ok": True, "paused": self._paused}
        if command == "flush":
            self._flush.set()
            return {"ok": True, "flush": "a new contact window is open"}
        if command == "engine.load":
            return self._engine_load(user, args)
        if command == "engine.shadow":
            return self._engine_shadow(user, args)
        if command == "engine.rollback":
            return self._engine_rollback(user)
        if command == "shutdown":
            self._shutdown_requested = True
            log.warning("node.shutdown_requested", user=user)
            return {"ok": True, "shutdown": "after the accepted frames are spooled"}
        from edge.node.control import COMMANDS

        return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(COMMANDS)}"}

    def _engine_spec(self, path: str) -> tuple[Any, ...]:
        e = self.config.engine
        return (path, e.backend, e.precision, e.threads, e.batch_size)

    def _engine_load(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        from edge.node.assemble import verify_engine

        path, sha = args.get("path"), args.get("sha256")
        if not isinstance(path, str) or not isinstance(sha, str):
            return {"ok": False, "error": "engine.load needs path and sha256 (of the folder's manifest.json)"}
        try:
            new_id = verify_engine(path, sha, self.config.engine)
            self._swap_workers(self._engine_spec(path))
        except AstroEdgeError as exc:
            log.error("engine.refused", user=user, path=path, reason=exc.reason, error=str(exc),
                      running=self.engine_id)
            return {"ok": False, "error": str(exc), "reason": exc.reason, "engine_id": self.engine_id}
        self._engine_history.append(self._engine_path)
        self._engine_path = path
        log.warning("engine.swapped", user=user, path=path, engine_id=new_id,
                    previous=self._engine_history[-1])
        return {"ok": True, "engine_id": self.engine_id}

    def _engine_shadow(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        from edge.node.assemble import verify_engine

        path, sha, frames = args.get("path"), args.get("sha256"), args.get("frames", 10)
        if (not isinstance(path, str) or not isinstance(sha, str) or isinstance(frames, bool)
                or not isinstance(frames, int) or frames < 1):
            return {"ok": False, "error": "engine.shadow needs path, sha256 and frames (an integer >= 1)"}
        if self._shadow is not None and not self._shadow["done"]:
            return {"ok": False, "error": f"a shadow run of {self._shadow['engine_id']} is under way"}
        try:
            verify_engine(path, sha, self.config.engine)
            shadow_id = self._swap_workers(self._engine_spec(path), shadow=True)
        except AstroEdgeError as exc:
            log.error("engine.refused", user=user, path=path, reason=exc.reason, error=str(exc), shadow=True)
            return {"ok": False, "error": str(exc), "reason": exc.reason, "engine_id": self.engine_id}
        self._shadow = {"engine_id": shadow_id, "path": path, "frames_wanted": frames, "frames": 0,
                        "agree": 0, "detections": 0, "agreement": None, "done": False}
        log.info("engine.shadow_started", user=user, path=path, engine_id=shadow_id, frames=frames)
        return {"ok": True, "shadow": dict(self._shadow)}

    def _note_shadow(self, shadow: tuple[int, int] | None) -> None:
        run = self._shadow
        if run is None or shadow is None or run["done"]:
            return
        run["frames"] += 1
        run["agree"] += shadow[0]
        run["detections"] += shadow[1]
        run["agreement"] = run["agree"] / run["detections"] if run["detections"] else None
        if run["frames"] >= run["frames_wanted"]:
            run["done"] = True
            for w in self.workers:
                w.drop_shadow()
            log.info("engine.shadow_finished", engine_id=run["engine_id"], frames=run["frames"],
                     agreement=run["agreement"])

    def _engine_rollback(self, user: str) -> dict[str, Any]:
        if not self._engine_history:
            return {"ok": False, "error": "no previous engine to roll back to", "engine_id": self.engine_id}
        previous = self._engine_history[-1]
        try:
            self._swap_workers(self._engine_spec(previous))
        except AstroEdgeError as exc:
            log.error("engine.rollback_failed", user=user, reason=exc.reason, error=str(exc))
            return {"ok": False, "error": str(exc), "engine_id": self.engine_id}
        self._engine_history.pop()
        self._engine_path = previous
        log.warning("engine.rolled_back", user=user, path=previous, engine_id=self.engine_id)
        return {"ok": True, "engine_id": self.engine_id}

    def _swap_workers(self, spec: tuple[Any, ...], *, shadow: bool = False) -> str:
        """Switch every worker to ``spec`` between two frames: frames handed out before run on the
        old engine, frames handed out after on the new one; any failure puts the old one back.
        With ``shadow`` the workers load ``spec`` beside the live engine instead."""
        while self._busy():
            self._collect(0.05)
        self._cancel_replacements()
        old = self._engine_spec(self._engine_path)
        for w in self.workers:
            w.begin_swap(spec, shadow=shadow)
        done, failure, new_id = [], None, ""
        for w in self.workers:
            try:
                new_id = w.finish_swap()
                done.append(w)
            except AstroEdgeError as exc:
                failure = failure or exc
        if failure is not None:
            for w in done:
                if shadow:
                    w.drop_shadow()
                else:
                    w.begin_swap(old)
                    w.finish_swap()
            raise failure
        if not shadow:
            self.engine_id = new_id
            for w in self.workers:
                w.engine_id = new_id
        return new_id

    def _set_policy(self, user: str, changes: dict[str, Any]) -> dict[str, Any]:
        import dataclasses

        from edge.config import build_section
        from edge.triage import TriagePolicy

        if "version" in changes or not changes:
            return {"ok": False, "error": "give one or more triage settings; the version is bumped by the node"}
        problems: list[str] = []
        merged = {**{f.name: getattr(self.policy, f.name) for f in dataclasses.fields(TriagePolicy)},
                  **changes, "version": self.policy.version + 1}
        merged["classes_of_interest"] = list(merged["classes_of_interest"])
        new = build_section(TriagePolicy, merged, "triage", problems)
        if problems:
            return {"ok": False, "error": "; ".join(problems)}
        old, self.policy = self.policy, new
        self._cancel_replacements()
        for w in self.workers:
            w.set_policy(new)
        changed = {k: [getattr(old, k), getattr(new, k)] for k in changes}
        log.warning("policy.changed", user=user, version=new.version, changed=changed)
        return {"ok": True, "policy_version": new.version, "changed": changed}

    # ---- downlink thread --------------------------------------------------------------------
    def _downlink_loop(self) -> None:
        cfg = self.config.downlink
        try:
            curve = ((cfg.curve_client_secret_key, cfg.curve_server_public_key)
                     if cfg.curve_client_secret_key else None)
            with Downlink(self.spool, cfg.address, budget_bytes_per_s=cfg.budget_bytes_per_s,  # type: ignore[arg-type]
                          contact_window_bytes=cfg.contact_window_bytes,
                          ack_timeout_s=cfg.ack_timeout_s, curve=curve,
                          compression=cfg.compression) as downlink:
                while not self._stop_downlink.is_set():
                    if self._flush.is_set():
                        self._flush.clear()
                        downlink.open_window(cfg.contact_window_bytes)
                    downlink.pump(poll_ms=50)
                    self.downlink_counters = asdict(downlink.counters())
                if self._drain_s > 0:
                    downlink.drain(self._drain_s)
                self.downlink_counters = asdict(downlink.counters())
        except AstroEdgeError as exc:
            log.error("downlink.failed", reason=exc.reason, error=str(exc))

    # ---- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters of the node, its receiver, spool and downlink, as one JSON-ready dict."""
        spool = self.spool.counters() if self.spool is not None else None
        return {
            "node": self.config.node.id,
            "engine_id": self.engine_id,
            "policy_version": self.policy.version,
            "paused": self._paused,
            "shadow": dict(self._shadow) if self._shadow is not None else None,
            "queue_depth": len(self._queue),
            "worker_frames": [w.frames_submitted for w in self.workers],
            "counters": self.counters.snapshot(),
            "receiver": self.receiver.counters.as_dict() if self.receiver is not None else None,
            "spool": asdict(spool) if spool is not None else None,
            "downlink": self.downlink_counters,
        }

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), default=_jsonable, indent=1), encoding="utf-8")
        os.replace(tmp, self.status_path)


def _filter(header: dict[str, Any]) -> str | None:
    value = header.get("FILTER")
    return str(value) if value is not None else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "items"):
        return dict(obj.items())
    return str(obj)
