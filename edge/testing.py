"""Test helpers for nodes: a ground station and a DAQ on loopback TCP, and synthetic frames.

``Ground`` is a real ``GroundReceiver`` bound on tcp://127.0.0.1 at a free port, serving in a
thread of its own (or a process of its own) that owns its socket, and reading back what it
stored. ``LoopbackDaq`` is a real ``FrameSender`` in a thread of its own that sends frames to a
node as one series and hands the sender's counters, and whatever stopped it, back to the caller.
Both speak the real protocols over real sockets, so the node under test cannot tell them from a
detector and a ground station. Users, our tests, the benchmarks and ``astro-edge demo`` use them.

The node never imports this module: nothing here runs in flight.
"""

from __future__ import annotations

import pickle
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge.codec import read_jsonl
from edge.errors import GroundStoreError
from edge.ground.receiver import FRAMES_NAME, RECORDS_NAME, GroundCounters, GroundReceiver
from edge.log import configure
from edge.records import DownlinkRecord, FrameSummary
from firmware_bridge.rig import FrameSource, twin_source
from firmware_bridge.sender import FrameSender, SenderCounters

if TYPE_CHECKING:
    from twin import TwinConfig, TwinFrame

__all__ = ["DETECTOR_ID", "Ground", "LoopbackDaq", "every_family_twin_config", "synthetic_frame", "synthetic_frames",
           "twin_source"]

#: the detector id in the headers the loopback DAQ sends
DETECTOR_ID = "twin-cam"
#: how long a ground may take to bind (a process of its own imports the package first) and to stop
GROUND_WAIT_S = 60.0
#: how long the loopback DAQ waits for a gate to open before it gives up with TimeoutError
GATE_WAIT_S = 120.0
_POLL_MS = 20


class Ground:
    """A ground station for tests: a ``GroundReceiver`` on tcp://127.0.0.1 (a free port) that
    writes under ``out_dir`` and serves in a thread of its own, or with ``own_process=True`` in a
    process of its own (its memory and CPU are then not the caller's; it logs warnings as JSON
    lines to stderr). A failure of the receiver is raised by the constructor or by ``close()``.
    """

    def __init__(self, out_dir: str | Path, *, own_process: bool = False) -> None:
        self.out_dir = Path(out_dir)
        #: the receiver's counters once it is closed (its last FITS write included)
        self.counters: GroundCounters | None = None
        self._closed = False
        self._runner: Any
        if own_process:
            import multiprocessing

            spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of our threads
            self._stop: Any = spawn.Event()
            self._replies: Any = spawn.Queue()
            self._runner = spawn.Process(target=_serve, name="ground", daemon=True,
                                         args=(str(self.out_dir), self._stop, self._replies, True))
        else:
            self._stop = threading.Event()
            self._replies = queue.Queue()
            self._runner = threading.Thread(target=_serve, name="ground", daemon=True,
                                            args=(str(self.out_dir), self._stop, self._replies, False))
        self._runner.start()
        try:
            #: the address a node's ``[downlink] address`` points at
            self.address: str = self._reply()
        except BaseException:
            self._closed = True
            self._stop.set()
            self._runner.join(5)
            raise

    def _reply(self) -> Any:
        """The runner's next word (its address, then its counters); raise the error it sent."""
        deadline = time.monotonic() + GROUND_WAIT_S
        while True:
            try:
                reply = self._replies.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._runner.is_alive() and self._replies.empty():
                    raise ChildProcessError(f"the ground ended before it answered (exit code "
                                            f"{getattr(self._runner, 'exitcode', None)})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the ground did not answer within {GROUND_WAIT_S:.0f} s") from None
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def records(self) -> list[DownlinkRecord]:
        """The records stored so far, read back from the ground's ``downlink.jsonl``."""
        return [m for m in self._read(RECORDS_NAME) if isinstance(m, DownlinkRecord)]

    def summaries(self) -> list[FrameSummary]:
        """The frame summaries stored so far, read back from the ground's ``frames.jsonl``."""
        return [m for m in self._read(FRAMES_NAME) if isinstance(m, FrameSummary)]

    def _read(self, name: str) -> tuple[Any, ...]:
        path = self.out_dir / name
        return read_jsonl(path).messages if path.exists() else ()

    def close(self) -> None:
        """Stop serving and close the receiver (it writes its FITS table); fills ``counters``.
        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            self.counters = self._reply()
        finally:
            self._runner.join(GROUND_WAIT_S)

    def __enter__(self) -> Ground:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _serve(out_dir: str, stop: Any, replies: Any, own_process: bool) -> None:
    """The ground's life in its thread or process: bind, send the address, serve until told to
    stop, close, send the counters; or send the error that ended it."""
    if own_process:
        configure(json=True, level="warning", stream=sys.stderr)
    try:
        with GroundReceiver("tcp://127.0.0.1:0", out_dir, fits_interval_s=0) as ground:
            replies.put(ground.address)
            ground.serve(stop.is_set, timeout_ms=_POLL_MS)
        replies.put(ground.counters())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
        replies.put(exc if not own_process or _picklable(exc)
                    else GroundStoreError(f"{type(exc).__name__}: {exc}", where=out_dir))


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to pickle means "send it as text"
        return False
    return True


class LoopbackDaq:
    """A DAQ for tests: sends ``frames`` to the node at ``address`` as one series (``series_id``),
    through a ``FrameSender`` in a thread of its own that owns its socket. It starts at once.

    ``frames`` are twin frames (their protocol fields read from the FITS header) or
    ``FrameSource`` objects (any array with its header fields; an empty ``start_utc`` is stamped
    when the frame leaves). The thread takes them from the iterable as it goes, so a generator
    makes frames while earlier ones travel. ``sndhwm`` and ``send_timeout_ms`` are the sender's:
    how many messages ZeroMQ queues, and how long a send waits for room before the frame is
    dropped and counted (0: never, like a flight DAQ); at the end the sender lingers as long, so
    nothing queued is lost. ``rate_hz`` paces the frames (0: as fast as the node takes them).
    ``gates`` maps a frame's position (from 0) to an event that must be set before that frame is sent.
    ``series_start_utc`` is the series start's time (default: when it leaves); give a series sent
    again after a node crash its first start time.

    ``join()`` waits for the whole series; ``close()`` (and leaving a ``with`` block) stops it
    early. Both raise what stopped the thread.
    """

    def __init__(self, address: str, frames: Iterable[FrameSource | TwinFrame], *, series_id: int = 1,
                 expected_frames: int | None = None, sndhwm: int = 1, send_timeout_ms: int = 60_000,
                 rate_hz: float = 0.0, gates: Mapping[int, threading.Event] | None = None,
                 series_start_utc: str | None = None) -> None:
        """``expected_frames`` goes in the series start (default: ``len(frames)`` when it has one)."""
        self.address = address
        self._frames = frames
        self._series_id = series_id
        self._series_start_utc = series_start_utc
        self._expected = len(frames) if expected_frames is None and isinstance(frames, Sized) else expected_frames
        self._sndhwm = sndhwm
        self._send_timeout_ms = send_timeout_ms
        self._rate_hz = rate_hz
        self._gates = dict(gates or {})
        #: the sender's counters (frames sent and dropped, with the dropped seqs), live while it runs
        self.counters = SenderCounters()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="loopback-daq", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            with FrameSender(self.address, detector_id=DETECTOR_ID, sndhwm=self._sndhwm,
                             send_timeout_ms=self._send_timeout_ms) as sender:
                self.counters = sender.counters
                sender.start_series(self._series_id, expected_frames=self._expected,
                                    start_utc=self._series_start_utc)
                t0 = time.monotonic()
                for i, frame in enumerate(self._frames):
                    if self._stop.is_set() or not self._wait_gate(i):
                        break
                    if self._rate_hz > 0 and self._stop.wait(max(0.0, t0 + i / self._rate_hz - time.monotonic())):
                        break
                    f = frame if isinstance(frame, FrameSource) else twin_source(frame)
                    sender.send_frame(f.pixels, start_utc=f.start_utc, exposure_s=f.exposure_s,
                                      wcs=f.wcs, keywords=f.keywords)
                stopped = self._stop.is_set()
                if stopped:  # stopped from outside: the series end goes if there is room, nothing waits
                    sender.send_timeout_ms = sender.control_retry_ms = 0
                sender.end_series()
                sender.close(linger_ms=0 if stopped else self._send_timeout_ms)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by join() and close()
            self._error = exc

    def _wait_gate(self, index: int) -> bool:
        """Wait for the gate of frame ``index``, if any; False when stopped meanwhile."""
        gate = self._gates.get(index)
        deadline = time.monotonic() + GATE_WAIT_S
        while gate is not None and not gate.wait(0.05):
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate before frame {index} was not opened within {GATE_WAIT_S:.0f} s")
        return True

    def is_alive(self) -> bool:
        """Whether the DAQ is still sending."""
        return self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> SenderCounters:
        """Wait for the series to be sent and the sender closed; return the sender's counters.

        Raises what stopped the thread, or TimeoutError when it is still sending after ``timeout_s``.
        """
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the loopback DAQ is still sending after {timeout_s} s "
                               f"({self.counters.frames_sent} frames sent)")
        if self._error is not None:
            raise self._error
        return self.counters

    def close(self) -> SenderCounters:
        """Stop after the frame being sent (it may wait ``send_timeout_ms`` for room), send the
        series end if there is room, discard what is still queued; return the sender's counters."""
        self._stop.set()
        return self.join(self._send_timeout_ms / 1000 + 30)

    def __enter__(self) -> LoopbackDaq:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:  # the block's own error is the one to see
            self._stop.set()
            self._thread.join(self._send_timeout_ms / 1000 + 30)


def every_family_twin_config(size_px: int) -> TwinConfig:
    """The twin's config of the demo and the benchmarks: ``size_px`` square frames of a moderately
    filled field (250 stars, 60 galaxies) with one object of every anomaly family and two transients."""
    import dataclasses

    from twin import ANOMALY_FAMILIES, DetectorModel, TwinConfig

    return dataclasses.replace(TwinConfig(detector=DetectorModel(shape_px=(size_px, size_px))),
                               anomalies=tuple(ANOMALY_FAMILIES), n_stars=250, n_galaxies=60,
                               n_anomalies_per_family=1, n_transients=2, cosmic_ray_rate_per_s=0.05,
                               streak_probability=0.05)


def synthetic_frame(shape: tuple[int, int], rng: np.random.Generator) -> NDArray[np.uint16]:
    """A quick raw-looking uint16 frame without the twin: bias, sky, Gaussian stars (sigma 2 px),
    read and shot noise, in ADU."""
    ny, nx = shape
    sky = np.full(shape, 500.0 + 20.0, dtype=np.float32)
    n_stars = max(5, ny * nx // 20000)
    ys = rng.uniform(0, ny, n_stars)
    xs = rng.uniform(0, nx, n_stars)
    flux = 10 ** rng.uniform(2.5, 4.5, n_stars)
    for y0, x0, f in zip(ys, xs, flux, strict=True):
        y_lo, y_hi = max(0, int(y0) - 6), min(ny, int(y0) + 7)
        x_lo, x_hi = max(0, int(x0) - 6), min(nx, int(x0) + 7)
        yy, xx = np.mgrid[y_lo:y_hi, x_lo:x_hi]
        sky[y_lo:y_hi, x_lo:x_hi] += f / (2 * np.pi * 2.0**2) * np.exp(
            -((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 2.0**2))
    noisy = rng.normal(sky, np.sqrt(sky) + 3.0).astype(np.float32)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def synthetic_frames(n: int, *, size_px: int, seed: int) -> Iterator[FrameSource]:
    """``n`` synthetic frames of ``size_px`` square as frame sources: 30 s exposures in filter r."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield FrameSource(synthetic_frame((size_px, size_px), rng), f"2026-11-28T00:00:{i % 60:02d}.000000Z",
                          30.0, {}, {"FILTER": "r"}, f"synthetic-{i}")


def crashing_verifier(path: str, sha256: str, section: Any) -> str:
    """An engine check that dies the way a native crash in a runtime does (SIGSEGV), for tests of
    :func:`edge.node.engine_swap.verify_in_child`."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable: the process has ended")
