"""The live node: receive frames over ZeroMQ, run the pipeline in worker processes, spool every
record durably, and downlink from the spool.

One frame's path, top-down in this module: :meth:`NodeDaemon.step` takes what arrived off the
receiver into the bounded ingest queue (:mod:`edge.node.ingest`); the worker pool hands queued
frames to idle workers and collects what they finished (:mod:`edge.node.pool`); and
:meth:`NodeDaemon._finish_frame` commits each frame's records to the spool and counts them.
Around that path: engine hot-swap between two frames (:mod:`edge.node.engine_swap`), operator
commands (:mod:`edge.node.commands`), the downlink thread (:mod:`edge.node.forward`) and the
node's figures (:mod:`edge.node.status`).

Threads and processes, each owning its own things:

- the main thread owns the FrameReceiver (PULL socket), the bounded ingest queue and the spool
  writes: a frame's records are acknowledged (counted as spooled) only once ``Spool.put`` has
  committed them;
- ``workers`` processes run :class:`edge.pipeline.Pipeline` (sep holds the GIL, so frames overlap
  across cores only in processes);
- one downlink thread owns the downlink socket and pumps the spool to the ground.

The counters (:mod:`edge.node.counters`) obey, at every moment: frames received = processed +
rejected + dropped + duplicate + in flight, and detections = suppressed + spooled (spooled records
then leave as acked or evicted, or wait).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from edge.config import NodeConfig
from edge.errors import SpoolError, StatusFileError
from edge.link.curve import make_curve_server
from edge.link.spool import Spool
from edge.log import get_logger
from edge.node.allocator import fix_mmap_threshold
from edge.node.assemble import build_pipeline, check_engine_origin, check_engine_runtime, engine_dir
from edge.node.commands import Commands, OperatorState
from edge.node.counters import NodeCounters
from edge.node.done import DoneSet
from edge.node.engine_swap import EngineSwap
from edge.node.forward import Forwarder
from edge.node.health import Health
from edge.node.housekeeping import Housekeeping
from edge.node.ingest import DoneSets, Ingest, SeriesBook
from edge.node.pool import PipelineBuilder, WorkerPool
from edge.node.status import housekeeping_figures, node_status, write_status
from edge.node.supervision import SystemdNotifier
from edge.node.workers import FrameFailure, Worker
from edge.pipeline import FrameResult
from edge.records import FrameSummary
from edge.triage import TriagePolicy
from firmware_bridge import FrameReceiver

if TYPE_CHECKING:
    from edge.node.control import ControlServer

log = get_logger(__name__)


class NodeDaemon:
    """The live node; ``run(should_stop)`` until told to stop, then drain what was accepted."""

    def __init__(self, config: NodeConfig, *, bundle_override: str | None = None,
                 build: PipelineBuilder = build_pipeline, status_path: str | Path | None = None,
                 notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self.counters = NodeCounters()
        self.health = Health()
        self.status_path = Path(status_path) if status_path else None
        self.notifier = notifier or SystemdNotifier(None)
        self.receiver: FrameReceiver | None = None
        self._feed_auth: Any = None        # the frame feed's CURVE authenticator thread, if any
        self.receiver_endpoint = ""
        self.spool: Spool | None = None
        self.control: ControlServer | None = None
        self.housekeeping: Housekeeping | None = None
        self.operator = OperatorState(config.triage)
        self.done = DoneSets(self._read_checkpoint)   # finished frames per series, mirrored in the spool
        self.ingest = Ingest(config.receive, self.counters, self.done,
                             SeriesBook(self._read_checkpoint, self._write_checkpoint))
        self.pool = WorkerPool(config.node, build, bundle_override, self.counters, self._worker_config)
        self.engines = EngineSwap(config.engine, self.pool, self._finish_in_workers)
        self.forwarder = Forwarder(config.downlink, self.health)
        self.commands = Commands(self.operator, pool=self.pool, engines=self.engines,
                                 forwarder=self.forwarder, status=self.status)
        self._stage_ms: dict[str, deque[float]] = {}   # per-stage timings of the last 1000 frames
        self._last_ping = (0.0, -1)        # (monotonic time, frames finished) at the last watchdog ping

    @property
    def workers(self) -> list[Worker]:
        """The worker processes, one frame in flight each at most."""
        return self.pool.workers

    @property
    def engine_id(self) -> str:
        """The engine every worker runs now."""
        return self.engines.engine_id

    @property
    def policy(self) -> TriagePolicy:
        """The triage policy frames handed out from now on are triaged with."""
        return self.operator.policy

    @property
    def downlink_counters(self) -> dict[str, Any]:
        """The downlink's counters as its thread last reported them."""
        return self.forwarder.counters

    # ---- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        """Open the spool, start the workers (each builds and checks the pipeline), bind the receiver."""
        cfg = self.config
        fix_mmap_threshold(self.pool.mmap_threshold)
        # what this environment can run, logged and checked once before any worker starts
        check_engine_runtime(cfg.engine)
        check_engine_origin(engine_dir(cfg), cfg.engine)
        self.spool = Spool(cfg.spool.path, max_bytes=cfg.spool.max_bytes)
        try:
            self.pool.start(cfg)
            self.engines.engine_id = self.pool.workers[0].engine_id
            self.engines.path = str(engine_dir(cfg))
            self.receiver = FrameReceiver(cfg.receive.address, bind=cfg.receive.bind,
                                          rcvhwm=max(2, cfg.receive.queue_frames),
                                          max_frame_bytes=cfg.receive.max_frame_bytes,
                                          max_compression_ratio=cfg.receive.max_compression_ratio,
                                          setup=self._feed_curve)
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
        self.forwarder.start(self.spool)
        if not cfg.downlink.curve_client_secret_key:
            log.warning("downlink.insecure", address=cfg.downlink.address,
                        detail="CURVE is off on the downlink: records leave unencrypted and unauthenticated")
        log.info("node.started", node=cfg.node.id, workers=len(self.workers), engine=self.engine_id,
                 receive=self.receiver_endpoint, downlink=cfg.downlink.address, spool=str(cfg.spool.path),
                 queue_policy=cfg.receive.queue_policy)

    def _feed_curve(self, sock: zmq.Socket[Any]) -> None:
        """CURVE on the frame feed when [receive] names the keys; else a warning, like the downlink's."""
        rc = self.config.receive
        if not rc.curve_server_secret_key:
            log.warning("receive.insecure", address=rc.address,
                        detail="CURVE is off on the frame feed: any peer that reaches the port may send frames")
            return
        self._feed_auth = make_curve_server(zmq.Context.instance(), sock, rc.curve_server_secret_key,
                                            rc.allowed_daq_keys, "receive")

    def close(self, drain_s: float = 0.0) -> None:
        """Stop the workers and the downlink (after up to ``drain_s`` of sending), close everything."""
        self.forwarder.stop(drain_s)
        self.pool.close()
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None
        if self._feed_auth is not None:
            self._feed_auth.stop()
            self._feed_auth = None
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

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], *, status_every_s: float = 1.0) -> NodeCounters:
        """Receive and process until ``should_stop()``; then finish every accepted frame."""
        now = time.monotonic()
        next_status = now + status_every_s
        # systemd asks for a ping every half watchdog period; the status period is usually shorter
        ping_every_s = min(status_every_s, self.notifier.watchdog_interval_s or status_every_s)
        next_ping = now + ping_every_s
        next_hk = now + self.config.housekeeping.interval_s
        self.notifier.notify("READY=1", f"STATUS=receiving on {self.receiver_endpoint}, engine {self.engine_id}")
        while not should_stop() and not self.operator.shutdown_requested:
            self.step()
            now = time.monotonic()
            if now >= next_status:
                self._write_status()
                next_status = now + status_every_s
            if now >= next_ping:
                self._watchdog(now)
                next_ping = now + ping_every_s
            if self.housekeeping is not None and now >= next_hk:
                self.housekeeping.publish(self.housekeeping_figures())
                next_hk = now + self.config.housekeeping.interval_s
        self.notifier.notify("STOPPING=1", "STATUS=finishing the accepted frames")
        self.finish()
        log.info("node.stopped", **{k: v for k, v in self.counters.snapshot().items() if k != "dropped_seqs"})
        return self.counters

    def step(self, timeout_ms: int = 20) -> None:
        """One turn: take what arrived, hand frames to idle workers, spool what they finished."""
        if self.control is not None:
            for req in self.control.poll():
                self.control.reply(req.identity, self.handle_command(req.user, req.command, req.args))
        # with the ``block`` policy a full queue takes nothing: the DAQ waits on the socket instead
        receiving = self.ingest.has_room() or not self.ingest.blocks
        if self.operator.paused:
            time.sleep(timeout_ms / 1000)
        elif receiving:
            assert self.receiver is not None, "start() the node before stepping it"
            if self.pool.busy():
                # sleep until a frame or a command arrives or a worker finishes, not in a spin
                self._wait_any(self.receiver, timeout_ms)
                self.ingest.receive(self.receiver, 0)
            else:
                self.ingest.receive(self.receiver, timeout_ms)
        self.pool.dispatch(self.ingest)
        self._collect(0 if receiving else timeout_ms / 1000)
        self.pool.maintain(may_recycle=not self.engines.shadow_running)
        if self.receiver is not None:
            self.ingest.watch_daq(self.receiver, self.health, self.receiver_endpoint)

    def finish(self) -> None:
        """Process every frame already accepted (queue and workers) and spool its records."""
        while self.ingest.queue or self.pool.busy():
            self.pool.dispatch(self.ingest)
            self._collect(0.05)
            self.pool.maintain(may_recycle=not self.engines.shadow_running)

    def _wait_any(self, receiver: FrameReceiver, timeout_ms: int) -> None:
        poller = zmq.Poller()
        poller.register(receiver.socket, zmq.POLLIN)
        if self.control is not None:
            poller.register(self.control.socket, zmq.POLLIN)
        for w in self.workers:
            if w.busy is not None:
                poller.register(w.connection.fileno(), zmq.POLLIN)
        poller.poll(timeout_ms)

    def _collect(self, timeout_s: float) -> None:
        for result, received_at in self.pool.collect(timeout_s):
            self._finish_frame(result, received_at)

    def _finish_in_workers(self) -> None:
        """Finish and spool every frame the workers hold (the queue waits)."""
        while self.pool.busy():
            self._collect(0.05)

    def _finish_frame(self, result: FrameResult | FrameFailure, received_at: float) -> None:
        """Count a rejected frame; commit a processed one's records, summary and finished-frame
        set to the spool in one transaction, then count it."""
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
        done = self.done.of(series_key)
        # the frame counts as finished only once its records are durable: a frame the spool could
        # not keep is processed again when the DAQ sends it again
        finished = DoneSet.from_json(done.to_json())
        finished.add(s.frame)
        try:
            put = self.spool.put([*result.records, s],  # type: ignore[union-attr]
                                 checkpoint={DoneSets.key(series_key): finished.to_json()})
        except SpoolError as exc:
            self._spool_failed(s, exc)
            return
        done.add(s.frame)
        self.health.ok("spool")
        n_dup = sum(1 for i in put.duplicates if i != s.id)
        self.engines.note_shadow(result.shadow)
        c.add_frame(s, duplicates=n_dup, evicted=len(put.evicted),
                    latency_ms=(time.monotonic() - received_at) * 1000.0)
        for stage, ms in s.timings_ms.items():
            self._stage_ms.setdefault(stage, deque(maxlen=1000)).append(ms)
        if self.housekeeping is not None:
            self.housekeeping.observe(c.latency_ms[-1], s.timings_ms)
        log.info("frame.processed", series=s.series_id, seq=s.frame, detections=s.detections,
                 sent=s.sent, suppressed=s.suppressed, noise_model=s.noise_model,
                 ms=round(c.latency_ms[-1], 1))
        if s.capped:
            log.warning("frame.capped", series=s.series_id, seq=s.frame, detections=s.detections,
                        sent=s.sent, capped=s.capped,
                        detail="more detections asked to be sent than [triage] max_records_per_frame; "
                               "the highest priorities were sent, the summary counts the rest")

    def _spool_failed(self, s: FrameSummary, exc: SpoolError) -> None:
        """A frame whose records the spool could not keep (disk full, I/O error, read-only): the
        node goes on degraded; the frame counts as dropped, and the next summary names it."""
        c = self.counters
        c.frames_dropped += 1
        c.dropped_seqs.append(s.frame)
        # the lost summary named earlier drops too: they ride in the next summary with this frame
        for seq in (*s.dropped_frames, s.frame):
            self.ingest.note_dropped(seq)
        self.health.degraded("spool", exc)
        log.warning("frame.dropped", stage="spool", series=s.series_id, seq=s.frame, records=s.sent,
                    error=str(exc))

    def _read_checkpoint(self, key: str) -> str | None:
        return self.spool.checkpoint(key) if self.spool is not None else None

    def _write_checkpoint(self, key: str, value: str) -> None:
        """Store one checkpoint on its own (a series' run); a failing disk leaves it in memory only."""
        if self.spool is None:
            return
        try:
            self.spool.put([], checkpoint={key: value})
        except SpoolError as exc:
            self.health.degraded("spool", exc)

    def _worker_config(self) -> NodeConfig:
        """The config a new worker is built with: the engine and policy the node runs now."""
        cfg = self.config
        return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, path=self.engines.path),
                                   triage=self.operator.policy)

    # ---- supervision, control and figures ---------------------------------------------------
    def _watchdog(self, now: float) -> None:
        """Ping systemd's watchdog only while the node makes progress: the downlink thread goes
        round its loop, no worker holds a frame past its deadline, and frames were finished since
        the last ping (or there are none to do). No ping, and systemd restarts the node."""
        c = self.counters
        stuck = [] if self.forwarder.alive() else ["downlink"]
        if self.pool.oldest_frame_s() > self.config.node.frame_deadline_s:
            stuck.append("worker")
        if stuck:
            if self._last_ping[1] != -2:
                log.error("watchdog.withheld", stuck=stuck, detail="no progress: the watchdog is not pinged")
                self._last_ping = (self._last_ping[0], -2)
            return
        finished = c.frames_processed + c.frames_rejected
        idle = not self.ingest.queue and not self.pool.busy()
        if finished != self._last_ping[1] or idle:
            self.notifier.notify("WATCHDOG=1", f"STATUS=frames {finished} finished, {c.frames_dropped} dropped, "
                                 f"queue {len(self.ingest)}, engine {self.engine_id}, policy {self.policy.version}")
            self._last_ping = (now, finished)

    def handle_command(self, user: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out one operator command; the answer says what changed or what was wrong."""
        return self.commands.handle(user, command, args)

    def status(self) -> dict[str, Any]:
        """Counters of the node, its receiver, spool and downlink, as one JSON-ready dict."""
        return node_status(self.config.node.id, self.counters, engines=self.engines, operator=self.operator,
                           ingest=self.ingest, pool=self.pool, receiver=self.receiver, spool=self.spool,
                           downlink=self.forwarder.counters, health=self.health)

    def housekeeping_figures(self) -> dict[str, Any]:
        """status() plus per-stage latency p50/p99, spool age and the process's CPU, memory and GPU figures."""
        return housekeeping_figures(self.status(), self._stage_ms, self.spool)

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        try:
            write_status(self.status_path, self.status())
        except OSError as exc:   # a full or failing disk under the status file: the node goes on
            self.health.degraded("status_file", StatusFileError(f"cannot write the status file: {exc}",
                                                                where=str(self.status_path)))
            return
        self.health.ok("status_file")
