"""Pipeline worker processes: the stages of one frame run in a process of their own, so that
frames overlap on every core (sep holds the GIL; threads would serialise on it).

The parent copies each frame's pixels once into the worker's shared-memory slot and sends the
frame's metadata through a pipe; the worker runs :class:`edge.pipeline.Pipeline` and sends back
the :class:`edge.pipeline.FrameResult` or the typed error that rejected the frame. A worker owns
no socket and no file but its calibration bundle and engine; the parent owns the spool.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from edge.errors import AstroEdgeError, EngineError
from edge.log import get_logger
from edge.pipeline import FrameInput, FrameResult

log = get_logger(__name__)


@dataclass(frozen=True)
class FrameFailure:
    """A frame the pipeline rejected: the error's reason and message."""

    seq: int
    series_id: str
    reason: str
    message: str


def _attach(name: str) -> SharedMemory:
    # spawned children share the parent's resource tracker, and the parent unlinks the segment:
    # the child only maps it
    return SharedMemory(name=name)


def _worker_main(conn: Connection, build: Any, build_args: tuple[Any, ...], mmap_threshold: int = 0) -> None:
    """Run in the child: build the pipeline once, then process frames until told to stop."""
    from edge.log import configure
    from edge.node.allocator import fix_mmap_threshold

    configure(json=True, level="warning")
    fix_mmap_threshold(mmap_threshold)
    try:
        pipeline = build(*build_args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which refuses to start
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", pipeline.engine.engine_id))
    slot: SharedMemory | None = None
    while True:
        msg = conn.recv()
        kind = msg[0]
        if kind == "stop":
            break
        if kind == "policy":
            # a new triage policy: frames sent after this message use it (no reply)
            pipeline.policy = msg[1]
            continue
        if kind == "shadow":
            # load an engine to run beside the live one (answered), or drop it (None: no answer)
            if msg[1] is None:
                if pipeline.shadow is not None:
                    pipeline.shadow.deactivate()
                pipeline.shadow = None
                continue
            try:
                from edge.node.assemble import open_engine
                from engines.stamps import RECIPES

                shadow = open_engine(*msg[1])
                shadow.manifest.check_normalisation(tuple(RECIPES))
                pipeline.shadow = shadow
                conn.send(("engine_ok", shadow.engine_id))
            except Exception as exc:  # noqa: BLE001 - the live engine is untouched
                conn.send(("engine_failed", f"{type(exc).__name__}: {exc}"))
            continue
        if kind == "engine":
            new_engine = msg[1]
            try:
                pipeline = _swap(pipeline, new_engine)
                conn.send(("engine_ok", pipeline.engine.engine_id))
            except Exception as exc:  # noqa: BLE001 - the old engine keeps running
                conn.send(("engine_failed", f"{type(exc).__name__}: {exc}"))
            continue
        _, slot_name, shape, dtype, frame, dropped = msg
        if slot is None or slot.name != slot_name:
            if slot is not None:
                slot.close()
            slot = _attach(slot_name)
        pixels = np.ndarray(shape, dtype=np.dtype(dtype), buffer=slot.buf)
        try:
            result: FrameResult | FrameFailure = pipeline.process(replace(frame, pixels=pixels),
                                                                  dropped_frames=dropped)
        except AstroEdgeError as exc:
            result = FrameFailure(frame.seq, frame.series_id, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad frame must never take the node down
            result = FrameFailure(frame.seq, frame.series_id, "internal",
                                  f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        del pixels
        conn.send(("result", result))
    if slot is not None:
        slot.close()


def _swap(pipeline: Any, engine_spec: Any) -> Any:
    from edge.node.assemble import open_engine
    from engines.stamps import RECIPES

    engine = open_engine(*engine_spec)
    engine.manifest.check_normalisation(tuple(RECIPES))
    old = pipeline.engine
    pipeline.engine = engine
    old.deactivate()
    return pipeline


class Worker:
    """One pipeline process, its pipe and its shared-memory slot; one frame in flight at most."""

    def __init__(self, index: int, build: Any, build_args: tuple[Any, ...], *, start_timeout_s: float = 120.0,
                 mmap_threshold: int = 0, wait: bool = True) -> None:
        """Start the process; with ``wait`` (the default) return once it has built its pipeline,
        otherwise at once (then :meth:`poll_ready` says when it is ready)."""
        ctx = mp.get_context("spawn")
        self.index = index
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child, build, build_args, mmap_threshold),
                                 name=f"astro-edge-worker-{index}", daemon=True)
        self._proc.start()
        self.started_at = time.monotonic()
        child.close()
        self._slot: SharedMemory | None = None
        self.busy: FrameInput | None = None
        #: frames handed to this worker since it started
        self.frames_submitted = 0
        #: monotonic time the busy frame was received, for the node's latency figures, and handed over
        self.received_at = 0.0
        self.submitted_at = 0.0
        self.engine_id = ""
        self.ready = False
        if wait:
            if not self._conn.poll(start_timeout_s):
                self.close()
                raise EngineError(f"worker {index} did not start within {start_timeout_s:.0f} s", where="workers")
            self._take_ready()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def poll_ready(self) -> bool:
        """Whether a worker started with ``wait=False`` has built its pipeline; EngineError (and
        the worker closed) when it could not or its process ended."""
        if self.ready:
            return True
        if self._conn.poll(0):
            self._take_ready()
            return True
        if not self._proc.is_alive():
            self.close()
            raise EngineError(f"worker {self.index} exited (code {self._proc.exitcode}) before it was ready",
                              where="workers")
        return False

    def _take_ready(self) -> None:
        try:
            status, detail = self._conn.recv()
        except (EOFError, OSError):
            self.close()
            raise EngineError(f"worker {self.index} exited (code {self._proc.exitcode}) before it was ready",
                              where="workers") from None
        if status != "ready":
            self.close()
            raise EngineError(f"worker {self.index} could not build the pipeline: {detail}", where="workers")
        self.engine_id = str(detail)
        self.ready = True

    @property
    def connection(self) -> Connection:
        return self._conn

    def submit(self, frame: FrameInput, dropped: tuple[int, ...], *, received_at: float = 0.0) -> None:
        """Copy the frame's pixels into this worker's slot and start it."""
        pixels = np.ascontiguousarray(frame.pixels)
        nbytes = max(pixels.nbytes, 1)
        if self._slot is None or self._slot.size < nbytes:
            if self._slot is not None:
                self._slot.close()
                self._slot.unlink()
            self._slot = SharedMemory(create=True, size=nbytes)
        view = np.ndarray(pixels.shape, dtype=pixels.dtype, buffer=self._slot.buf)
        view[...] = pixels
        del view
        meta = replace(frame, pixels=np.empty(0, pixels.dtype))
        self._conn.send(("frame", self._slot.name, pixels.shape, pixels.dtype.str, meta, dropped))
        self.busy = frame
        self.received_at = received_at
        self.submitted_at = time.monotonic()
        self.frames_submitted += 1

    def result(self) -> FrameResult | FrameFailure:
        """The finished frame's result (call when the connection is readable)."""
        kind, payload = self._conn.recv()
        if kind != "result":
            raise EngineError(f"worker {self.index} answered {kind!r} where a result was due", where="workers")
        self.busy = None
        return payload

    def set_policy(self, policy: Any) -> None:
        """Frames submitted after this call are triaged with ``policy``."""
        self._conn.send(("policy", policy))

    def begin_swap(self, engine_spec: tuple[Any, ...], *, shadow: bool = False) -> None:
        """Ask this idle worker to load another engine (it keeps the old one if that fails); with
        ``shadow`` the new engine runs beside the live one instead of replacing it."""
        if self.busy is not None:
            raise EngineError(f"worker {self.index} is busy; swap engines between frames", where="workers")
        self._conn.send(("shadow" if shadow else "engine", engine_spec))

    def drop_shadow(self) -> None:
        """Frames submitted after this call run without the shadow engine (no answer comes)."""
        self._conn.send(("shadow", None))

    def finish_swap(self, timeout_s: float = 120.0) -> str:
        """Wait for the swap begun by :meth:`begin_swap`; the new engine id, or EngineError."""
        if not self._conn.poll(timeout_s):
            raise EngineError(f"worker {self.index} did not load the engine within {timeout_s:.0f} s", where="workers")
        kind, detail = self._conn.recv()
        if kind != "engine_ok":
            raise EngineError(f"worker {self.index} refused the engine: {detail}", where="workers")
        return str(detail)

    def alive(self) -> bool:
        return self._proc.is_alive()

    def kill(self) -> None:
        """End the process at once (SIGKILL): it is hung, so it would not read a stop message."""
        self._proc.kill()
        self._proc.join(10.0)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the process and free the slot."""
        try:
            if self._proc.is_alive():
                self._conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout_s)
        self._conn.close()
        if self._slot is not None:
            self._slot.close()
            self._slot.unlink()
            self._slot = None
