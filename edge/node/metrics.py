"""The node's figures as Prometheus metrics: what ``GET /metrics`` serves.

Counters are counters (``_total``), levels are gauges, what a dict keyed by a reason, a class, a
stage or a kind holds is one metric with that label, and the time a frame takes (received to
spooled, and each pipeline stage) is a histogram observed as each frame finishes. The main
process's own figures (resident memory, open file descriptors, CPU seconds) come from
prometheus_client's process collector, each worker's resident memory from /proc. The daemon's
thread replaces the figures as a whole; a scrape reads the latest (docs/operations.md lists the names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

NS = "astro_edge"

#: seconds from a frame's arrival to its records in the spool, and per stage
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: node counters (``status["counters"]``): metric name -> (key, help)
NODE_COUNTERS = {
    "frames_received": ("frames_received", "frames accepted by the protocol plus messages it rejected"),
    "frames_processed": ("frames_processed", "frames whose records and summary reached the spool"),
    "frames_dropped": ("frames_dropped", "frames let go (ingest queue full, or a spool that failed)"),
    "frames_duplicate": ("frames_duplicate", "frames already finished (a DAQ sent them again)"),
    "detections": ("detections", "detections of the processed frames"),
    "suppressed": ("suppressed", "detections triage kept back"),
    "capped": ("capped", "detections kept back by the per-frame record cap"),
    "records_spooled": ("spooled", "records committed to the spool"),
    "spool_duplicates": ("spool_duplicates", "records the spool held already"),
    "records_evicted": ("evicted", "records the spool evicted to stay within its bounds"),
    "workers_recycled": ("workers_recycled", "workers replaced after worker_max_frames frames"),
    "workers_died": ("workers_died", "worker processes that ended on their own"),
}
#: receiver counters (``status["receiver"]``)
RECEIVER_COUNTERS = {
    "messages_received": ("received", "messages taken off the frame socket"),
    "bytes_received": ("bytes_received", "bytes of those messages"),
    "series_starts": ("series_starts", "series start messages"),
    "series_ends": ("series_ends", "series end messages"),
    "heartbeats": ("heartbeats", "DAQ heartbeats"),
    "sequence_gaps": ("gaps", "gaps in a series' sequence numbers"),
    "frames_missing": ("frames_missing", "sequence numbers inside those gaps"),
    "frames_out_of_order": ("out_of_order", "frames behind their series' expected number"),
}
#: downlink counters (``status["downlink"]``)
DOWNLINK_COUNTERS = {
    "sent": ("sent", "messages handed to the downlink socket, retries included"),
    "sent_bytes": ("sent_bytes", "payload bytes of those"),
    "retries": ("retries", "sends of a message whose ack had timed out"),
    "acked": ("acked", "acks that removed a spooled message"),
    "ack_timeouts": ("timeouts", "in-flight messages whose ack did not come in time"),
    "dead_lettered": ("dead_lettered", "messages moved to the dead letters after max_tries"),
    "budget_waits": ("budget_waits", "pumps that stopped at the per-second byte budget"),
    "send_blocked": ("send_blocked", "pumps that stopped with no ground connected or its queue full"),
}
#: spool counters per kind (``status["spool"]``), all labelled ``kind``
SPOOL_COUNTERS = ("accepted", "acked", "evicted", "evicted_bytes", "duplicates", "dead_lettered")


class FrameTimings:
    """Histograms of a frame's time, observed by the daemon as each frame finishes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(f"{NS}_frame_latency_seconds", "a frame's arrival to its records in the spool",
                                 registry=registry, buckets=LATENCY_BUCKETS_S)
        self.stage = Histogram(f"{NS}_stage_seconds", "time of each pipeline stage per frame", ["stage"],
                               registry=registry, buckets=STAGE_BUCKETS_S)

    def observe(self, latency_ms: float, stages_ms: Mapping[str, float]) -> None:
        self.latency.observe(latency_ms / 1000.0)
        for stage, ms in stages_ms.items():
            self.stage.labels(stage=stage).observe(ms / 1000.0)


class FiguresCollector(Collector):
    """Metric families made from the latest housekeeping figures at each scrape."""

    def __init__(self, figures: Callable[[], dict[str, Any]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        if not f:
            return
        c = f.get("counters") or {}
        yield from _counters(c, NODE_COUNTERS, f"{NS}_")
        rejected = CounterMetricFamily(f"{NS}_frames_rejected", "frames refused, by reason", labels=["reason"])
        for reason, n in sorted((c.get("rejected_by_reason") or {}).items()):
            rejected.add_metric([reason], n)
        yield rejected
        for name, key, help_, label in (("detections_by_class", "by_class", "detections by class", "class"),
                                        ("records_sent_by_reason", "sent_by_reason",
                                         "records sent, by the reason they were sent", "reason")):
            family = CounterMetricFamily(f"{NS}_{name}", help_, labels=[label])
            for value, n in sorted((c.get(key) or {}).items()):
                family.add_metric([value], n)
            yield family
        yield _gauge("frames_in_flight", "frames queued or in a worker", c.get("frames_in_flight"))
        yield _gauge("queue_depth", "frames waiting in the ingest queue", f.get("queue_depth"))
        yield _gauge("paused", "1 while an operator paused the node", float(bool(f.get("paused"))))
        yield _gauge("policy_version", "the triage policy's version", f.get("policy_version"))
        engine = GaugeMetricFamily(f"{NS}_engine_info", "the engine the workers run (value 1)", labels=["engine_id"])
        engine.add_metric([str(f.get("engine_id"))], 1.0)
        yield engine
        degraded = GaugeMetricFamily(f"{NS}_degraded", "1 for each part in a fault the node outlives",
                                     labels=["part"])
        for part in sorted(f.get("degraded") or {}):
            degraded.add_metric([part], 1.0)
        yield degraded
        if f.get("receiver"):
            yield from _counters(f["receiver"], RECEIVER_COUNTERS, f"{NS}_receiver_")
        if f.get("downlink"):
            yield from _counters(f["downlink"], DOWNLINK_COUNTERS, f"{NS}_downlink_")
            yield _gauge("downlink_in_flight", "messages sent and not yet acknowledged", f["downlink"].get("in_flight"))
        yield from _spool(f.get("spool"), f.get("spool_oldest_age_s"))
        yield from _process(f.get("process") or {}, f.get("worker_rss_bytes") or [])


def _counters(values: Mapping[str, Any], names: Mapping[str, tuple[str, str]], prefix: str) -> Iterator[Metric]:
    for name, (key, help_) in names.items():
        if isinstance(values.get(key), (int, float)):
            yield CounterMetricFamily(f"{prefix}{name}", help_, value=values[key])


def _gauge(name: str, help_: str, value: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{NS}_{name}", help_)
    if isinstance(value, (int, float)):
        family.add_metric([], float(value))
    return family


def _spool(spool: Mapping[str, Any] | None, oldest_age_s: float | None) -> Iterator[Metric]:
    if spool:
        for what in SPOOL_COUNTERS:
            family = CounterMetricFamily(f"{NS}_spool_{what}", f"spooled messages {what.replace('_', ' ')}, by kind",
                                         labels=["kind"])
            for kind, n in sorted((spool.get(what) or {}).items()):
                family.add_metric([kind], n)
            yield family
        pending = GaugeMetricFamily(f"{NS}_spool_pending", "messages waiting in the spool, by kind", labels=["kind"])
        for kind, n in sorted((spool.get("pending") or {}).items()):
            pending.add_metric([kind], n)
        yield pending
        yield _gauge("spool_pending_bytes", "payload bytes waiting in the spool", spool.get("pending_bytes"))
    yield _gauge("spool_oldest_age_seconds", "age of the oldest message in the spool", oldest_age_s)


def _process(process: Mapping[str, Any], worker_rss: list[int | None]) -> Iterator[Metric]:
    load = GaugeMetricFamily(f"{NS}_cpu_load", "the machine's load average", labels=["minutes"])
    for minutes, value in zip(("1", "5", "15"), process.get("cpu_load") or (), strict=False):
        load.add_metric([minutes], value)
    yield load
    workers = GaugeMetricFamily(f"{NS}_worker_resident_memory_bytes", "each worker process's resident memory",
                                labels=["worker"])
    for i, rss in enumerate(worker_rss):
        if rss is not None:
            workers.add_metric([str(i)], rss)
    yield workers
    gpu = GaugeMetricFamily(f"{NS}_gpu_temperature_celsius", "GPU temperatures, where one can be read",
                            labels=["gpu"])
    for i, t in enumerate(process.get("gpu_temperature_c") or ()):
        gpu.add_metric([str(i)], t)
    yield gpu


def worker_rss_bytes(pids: list[int | None]) -> list[int | None]:
    """Resident memory of each worker process (None for one that is not running or not readable)."""
    out: list[int | None] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                out.append(int(fh.read().split()[1]) * _PAGE)
        except (OSError, ValueError, IndexError, TypeError):
            out.append(None)
    return out


def _page_size() -> int:
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 4096


_PAGE = _page_size()


def node_registry(figures: Callable[[], dict[str, Any]]) -> tuple[CollectorRegistry, FrameTimings]:
    """A registry with the node's figures, its frame-time histograms and the process collector."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FiguresCollector(figures))
    ProcessCollector(registry=registry)
    return registry, FrameTimings(registry)
