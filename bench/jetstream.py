"""Publish throughput of a ground to NATS JetStream, against nats-py publishing the same bytes bare.

A ground folder holds --records stored records (JSON lines as the ground writes them, 16x16
stamps). The reference connects with nats-py, creates the same stream (file storage, the same
duplicate window) and publishes every line on the same subject with the same Nats-Msg-Id,
BATCH at a time concurrently, each acknowledged; the ground's publisher (edge/ground/publish.py)
then tails the same folder into a fresh server: reading the lines, making subjects and ids,
moving its durable cursor. Each run gets a nats-server of its own (a fresh store, so no message
is a duplicate); runs alternate, and the median of --runs is compared. Needs nats-server on PATH.

    .venv/bin/python bench/jetstream.py [--records 20000] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(binary: str, store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError("nats-server did not listen") from None
            time.sleep(0.05)


def write_ground(folder: Path, n: int) -> list[tuple[str, str, bytes]]:
    """``n`` record lines in ``folder``/downlink.jsonl; returns (subject, id, line) of each."""
    import numpy as np

    from edge.codec import to_json_line
    from edge.ground.publish import message_id, subject_of
    from edge.ground.writers import FRAMES_NAME, RECORDS_NAME
    from edge.records import DownlinkRecord, compress_stamp, record_id

    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        r = DownlinkRecord(
            record_id=record_id(f"node{i % 4}", "s1", i // 10, i % 10), node_id=f"node{i % 4}", detector_id="d1",
            series_id="s1", frame=i // 10, index=i % 10, frame_time="2026-12-03T10:00:00Z",
            processed_time="2026-12-03T10:00:01Z", x=10.0, y=20.0, x_err=0.1, y_err=0.1, ra=None, dec=None,
            label="streak", confidence=0.6, probs={"star": 0.4, "streak": 0.6}, entropy=0.7, aleatoric=0.5,
            epistemic=0.2, anomaly_score=2.0, anomaly_pvalue=0.2, snr=30.0, flux_e=900.0, flux_err_e=30.0,
            a_px=5.0, b_px=1.0, theta_rad=0.3, flags=0, new=False, reasons=(("uncertain", "unusual", "unknown")[i % 3],),
            priority=1.0, policy_version=1, engine_id="e1", calibration_id="c1",
            stamp=compress_stamp(rng.normal(size=(2, 16, 16))))
        lines.append(to_json_line(r, received_time="2026-12-03T10:00:02Z"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORDS_NAME).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (folder / FRAMES_NAME).write_text("", encoding="utf-8")
    out = []
    for line in lines:
        data = json.loads(line)
        out.append((subject_of("record", data), message_id("record", data), line.encode()))
    return out


async def bare(url: str, messages: list[tuple[str, str, bytes]], batch: int) -> float:
    import nats
    from nats.js.api import StorageType, StreamConfig

    from edge.ground.publish import DUPLICATE_WINDOW_S, STREAM, SUBJECT_ROOT

    t0 = time.perf_counter()
    nc = await nats.connect(servers=[url])
    js = nc.jetstream(timeout=5.0)
    await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{SUBJECT_ROOT}.>"], storage=StorageType.FILE,
                                     duplicate_window=DUPLICATE_WINDOW_S))
    for start in range(0, len(messages), batch):
        await asyncio.gather(*(js.publish(s, p, headers={"Nats-Msg-Id": i}) for s, i, p in messages[start:start + batch]))
    elapsed = time.perf_counter() - t0
    await nc.close()
    return elapsed


def ground(url: str, folder: Path) -> float:
    from edge.ground.publish import CURSOR_NAME, Publisher

    (folder / CURSOR_NAME).unlink(missing_ok=True)
    t0 = time.perf_counter()
    publisher = Publisher(folder, url)
    publisher.start()
    while publisher.lag_bytes():
        time.sleep(0.01)   # a coarse poll: a tight one would take the GIL from the publisher
    elapsed = time.perf_counter() - t0
    publisher.stop(drain_s=0)
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    from edge.ground.publish import BATCH
    from edge.log import configure

    configure(json=True, level="error", stream=sys.stderr)
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    times: dict[str, list[float]] = {"bare": [], "ground": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ground"
        messages = write_ground(folder, args.records)
        mean_bytes = sum(len(m[2]) for m in messages) / len(messages)
        for run in range(args.runs):
            for kind in ("bare", "ground"):
                proc, url = start_server(binary, Path(tmp) / f"store-{kind}-{run}")
                try:
                    times[kind].append(asyncio.run(bare(url, messages, BATCH)) if kind == "bare" else ground(url, folder))
                finally:
                    proc.kill()
                    proc.wait(10)
    rate = {k: args.records / statistics.median(v) for k, v in times.items()}
    print(f"{args.records} records of {mean_bytes:.0f} bytes, {args.runs} runs each, batches of {BATCH}, "
          f"one nats-server on loopback (file storage)")
    for kind in ("bare", "ground"):
        print(f"  {kind:6s}: median {statistics.median(times[kind]):.3f} s, {rate[kind]:.0f} records/s "
              f"(runs: {', '.join(f'{t:.3f}' for t in times[kind])})")
    print(f"ratio ground / bare nats-py: {rate['ground'] / rate['bare']:.2f} (bar >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
