"""Soak: stream twin frames into a node for a set time and watch its memory.

A node (2 worker processes, the shipped engine, drop_oldest queue) receives 2048x2048 twin
frames at --rate-hz from a loopback DAQ thread and downlinks to a ground receiver, for
--seconds (600 by default; not run in CI). The ground runs in a process of its own
(edge.testing.Ground): its memory and files are the ground station's, not the node's. Memory is the
resident set of the node's main process plus its workers (/proc), sampled about every second
(at random intervals of 0.5 to 1.5 s) after a warm-up minute. A worker's resident set swings
between idle and mid-frame by the size of a frame's temporaries, so each whole minute is
summarised by its floor (each process's least, added up) and its peak (the largest total seen),
and CPU time per frame is taken per process; the reference is the first minute after
warm-up, and the last line prints how far the last minute's floor and peak are above it,
against the bound.

    .venv/bin/python bench/soak.py [--seconds 600] [--rate-hz 2] [--size 2048] [--mmap-threshold-kib 4096]
                                   [--worker-max-frames N] [--overload] [--detect-backend sep|fast]

With --overload the warm-up (at --rate-hz) measures the CPU time the node's processes spend per
frame, which gives the rate the node sustains on this machine (its workers, or its cores if fewer,
kept busy), and the DAQ then sends at twice that rate for the rest of the soak; memory is sampled
after a second warm-up at that rate (its queues full), so the reference minute is the node under
the overload, not the step into it: the node must drop, count every dropped frame with its sequence number, and keep its memory
and file descriptors flat. The exit code is 1 when the memory grew past the bound, the least-squares
slope of the per-minute floor is over SLOPE_BOUND_MB_PER_H, the file descriptors grew, or a frame
is unaccounted for; 0 otherwise.

With --worker-max-frames small enough for workers to be replaced during the soak, each worker
slot's memory is that of the process in the slot at the sample (plus its successor while one is
starting), and CPU per frame per process is not printed (the processes change).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: the growth the node may show over a soak, beyond its memory after warm-up
BOUND_MB = 64.0
#: the steady growth the node may show, after warm-up (least squares over the per-minute floors)
SLOPE_BOUND_MB_PER_H = 5.0


def fd_count(pids: list[int]) -> int:
    """Open file descriptors of these processes (those that still run)."""
    import os

    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def slope_mb_per_h(minutes: list[dict[str, Any]]) -> float:
    """Least-squares slope of the per-minute floor, in MB per hour (0 with fewer than 2 minutes)."""
    if len(minutes) < 2:
        return 0.0
    import numpy as np

    t = np.array([m["minute"] for m in minutes], float) / 60.0
    y = np.array([m["floor"] for m in minutes], float)
    return float(np.polyfit(t, y, 1)[0])


def rss_mb(pids: list[int]) -> float:
    import os

    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            continue
    return total / 2**20


def rss_parts(pid: int) -> dict[str, float]:
    """A process's resident MB by kind: anonymous (its heaps), file-backed (code, libraries) and
    shared memory (a worker's frame slot), from /proc/PID/status."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key[3:].lower()] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def slot_rss(node: Any) -> list[float]:
    """Resident MB of the main process and of each worker slot (with its successor while one starts)."""
    import os

    out = [rss_mb([os.getpid()])]
    for w in node.workers:
        successor = node.pool.replacements.get(w.index)
        out.append(rss_mb([p for p in (w.pid, successor.pid if successor else None) if p]))
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, all its threads."""
    import os

    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--rate-hz", type=float, default=2.0)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--worker-max-frames", type=int, default=None,
                   help="[node] worker_max_frames (default: the node's own default; 0: workers live as long "
                        "as the node)")
    p.add_argument("--mmap-threshold-kib", type=int, default=4096,
                   help="[node] mmap_threshold_kib (default 4096; 0: glibc's moving threshold)")
    p.add_argument("--detect-backend", choices=("sep", "fast"), default="sep",
                   help="the node's [detect] backend (default sep)")
    p.add_argument("--overload", action="store_true",
                   help="flood during the warm-up to measure the sustainable rate, then send at twice it")
    args = p.parse_args()

    from edge.config import config_from_mapping
    from edge.log import configure
    from edge.node.daemon import NodeDaemon
    from edge.testing import Ground, LoopbackDaq, every_family_twin_config
    from twin import simulate_frame

    configure(json=True, level="warning", stream=sys.stderr)
    import os

    # an odd number of distinct frames: the two workers take turns, so each meets every frame
    # (and grows to its full size) within the warm-up instead of whenever the turns first slip
    frames = [simulate_frame(every_family_twin_config(args.size), i, 7) for i in range(5)]
    with tempfile.TemporaryDirectory() as tmp:
        ground = Ground(Path(tmp) / "ground", own_process=True)
        cfg = config_from_mapping({
            "node": {"id": "soak", "workers": 2, "mmap_threshold_kib": args.mmap_threshold_kib,
                     **({} if args.worker_max_frames is None else {"worker_max_frames": args.worker_max_frames})},
            "receive": {"address": "tcp://127.0.0.1:0", "queue_policy": "drop_oldest", "queue_frames": 4},
            "detect": {"backend": args.detect_backend},
            "spool": {"path": str(Path(tmp) / "spool.sqlite")},
            "downlink": {"address": ground.address, "budget_bytes_per_s": 10_000_000},
            "log": {"level": "warning"},
        })
        node = NodeDaemon(cfg)
        node.start()
        pids = [os.getpid(), *(w._proc.pid for w in node.workers)]
        # a DAQ at a set rate never waits: a frame the node has no room for is dropped and counted
        rate_hz = args.rate_hz
        rig = LoopbackDaq(node.receiver_endpoint, itertools.cycle(frames), sndhwm=4, send_timeout_ms=0,
                          rate_hz=rate_hz, series_id=1)
        t_start = time.monotonic()
        daq_sent = daq_dropped = 0
        # about every second, each process's resident set; a worker's memory swings by the size of a
        # frame's temporaries between idle and mid-frame, so minutes are summarised by their
        # floor (the least seen) and their peak (the most)
        samples: list[tuple[float, list[float]]] = []
        jitter = random.Random(0)
        next_sample = t_start + args.warmup_s
        mid_warmup: tuple[float, int] | None = None   # CPU seconds and frames half-way through the warm-up
        switched = False                               # --overload: the DAQ sends at twice the rate now
        while time.monotonic() - t_start < args.seconds:
            node.step()
            if mid_warmup is None and time.monotonic() - t_start >= args.warmup_s / 2:
                mid_warmup = (sum(cpu_s(pid) for pid in pids), node.counters.frames_processed)
            if args.overload and not switched and time.monotonic() >= next_sample:
                # CPU seconds per frame over the warm-up, all processes: what the node sustains
                # with its workers (or the machine's cores) busy; twice that from now (the second
                # half of the warm-up: the start-up's imports and engine loads excluded). Memory is
                # sampled from one more warm-up later, once the queues the overload fills are full:
                # the reference is then the node under the load measured, not the step into it
                assert mid_warmup is not None
                cpu_per_frame = ((sum(cpu_s(pid) for pid in pids) - mid_warmup[0])
                                 / max(1, node.counters.frames_processed - mid_warmup[1]))
                busy = min(len(node.workers), os.cpu_count() or 1)
                rate_hz = 2.0 * busy / cpu_per_frame
                rig.close()
                daq_sent, daq_dropped = rig.counters.frames_sent, rig.counters.frames_dropped
                rig = LoopbackDaq(node.receiver_endpoint, itertools.cycle(frames), sndhwm=4,
                                  send_timeout_ms=0, rate_hz=rate_hz, series_id=2)
                switched = True
                next_sample += args.warmup_s
                continue
            if time.monotonic() >= next_sample:
                if not samples:
                    cpu_start, frames_start = [cpu_s(pid) for pid in pids], node.counters.frames_processed
                    fds_start = fd_count([os.getpid(), *(w.pid for w in node.workers if w.pid)])
                    parts_start = [rss_parts(pid) for pid in pids]
                samples.append((time.monotonic() - t_start, slot_rss(node)))
                # a random interval: a fixed one, locked to the frame rate, would see each worker
                # at the same point of its frame every time
                next_sample += jitter.uniform(0.5, 1.5)
        fds_end = fd_count([os.getpid(), *(w.pid for w in node.workers if w.pid)])
        parts_end = [rss_parts(pid) for pid in pids]
        recycled = node.counters.workers_recycled + node.counters.workers_died
        cpu_ms = [] if recycled else [(cpu_s(pid) - c0) * 1000 / max(1, node.counters.frames_processed - frames_start)
                                      for pid, c0 in zip(pids, cpu_start, strict=True)]
        rig.close()
        daq_sent += rig.counters.frames_sent
        daq_dropped += rig.counters.frames_dropped
        time.sleep(0.5)
        for _ in range(200):   # take in what is still on its way
            node.step()
        node.finish()
        c = node.counters
        status = node.status()
        node.close(drain_s=5)
        ground.close()
    minutes = by_minute(samples, args.warmup_s * (2 if args.overload else 1))
    first, last = minutes[0], minutes[-1]
    floor_growth = last["floor"] - first["floor"]
    peak_growth = last["peak"] - first["peak"]
    print(f"soak {args.seconds:.0f} s at {args.rate_hz} Hz, {args.size}x{args.size}, 2 workers, "
          f"mmap_threshold_kib {args.mmap_threshold_kib}, worker_max_frames {cfg.node.worker_max_frames}; "
          f"memory sampled {len(samples)} times (about every second) after {args.warmup_s:.0f} s warm-up")
    print(f"frames received {c.frames_received}, processed {c.frames_processed}, dropped {c.frames_dropped}, "
          f"rejected {c.frames_rejected}; detections {c.detections}, records spooled {c.spooled}, "
          f"acked {status['spool']['acked']['record'] if status['spool'] else 'n/a'}; conserved {c.conserved()}")
    print(f"memory (main + workers), first minute after warm-up -> last minute: floor {first['floor']:.1f} -> "
          f"{last['floor']:.1f} MB, peak {first['peak']:.1f} -> {last['peak']:.1f} MB; bound: growth <= {BOUND_MB:.0f} MB")
    step = max(1, len(minutes) // 20)
    print("floor / peak by minute (min: MB): " + ", ".join(
        f"{m['minute']}: {m['floor']:.1f}/{m['peak']:.1f}" for m in minutes[::step] + minutes[-1:]))
    print("per-process floor (main, workers...), first minute -> last minute, MB: " + ", ".join(
        f"{a:.1f} -> {b:.1f}" for a, b in zip(first["floors"], last["floors"], strict=True)))
    print("resident MB by kind (anon / file / shmem), after warm-up -> at the end: " + "; ".join(
        f"{name} " + " / ".join(f"{a.get(k, 0):.1f} -> {b.get(k, 0):.1f}" for k in ("anon", "file", "shmem"))
        for name, a, b in zip(["main"] + [f"worker {i}" for i in range(len(pids) - 1)], parts_start, parts_end,
                              strict=True)))
    print(f"workers replaced: {c.workers_recycled} after worker_max_frames {cfg.node.worker_max_frames}, "
          f"{c.workers_died} died")
    print("CPU ms per frame the node processed, after warm-up (main with the rig's sender thread, workers...): "
          + (", ".join(f"{ms:.0f}" for ms in cpu_ms) if cpu_ms else "n/a (the worker processes changed)"))
    worst = max(floor_growth, peak_growth)
    slope = slope_mb_per_h(minutes)
    # what the DAQ queued and the node never saw can only be what its socket and the node's held
    # when the DAQ closed (linger 0): at most the two high-water marks
    in_transit = daq_sent - c.frames_received
    accounted = c.conserved() and 0 <= in_transit <= 8 and (
        c.frames_dropped == len(c.dropped_seqs) or len(c.dropped_seqs) == c.dropped_seqs.maxlen)
    print(f"frames: DAQ sent {daq_sent} (dropped {daq_dropped} itself at its socket), node received "
          f"{c.frames_received} ({in_transit} in transit at the DAQ's close): processed {c.frames_processed}, dropped {c.frames_dropped} "
          f"({len(c.dropped_seqs)} sequence numbers kept), rejected {c.frames_rejected}; "
          f"{'all accounted for' if accounted else 'NOT all accounted for'}"
          + (f"; overload at {rate_hz:.2f} Hz, twice the {rate_hz / 2:.2f} Hz measured" if args.overload else ""))
    print(f"file descriptors (main + workers) after warm-up -> at the end: {fds_start} -> {fds_end}")
    print(f"growth: floor {floor_growth:+.1f} MB, peak {peak_growth:+.1f} MB "
          f"({'within' if worst <= BOUND_MB else 'BEYOND'} the bound); floor slope {slope:+.1f} MB/hour "
          f"(bound {SLOPE_BOUND_MB_PER_H:.0f})")
    failed = worst > BOUND_MB or slope > SLOPE_BOUND_MB_PER_H or fds_end > fds_start or not accounted
    return 1 if failed else 0


def by_minute(samples: list[tuple[float, list[float]]], warmup_s: float) -> list[dict[str, Any]]:
    """Whole minutes after the warm-up: the floor (sum of each process's least) and the peak (the
    largest total seen) of the memory, and each process's floor."""
    groups: dict[int, list[list[float]]] = {}
    for t, per_process in samples:
        groups.setdefault(int((t - warmup_s) // 60), []).append(per_process)
    out = []
    for minute, rows in sorted(groups.items()):
        if len(rows) < 30 and out:  # a last, partial minute says little about a floor (a short run keeps its one)
            continue
        floors = [min(col) for col in zip(*rows, strict=True)]
        # the floor adds each process's least: all of them idle at once is rarely sampled
        out.append({"minute": minute, "floor": sum(floors), "peak": max(sum(r) for r in rows),
                    "floors": floors})
    return out

if __name__ == "__main__":
    sys.exit(main())
