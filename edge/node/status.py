"""The node's figures: the status dict (``status`` command, ``run --status-file``), the
housekeeping figures built on it, and the status file.

Reads the node's parts and returns JSON-ready dicts; the only I/O is the spool's oldest record
(for its age), the process's own figures and the status file, which is replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.codec import decode_msgpack
from edge.errors import SpoolError
from edge.link.spool import Spool
from edge.node.commands import OperatorState
from edge.node.counters import NodeCounters
from edge.node.engine_swap import EngineSwap
from edge.node.health import Health
from edge.node.ingest import Ingest
from edge.node.metrics import worker_rss_bytes
from edge.node.pool import WorkerPool
from edge.node.supervision import process_figures
from edge.records import DownlinkRecord
from firmware_bridge import FrameReceiver


def node_status(node_id: str, counters: NodeCounters, *, engines: EngineSwap, operator: OperatorState,
                ingest: Ingest, pool: WorkerPool, receiver: FrameReceiver | None, spool: Spool | None,
                downlink: dict[str, Any], health: Health) -> dict[str, Any]:
    """Counters of the node, its receiver, spool and downlink, as one JSON-ready dict."""
    spool_counters = None
    if spool is not None:
        try:
            spool_counters = spool.counters()
        except SpoolError as exc:   # the disk under the spool failed: the status still answers
            health.degraded("spool", exc)
    return {
        "node": node_id,
        **health.status(),
        "engine_id": engines.engine_id,
        "policy_version": operator.policy.version,
        "paused": operator.paused,
        "shadow": engines.shadow_status(),
        "queue_depth": len(ingest),
        "worker_frames": [w.frames_submitted for w in pool.workers],
        "worker_pids": [w.pid for w in pool.workers],
        "counters": counters.snapshot(),
        # with each DAQ's own figures from its last heartbeat (frames it sent and dropped)
        "receiver": {**receiver.counters.as_dict(), "daq": dict(receiver.daq)} if receiver is not None else None,
        "spool": asdict(spool_counters) if spool_counters is not None else None,
        "downlink": downlink,
    }


def housekeeping_figures(status: dict[str, Any], stage_ms: Mapping[str, deque[float]],
                         spool: Spool | None) -> dict[str, Any]:
    """``status`` plus per-stage latency p50/p99 (ms), the spool's oldest record's age, the
    process's CPU, memory and GPU figures and each worker's resident memory."""
    figures = status
    figures["stage_latency_ms"] = {
        stage: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
        for stage, v in stage_ms.items() if v}
    figures["spool_oldest_age_s"] = spool_oldest_age_s(spool)
    figures["process"] = process_figures()
    figures["worker_rss_bytes"] = worker_rss_bytes(status.get("worker_pids") or [])
    return figures


def spool_oldest_age_s(spool: Spool | None) -> float | None:
    """Seconds since the oldest record in the spool was made; None when the spool is empty or closed."""
    item = spool.oldest() if spool is not None else None
    if item is None:
        return None
    msg = decode_msgpack(item.payload)
    stamp = msg.processed_time if isinstance(msg, DownlinkRecord) else msg.frame_time
    then = datetime.strptime(stamp.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - then).total_seconds()


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Write ``status`` as JSON to ``path``, replacing the file atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, default=_jsonable, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "items"):
        return dict(obj.items())
    return str(obj)
