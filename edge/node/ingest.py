"""Ingest: take frames off the receiver into the node's bounded queue, counting every one.

A message the protocol rejects is counted as received and rejected; a frame whose records are
already in the spool (a DAQ re-sending a series after a crash) is counted as a duplicate and not
queued; a series start whose id the node knew under another start time (a DAQ that restarted and
counts its series from the same id again) opens a new run of that id, whose frames are all new
(:class:`SeriesBook`); a frame that finds the queue full pushes out the oldest one (``drop_oldest``), which is
counted, logged and reported in the next frame summary. With ``block`` the daemon stops taking
frames while the queue is full, so the receiver's high-water mark pushes back on the DAQ.
This module owns the queue, the finished-frame sets and the series runs; it never touches a worker
and writes the spool only through the callable the daemon hands it.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from edge.config import ReceiveSection
from edge.errors import PeerSilentError
from edge.log import get_logger
from edge.node.counters import NodeCounters
from edge.node.done import DoneSet
from edge.node.health import Health
from edge.pipeline import FrameInput
from firmware_bridge import Frame, FrameReceiver, SeriesStart

log = get_logger(__name__)

#: series (detector and id) whose finished frames and runs are held in memory, the most recent
#: ones; an older series is read back from the spool when a frame of it comes again
MAX_SERIES = 1024


class SeriesBook:
    """The run of each series id the node is in. A DAQ names a series by its id and the
    ``start_utc`` of its series start: a series start that repeats the stored start time is the
    same series sent again (after a crash: its finished frames stay finished), one with another
    start time is a DAQ that restarted and reused the id, and opens run 1, 2, ... of it. The node
    names a series ``ID`` in its first run and ``ID-RUN`` after (records, summaries, finished
    frames), so no frame of a new run is taken for a duplicate and no record id repeats.
    Each id's latest start time and run are stored in the spool as the checkpoint
    ``series:DETECTOR:ID`` when its series start arrives."""

    def __init__(self, read_checkpoint: Callable[[str], str | None],
                 write_checkpoint: Callable[[str, str], None]) -> None:
        self._read = read_checkpoint
        self._write = write_checkpoint
        self._runs: OrderedDict[tuple[str, int], tuple[str, int]] = OrderedDict()

    @staticmethod
    def key(detector_id: str, series_id: int) -> str:
        """The spool checkpoint that holds the series id's latest start time and run."""
        return f"series:{detector_id}:{series_id}"

    def _get(self, detector_id: str, series_id: int) -> tuple[str, int] | None:
        key = (detector_id, series_id)
        found = self._runs.get(key)
        if found is None:
            text = self._read(self.key(detector_id, series_id))
            if text is None:
                return None
            data = json.loads(text)
            found = (str(data["start_utc"]), int(data["run"]))
        self._keep(key, found)
        return found

    def _keep(self, key: tuple[str, int], value: tuple[str, int]) -> None:
        self._runs[key] = value
        self._runs.move_to_end(key)
        while len(self._runs) > MAX_SERIES:
            self._runs.popitem(last=False)

    def started(self, detector_id: str, series_id: int, start_utc: str) -> str:
        """A series start arrived: the name of the series its frames belong to."""
        known = self._get(detector_id, series_id)
        if known is not None and known[0] == start_utc:
            return self.name(detector_id, series_id)
        run = 0 if known is None else known[1] + 1
        if known is not None:
            log.warning("series.reused", detector_id=detector_id, series_id=series_id, run=run,
                        start_utc=start_utc, previous_start_utc=known[0],
                        detail="a series start with a known id and another start time: a new run "
                               "of the id, its frames processed as new ones")
        self._keep((detector_id, series_id), (start_utc, run))
        self._write(self.key(detector_id, series_id),
                    json.dumps({"start_utc": start_utc, "run": run}, separators=(",", ":")))
        return self.name(detector_id, series_id)

    def name(self, detector_id: str, series_id: int) -> str:
        """The node's name of the series a frame with this id belongs to now: ``ID`` in the id's
        first run (or when its series start was never seen), ``ID-RUN`` in a later one."""
        known = self._get(detector_id, series_id)
        run = 0 if known is None else known[1]
        return str(series_id) if run == 0 else f"{series_id}-{run}"


class DoneSets:
    """Finished frames per series (``detector:series``), each read from its spool checkpoint on
    first use; the daemon adds a frame and stores the set in the same spool transaction as its records."""

    def __init__(self, read_checkpoint: Callable[[str], str | None]) -> None:
        """``read_checkpoint(key)``: the spool's stored value for ``key``, None when there is none."""
        self._read = read_checkpoint
        self._sets: OrderedDict[str, DoneSet] = OrderedDict()

    @staticmethod
    def key(series_key: str) -> str:
        """The spool checkpoint that holds the series' finished frames."""
        return f"done:{series_key}"

    def of(self, series_key: str) -> DoneSet:
        """The finished frames of one series."""
        done = self._sets.get(series_key)
        if done is None:
            done = self._sets[series_key] = DoneSet.from_json(self._read(self.key(series_key)))
        self._sets.move_to_end(series_key)
        while len(self._sets) > MAX_SERIES:   # the oldest series' set is in the spool already
            self._sets.popitem(last=False)
        return done


class Ingest:
    """The bounded ingest queue: frames with the monotonic time they arrived, oldest first."""

    def __init__(self, section: ReceiveSection, counters: NodeCounters, done: DoneSets,
                 series: SeriesBook) -> None:
        self.section = section
        self.counters = counters
        self.done = done
        self.series = series
        self.queue: deque[tuple[FrameInput, float]] = deque()
        self._pending_drops: list[int] = []   # dropped seqs not yet handed to a worker's summary
        #: the receiver's rejections by reason already added to the node's counters
        self._receiver_reasons: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.queue)

    def has_room(self) -> bool:
        """Whether the queue holds fewer than ``[receive] queue_frames`` frames."""
        return len(self.queue) < self.section.queue_frames

    @property
    def blocks(self) -> bool:
        """Whether the policy is ``block`` (stop receiving while full) rather than ``drop_oldest``."""
        return self.section.queue_policy == "block"

    def receive(self, receiver: FrameReceiver, timeout_ms: int) -> None:
        """Take at most one message off ``receiver`` (waiting up to ``timeout_ms``) and queue its frame."""
        c = self.counters
        before = receiver.counters.rejected
        msg = receiver.recv(timeout_ms)
        rejected = receiver.counters.rejected - before
        if rejected:
            c.frames_received += rejected
            c.frames_rejected += rejected
            # added to the node's own reasons (the pipeline counts its rejections there too)
            reasons = receiver.counters.rejected_by_reason
            for reason, n in (reasons - self._receiver_reasons).items():
                c.rejected_by_reason[reason] = c.rejected_by_reason.get(reason, 0) + n
            self._receiver_reasons = reasons.copy()
        if isinstance(msg, SeriesStart):
            self.series.started(msg.detector_id, msg.series_id, msg.start_utc)
        if not isinstance(msg, Frame):
            return
        h = msg.header
        header = {**dict(h.keywords), **dict(h.wcs)}
        frame = FrameInput(detector_id=h.detector_id, series_id=self.series.name(h.detector_id, h.series_id), seq=h.seq,
                           frame_time=h.start_utc, exposure_s=h.exposure_s, pixels=msg.pixels,
                           header=header, filter_name=_filter(header))
        c.frames_received += 1
        if frame.seq in self.done.of(f"{frame.detector_id}:{frame.series_id}"):
            c.frames_duplicate += 1
            log.info("frame.duplicate", series=frame.series_id, seq=frame.seq)
            return
        if len(self.queue) >= self.section.queue_frames:
            old, _ = self.queue.popleft()
            c.frames_in_flight -= 1
            c.frames_dropped += 1
            c.dropped_seqs.append(old.seq)
            self._pending_drops.append(old.seq)
            log.warning("frame.dropped", stage="ingest_queue", series=old.series_id, seq=old.seq,
                        policy=self.section.queue_policy)
        self.queue.append((frame, time.monotonic()))
        c.frames_in_flight += 1

    def watch_daq(self, receiver: FrameReceiver, health: Health, where: str) -> None:
        """The DAQ is silent when, mid-series, nothing came for three of its heartbeat periods
        (``[receive] daq_heartbeat_s``): its part goes degraded until the next message."""
        if receiver.last_message_at is None:
            return
        limit_s = 3 * self.section.daq_heartbeat_s
        silent = receiver.series_open and time.monotonic() - receiver.last_message_at > limit_s
        if silent and not health.is_degraded("daq"):
            health.degraded("daq", PeerSilentError(
                f"no message from the DAQ for more than {limit_s:g} s in the middle of a series "
                f"(3 x [receive] daq_heartbeat_s)", where=where))
        elif not silent:
            health.ok("daq")

    def note_dropped(self, seq: int) -> None:
        """A frame lost after the queue (its records could not be spooled): the next frame taken
        reports it in its summary's ``dropped_frames``."""
        self._pending_drops.append(seq)

    def take(self) -> tuple[FrameInput, float, tuple[int, ...]]:
        """The oldest frame, when it arrived, and the seqs dropped since the last frame was taken
        (its summary reports them)."""
        frame, received_at = self.queue.popleft()
        drops, self._pending_drops = tuple(self._pending_drops), []
        return frame, received_at, drops


def _filter(header: dict[str, Any]) -> str | None:
    value = header.get("FILTER")
    return str(value) if value is not None else None
