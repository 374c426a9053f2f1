"""The worker pool: hand queued frames to idle worker processes in turn, collect what they
finish, and keep the pool whole.

A worker whose process ended is replaced (and the frame it held is rejected as ``worker_died``);
a worker past ``[node] worker_max_frames`` frames is recycled: its successor starts beside it,
takes no frame until ready, and is switched in between two frames, so the pool never shrinks
while a successor builds its pipeline. This module owns the worker processes; it never reads
the receiver or writes the spool (the daemon finishes every collected frame).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any

from edge.config import NodeConfig, NodeSection
from edge.errors import AstroEdgeError
from edge.log import get_logger
from edge.node.counters import NodeCounters
from edge.node.ingest import Ingest
from edge.node.workers import FrameFailure, Worker
from edge.pipeline import FrameResult, Pipeline
from edge.triage import TriagePolicy

log = get_logger(__name__)

#: a worker that dies within this many seconds of its start continues a crash streak
RESTART_STREAK_S = 60.0
#: the longest delay before restarting a worker on a crash streak
RESTART_DELAY_MAX_S = 30.0

#: builds a worker's pipeline from the node config and the calibration bundle override; it runs
#: in the worker process, so it must be importable there (a module-level function)
PipelineBuilder = Callable[[NodeConfig, "str | None"], Pipeline]


class WorkerPool:
    """``[node] workers`` pipeline processes, their successors while they are recycled, and whose
    turn it is to be offered the next frame."""

    def __init__(self, section: NodeSection, build: PipelineBuilder, bundle: str | None,
                 counters: NodeCounters, config_now: Callable[[], NodeConfig]) -> None:
        """``config_now()``: the config a worker started later is built with (the engine and
        triage policy the node runs at that moment)."""
        self.section = section
        self.counters = counters
        self._build = build
        self._bundle = bundle
        self._config_now = config_now
        self.mmap_threshold = section.mmap_threshold_kib * 1024
        self.workers: list[Worker] = []
        self.replacements: dict[int, Worker] = {}   # worker index -> its successor, starting
        self._recycle_at: dict[int, int] = {}        # worker index -> frames at which to replace it
        self._turn = 0                               # the worker that is offered the next frame first
        self._deaths: dict[int, int] = {}            # worker index -> deaths in a row, each soon after its start
        self.restart_at: dict[int, float] = {}       # worker index -> monotonic time its restart is due

    def start(self, config: NodeConfig) -> None:
        """Start every worker and wait until each has built (and checked) its pipeline."""
        # appended one by one, so that when worker k fails to start, close() still stops 0..k-1
        for i in range(self.section.workers):
            self.workers.append(Worker(i, self._build, (config, self._bundle), mmap_threshold=self.mmap_threshold))

    def close(self) -> None:
        """Stop every worker and every successor still starting."""
        for w in [*self.workers, *self.replacements.values()]:
            w.close()
        self.workers = []
        self.replacements = {}
        self.restart_at = {}

    def busy(self) -> bool:
        """Whether any worker holds a frame."""
        return any(w.busy is not None for w in self.workers)

    def dispatch(self, ingest: Ingest) -> None:
        """Hand queued frames to the idle workers, in turn."""
        # idle workers take frames in turn, so each meets every kind of frame early (and grows to
        # its full size during warm-up) instead of the first worker taking nearly all at low rates
        n = len(self.workers)
        for k in range(n):
            if not ingest.queue:
                return
            i = (self._turn + k) % n
            w = self.workers[i]
            successor = self.replacements.get(w.index)
            # a worker whose successor is ready takes no more frames: it is switched out when idle
            if w.busy is None and not (successor is not None and successor.ready) and w.alive():
                frame, received_at, drops = ingest.take()
                w.submit(frame, drops, received_at=received_at)
                self._turn = (i + 1) % n

    def collect(self, timeout_s: float) -> Iterator[tuple[FrameResult | FrameFailure, float]]:
        """Each frame a worker has finished (waiting up to ``timeout_s`` for the first), with the
        monotonic time it was received; a worker that died holding a frame is replaced and its
        frame comes back as a ``worker_died`` failure. Yields each as soon as it is read."""
        now = time.monotonic()
        for w in [w for w in self.workers if w.busy is not None]:
            if now - w.submitted_at > self.section.frame_deadline_s and not w.connection.poll(0):
                yield self._worker_hung(w, now - w.submitted_at), w.received_at
        busy = [w for w in self.workers if w.busy is not None]
        if not busy:
            if timeout_s:
                time.sleep(min(timeout_s, 0.005))
            return
        ready = wait([w.connection for w in busy], timeout=timeout_s)
        for w in busy:
            if w.connection in ready:
                received_at = w.received_at
                try:
                    result: FrameResult | FrameFailure = w.result()
                except (EOFError, OSError):
                    result = self._worker_died(w)
                yield result, received_at

    def maintain(self, *, may_recycle: bool = True) -> None:
        """Restart the workers whose delayed restart is due; replace dead idle workers; replace
        workers past [node] worker_max_frames by a fresh process started beside them and switched
        in between two frames. ``may_recycle=False`` starts no successor (one would not carry a
        shadow engine now loaded)."""
        now = time.monotonic()
        for index, due in sorted(self.restart_at.items()):
            if now >= due:
                del self.restart_at[index]
                self._restart(index)
        limit = self.section.worker_max_frames
        for w in list(self.workers):
            if w.busy is None and not w.alive():
                self._replace_dead(w)
                continue
            successor = self.replacements.get(w.index)
            if successor is None:
                due = self._recycle_at.setdefault(w.index, limit)
                if limit and may_recycle and w.frames_submitted >= due:
                    self.replacements[w.index] = self._new_worker(w.index, wait=False)
                    log.info("worker.recycling", worker=w.index, pid=w.pid, frames=w.frames_submitted)
                continue
            try:
                ready = successor.poll_ready()
            except AstroEdgeError as exc:
                # the old worker goes on; try again after another limit's worth of frames
                del self.replacements[w.index]
                self._recycle_at[w.index] = w.frames_submitted + limit
                log.error("worker.recycle_failed", worker=w.index, error=str(exc))
                continue
            if ready and w.busy is None:
                i = self.workers.index(w)
                self.workers[i] = successor
                del self.replacements[w.index]
                self._recycle_at.pop(w.index, None)
                w.close()
                self.counters.workers_recycled += 1
                log.info("worker.recycled", worker=w.index, old_pid=w.pid, pid=successor.pid,
                         frames=w.frames_submitted)

    def cancel_replacements(self) -> None:
        """Drop successors still starting: they were built for an engine or policy that is changing."""
        for successor in self.replacements.values():
            successor.close()
        self.replacements.clear()

    def set_policy(self, policy: TriagePolicy) -> None:
        """Frames submitted from now on are triaged with ``policy`` (successors starting are dropped)."""
        self.cancel_replacements()
        for w in self.workers:
            w.set_policy(policy)

    def _new_worker(self, index: int, *, wait: bool) -> Worker:
        return Worker(index, self._build, (self._config_now(), self._bundle),
                      mmap_threshold=self.mmap_threshold, wait=wait)

    def _worker_died(self, w: Worker) -> FrameFailure:
        """A worker process ended with a frame in it: replace it, and reject that frame."""
        frame = w.busy
        assert frame is not None
        detail = f"worker {w.index} (pid {w.pid}) ended with exit code {w.exitcode} while processing the frame"
        self._replace_dead(w, seq=frame.seq, series=frame.series_id)
        return FrameFailure(frame.seq, frame.series_id, "worker_died", detail)

    def _worker_hung(self, w: Worker, held_s: float) -> FrameFailure:
        """A worker held its frame past [node] frame_deadline_s: kill it, replace it, reject the frame."""
        frame = w.busy
        assert frame is not None
        log.error("worker.hung", worker=w.index, pid=w.pid, seq=frame.seq, series=frame.series_id,
                  held_s=round(held_s, 1), deadline_s=self.section.frame_deadline_s)
        w.kill()
        detail = (f"worker {w.index} (pid {w.pid}) held the frame {held_s:.1f} s, past [node] "
                  f"frame_deadline_s = {self.section.frame_deadline_s:g}; it was killed and replaced")
        self._replace_dead(w, seq=frame.seq, series=frame.series_id)
        return FrameFailure(frame.seq, frame.series_id, "frame_timeout", detail)

    def oldest_frame_s(self) -> float:
        """How long the busy worker that has held its frame longest has held it (0: none busy)."""
        now = time.monotonic()
        return max((now - w.submitted_at for w in self.workers if w.busy is not None), default=0.0)

    def _replace_dead(self, w: Worker, **context: Any) -> None:
        self.counters.workers_died += 1
        log.error("worker.died", worker=w.index, pid=w.pid, exitcode=w.exitcode, **context)
        w.busy = None
        w.close()
        successor = self.replacements.pop(w.index, None)
        if successor is not None:
            successor.close()
        self.workers.remove(w)
        self._turn = 0
        # a worker that dies soon after its start, again and again (a frame or an engine that
        # kills it, a machine out of memory), is restarted after 0.5 s, 1 s, 2 s ... 30 s at most
        soon = time.monotonic() - w.started_at < RESTART_STREAK_S
        streak = self._deaths[w.index] = self._deaths.get(w.index, 0) + 1 if soon else 1
        delay_s = 0.0 if streak <= 1 else min(RESTART_DELAY_MAX_S, 0.5 * 2 ** (streak - 2))
        if delay_s:
            self.restart_at[w.index] = time.monotonic() + delay_s
            log.warning("worker.restart_delayed", worker=w.index, delay_s=delay_s, deaths_in_a_row=streak)
            return
        self._restart(w.index)

    def _restart(self, index: int) -> None:
        try:
            worker = self._new_worker(index, wait=True)
        except AstroEdgeError as exc:
            log.error("worker.restart_failed", worker=index, error=str(exc), workers_left=len(self.workers))
            if not self.workers and not self.restart_at:
                raise
            return
        self.workers.append(worker)
        self.workers.sort(key=lambda w: w.index)
        self._recycle_at.pop(index, None)
        log.warning("worker.restarted", worker=index, pid=worker.pid)
