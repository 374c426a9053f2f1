"""SIGKILL swept across the spool's writes and commits: 200 kills, each at a random moment of a
process that puts batches (with a checkpoint) and acknowledges older ones as fast as the disk
allows, each followed by a restart on the same file. After every kill, byte for byte: every
batch the writer was told is durable is there (unless its ack was acknowledged), every acked
batch is gone, every other batch is there whole or not at all, nothing else is there, and the
counters conserve.

The writer is this file run as a script: ``python test_crash_sweep.py SPOOL`` prints ``D b`` once
``put`` of batch b returned and ``A b`` once the ack of batch b returned.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.codec import encode_msgpack
from edge.link.spool import Spool
from edge.log import configure
from edge.records import DownlinkRecord, compress_stamp, record_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KILLS = 200
PER_BATCH = 3
#: batches a writer process puts at most before it idles (keeps one run short)
RUN_BATCHES = 40
ACK_LAG = 2   # after putting batch b, the writer acknowledges batch b - ACK_LAG


def batch(b: int) -> list[DownlinkRecord]:
    """The same records for batch b every time (seeded by b)."""
    rng = np.random.default_rng([20261203, b])
    return [DownlinkRecord(
        record_id=record_id("sweep", "s", b, i), node_id="sweep", detector_id="d", series_id="s", frame=b,
        index=i, frame_time="2026-12-03T00:00:00Z", processed_time="2026-12-03T00:00:01Z",
        x=float(rng.uniform(0, 100)), y=float(rng.uniform(0, 100)), x_err=0.1, y_err=0.1, ra=None, dec=None,
        label="star", confidence=0.5, probs={"star": 0.5, "galaxy": 0.5}, entropy=0.69, aleatoric=0.6,
        epistemic=0.09, anomaly_score=1.0, anomaly_pvalue=0.5, snr=10.0, flux_e=100.0, flux_err_e=10.0,
        a_px=1.0, b_px=1.0, theta_rad=0.0, flags=0, new=False, reasons=("uncertain",),
        priority=float(rng.uniform(0, 5)), policy_version=1, engine_id="e", calibration_id="c",
        stamp=compress_stamp(rng.normal(size=(2, 16, 16)))) for i in range(PER_BATCH)]


def write(path: str) -> None:
    """The writer: continue after the checkpoint, put and acknowledge, report each step."""
    configure(json=True, level="warning", stream=sys.stderr)   # stdout carries the report
    out = sys.stdout
    with Spool(path) as spool:
        start = int(spool.checkpoint("next") or 0)
        out.write("R\n")
        out.flush()
        for b in range(start, start + RUN_BATCHES):
            spool.put(batch(b), checkpoint={"next": str(b + 1)})
            out.write(f"D {b}\n")
            out.flush()
            if b >= ACK_LAG:
                spool.ack([r.record_id for r in batch(b - ACK_LAG)])
                out.write(f"A {b - ACK_LAG}\n")
                out.flush()
        time.sleep(60)   # done before the kill: wait for it


class _Expected(dict):
    """Batch number -> {record id: msgpack bytes}, made when first asked for."""

    def __missing__(self, b: int) -> dict[str, bytes]:
        value = self[b] = {r.record_id: encode_msgpack(r) for r in batch(b)}
        return value


def test_sigkill_swept_over_writes_and_commits_loses_duplicates_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    rnd = random.Random(20261203)
    durable: set[int] = set()   # batches a put returned for
    acked: set[int] = set()     # batches an ack returned for
    points: set[tuple[int, int]] = set()
    expected = _Expected()
    for kill in range(KILLS):
        proc = subprocess.Popen([sys.executable, __file__, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "R\n", "the writer did not open the spool"
        time.sleep(rnd.uniform(0.0, 0.06))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for line in proc.stdout.read().splitlines():
            what, b = line.split()
            (durable if what == "D" else acked).add(int(b))
        proc.stdout.close()
        points.add((max(durable, default=-1), max(acked, default=-1)))

        with Spool(path) as spool:
            stored = {item.id: item.payload for item in spool.pending(10**6)}
            counters = spool.counters()
            next_batch = int(spool.checkpoint("next") or 0)
        assert counters.conserved(), (kill, counters)
        assert next_batch >= max(durable, default=-1) + 1, "a batch reported durable is behind the checkpoint"
        for b in range(next_batch + 1):
            ids = expected[b]
            present = {i for i in ids if i in stored}
            if b in acked:
                assert not present, (kill, b, "acknowledged but still spooled")
            elif b in durable and b + ACK_LAG >= next_batch:
                # its ack starts only after put(b + ACK_LAG) returned, which has not committed
                assert present == set(ids), (kill, b, "durable and not acked, but missing")
            else:   # a kill inside its put or its ack: whole or not at all
                assert present in (set(), set(ids)), (kill, b, "torn batch", sorted(present))
            for i in present:
                assert stored[i] == ids[i], (kill, b, i, "payload bytes changed")
        known = {i for b in range(next_batch + 1) for i in expected[b]}
        assert set(stored) <= known, (kill, sorted(set(stored) - known)[:3])
    print(f"{KILLS} kills at {len(points)} distinct (last durable, last acked) points; "
          f"{len(durable)} batches durable, {len(acked)} acked")
    # the kills landed at many distinct places of the write sequence
    assert len(points) >= KILLS // 2, len(points)
    assert len(durable) > KILLS


if __name__ == "__main__":
    write(sys.argv[1])
