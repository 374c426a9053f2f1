"""Engine hot-swap: load a new engine, shadow one beside the live engine, or roll back, always
between two frames.

Before a swap every frame already in a worker is finished (on the old engine); frames handed out
after it run on the new one. Every worker loads the new engine; if any refuses, those that took it
go back to the old one and the node goes on as before. A shadow engine runs beside the live one
on the next ``frames`` frames and reports how often the two agree; its results are never sent.
This module reaches the workers through the pool and lets the daemon finish the frames they hold;
it never reads the receiver or writes the spool itself.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge import errors
from edge.config import EngineSection
from edge.errors import AstroEdgeError, EngineIntegrityError, EngineOriginError
from edge.log import get_logger
from edge.node.assemble import verify_engine
from edge.node.pool import WorkerPool

log = get_logger(__name__)

#: what a worker opens an engine from: (folder, backend, precision, threads, batch size, providers)
EngineSpec = tuple[str, str, str, int, int, tuple[str, ...]]


@dataclass
class ShadowRun:
    """One shadow run: the engine beside the live one, and how often the two agreed so far."""

    engine_id: str
    path: str
    frames_wanted: int
    frames: int = 0
    agree: int = 0                    # detections whose top-1 class both engines agree on
    detections: int = 0
    agreement: float | None = None    # agree / detections
    done: bool = False


class EngineSwap:
    """The engine the workers run, the ones before it, and the shadow run if any."""

    def __init__(self, section: EngineSection, pool: WorkerPool, finish_in_workers: Callable[[], None]) -> None:
        """``finish_in_workers()`` returns once no worker holds a frame (each one finished and spooled)."""
        self.section = section
        self.pool = pool
        self._finish_in_workers = finish_in_workers
        self.engine_id = ""
        self.path = ""                     # the folder the workers run now
        self.history: list[str] = []       # the folders run before, the latest last
        self.shadow: ShadowRun | None = None   # the last shadow run and its agreement

    def root(self) -> Path:
        """The folder engines may come from: ``[engine] root``, else the one holding the first engine."""
        first = self.history[0] if self.history else self.path
        return Path(self.section.root or Path(first).parent).resolve()

    def verify(self, path: str, sha256: str) -> str:
        """Check an engine offered at run time: inside the engine root, then verified (sha256,
        manifest, files, golden stamps) in a child process, so that an engine that crashes its
        runtime is refused instead of taking the node down. Its engine id, or a typed error."""
        folder = Path(path).resolve()
        if not folder.is_relative_to(self.root()):
            raise EngineOriginError(f"{folder} is outside the engine root {self.root()}; copy the engine "
                                    "there (or set [engine] root) to load it", where=path)
        return verify_in_child(str(folder), sha256, self.section)

    @property
    def shadow_running(self) -> bool:
        """Whether a shadow run is under way."""
        return self.shadow is not None and not self.shadow.done

    def shadow_status(self) -> dict[str, Any] | None:
        """The last shadow run, JSON-ready; None when there was none."""
        return asdict(self.shadow) if self.shadow is not None else None

    def load(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        """``engine.load``: check the folder against ``sha256`` and switch every worker to it."""
        path, sha = args.get("path"), args.get("sha256")
        if not isinstance(path, str) or not isinstance(sha, str):
            return {"ok": False, "error": "engine.load needs path and sha256 (of the folder's manifest.json)"}
        try:
            new_id = self.verify(path, sha)
            self._swap_workers(self._spec(path))
        except AstroEdgeError as exc:
            log.error("engine.refused", user=user, path=path, reason=exc.reason, error=str(exc),
                      running=self.engine_id)
            return {"ok": False, "error": str(exc), "reason": exc.reason, "engine_id": self.engine_id}
        self.history.append(self.path)
        self.path = path
        log.warning("engine.swapped", user=user, path=path, engine_id=new_id,
                    previous=self.history[-1])
        return {"ok": True, "engine_id": self.engine_id}

    def start_shadow(self, user: str, args: dict[str, Any]) -> dict[str, Any]:
        """``engine.shadow``: run the folder's engine beside the live one on the next ``frames`` frames."""
        path, sha, frames = args.get("path"), args.get("sha256"), args.get("frames", 10)
        if (not isinstance(path, str) or not isinstance(sha, str) or isinstance(frames, bool)
                or not isinstance(frames, int) or frames < 1):
            return {"ok": False, "error": "engine.shadow needs path, sha256 and frames (an integer >= 1)"}
        if self.shadow is not None and not self.shadow.done:
            return {"ok": False, "error": f"a shadow run of {self.shadow.engine_id} is under way"}
        try:
            self.verify(path, sha)
            shadow_id = self._swap_workers(self._spec(path), shadow=True)
        except AstroEdgeError as exc:
            log.error("engine.refused", user=user, path=path, reason=exc.reason, error=str(exc), shadow=True)
            return {"ok": False, "error": str(exc), "reason": exc.reason, "engine_id": self.engine_id}
        self.shadow = ShadowRun(engine_id=shadow_id, path=path, frames_wanted=frames)
        log.info("engine.shadow_started", user=user, path=path, engine_id=shadow_id, frames=frames)
        return {"ok": True, "shadow": asdict(self.shadow)}

    def note_shadow(self, shadow: tuple[int, int] | None) -> None:
        """Count one finished frame's (agreeing, total) detections into the shadow run; at its
        last frame the workers drop the shadow engine."""
        run = self.shadow
        if run is None or shadow is None or run.done:
            return
        run.frames += 1
        run.agree += shadow[0]
        run.detections += shadow[1]
        run.agreement = run.agree / run.detections if run.detections else None
        if run.frames >= run.frames_wanted:
            run.done = True
            for w in self.pool.workers:
                w.drop_shadow()
            log.info("engine.shadow_finished", engine_id=run.engine_id, frames=run.frames,
                     agreement=run.agreement)

    def rollback(self, user: str) -> dict[str, Any]:
        """``engine.rollback``: switch every worker back to the engine run before this one."""
        if not self.history:
            return {"ok": False, "error": "no previous engine to roll back to", "engine_id": self.engine_id}
        previous = self.history[-1]
        try:
            self._swap_workers(self._spec(previous))
        except AstroEdgeError as exc:
            log.error("engine.rollback_failed", user=user, reason=exc.reason, error=str(exc))
            return {"ok": False, "error": str(exc), "engine_id": self.engine_id}
        self.history.pop()
        self.path = previous
        log.warning("engine.rolled_back", user=user, path=previous, engine_id=self.engine_id)
        return {"ok": True, "engine_id": self.engine_id}

    def _spec(self, path: str) -> EngineSpec:
        e = self.section
        return (path, e.backend, e.precision, e.threads, e.batch_size, e.providers)

    def _swap_workers(self, spec: EngineSpec, *, shadow: bool = False) -> str:
        """Switch every worker to ``spec`` between two frames: frames handed out before run on the
        old engine, frames handed out after on the new one; any failure puts the old one back.
        With ``shadow`` the workers load ``spec`` beside the live engine instead."""
        self._finish_in_workers()
        self.pool.cancel_replacements()
        old = self._spec(self.path)
        for w in self.pool.workers:
            w.begin_swap(spec, shadow=shadow)
        done, failure, new_id = [], None, ""
        for w in self.pool.workers:
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
            for w in self.pool.workers:
                w.engine_id = new_id
        return new_id


def verify_in_child(path: str, sha256: str, section: EngineSection, timeout_s: float = 300.0,
                    verify: Callable[[str, str, Any], str] = verify_engine) -> str:
    """``verify(path, sha256, section)`` in a spawned process; its engine id, or the typed error it
    raised. A child that dies (a native crash in a runtime, killed) or does not answer within
    ``timeout_s`` is an EngineIntegrityError: the engine is refused and the node goes on."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_verify_main, args=(sender, verify, path, sha256, section), daemon=True)
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            proc.kill()
            proc.join(10)
            why = (f"its verification ended with exit code {proc.exitcode}" if proc.exitcode is not None
                   and proc.exitcode != -9 else f"its verification did not finish within {timeout_s:.0f} s")
            raise EngineIntegrityError(f"engine refused: {why}", where=path)
        try:
            kind, *detail = receiver.recv()
        except EOFError:
            proc.join(10)
            raise EngineIntegrityError(f"engine refused: its verification crashed the checking process "
                                       f"(exit code {proc.exitcode})", where=path) from None
    finally:
        receiver.close()
        proc.join(10)
    if kind == "ok":
        return str(detail[0])
    cls = getattr(errors, detail[0], EngineIntegrityError)
    raise cls(detail[1])


def _verify_main(conn: Any, verify: Callable[[str, str, Any], str], path: str, sha256: str, section: Any) -> None:
    try:
        conn.send(("ok", verify(path, sha256, section)))
    except AstroEdgeError as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
