"""Benchmark: the node end to end (ingest to spool) against sep alone, on the same frames.

Twin frames of 4096x4096 with about 2000 sources are made first (not timed). The node (an
in-process NodeDaemon with its worker processes, the shipped engine unless --engine says
otherwise) receives them over tcp://127.0.0.1 from a FrameSender thread as fast as it takes them,
and the clock runs from the first frame sent to the last frame's records committed to the spool.
The reference, in the same run, is sep alone (background plus extraction, one process, as the
node would run it with nothing else) on the same frames after calibration. ``--backend`` picks
the node's detector (``[detect] backend``: sep, the default, or fast); the reference is always sep.
A table gives the median milliseconds of each pipeline stage per timed frame (the frame summaries'
``timings_ms``, in a worker), and each worker's peak resident set (VmHWM) is printed. The last
line prints node frames/s / sep frames/s: 1.0 means everything beyond sep is hidden by overlap.

    .venv/bin/python bench/pipeline.py [--frames 8] [--size 4096] [--workers 2] [--engine DIR]
                                       [--backend sep|fast] [--mmap-threshold-kib 4096]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

# bench/ holds scripts named like packages (twin.py): keep it off the import path, and take
# sep's reference run from bench/detect.py by file
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
_spec = importlib.util.spec_from_file_location("bench_detect", _BENCH / "detect.py")
_bench_detect = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_detect)
run_sep = _bench_detect.run_sep


def twin_frames(n: int, size: int, seed: int) -> list:
    from edge.cli.progress import track
    from twin import DetectorModel, TwinConfig, simulate_frame

    cfg = dataclasses.replace(TwinConfig(detector=DetectorModel(shape_px=(size, size))),
                              n_stars=1600, n_galaxies=400)
    return [simulate_frame(cfg, i, seed) for i in track(range(n), "simulating frames")]


def peak_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM) in MB, NaN once it has ended."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def node_fps(frames: list, workers: int, engine: str, work: Path, mmap_threshold_kib: int = 4096,
             backend: str = "sep") -> tuple[float, dict, dict[str, float], list[float]]:
    from edge.config import config_from_mapping
    from edge.node.daemon import NodeDaemon
    from firmware_bridge import FrameSender
    from firmware_bridge.rig import header_fields

    cfg = config_from_mapping({
        "node": {"id": "bench", "workers": workers, "mmap_threshold_kib": mmap_threshold_kib},
        "receive": {"address": "tcp://127.0.0.1:0", "queue_policy": "block", "queue_frames": 2},
        "engine": {"path": engine},
        "detect": {"backend": backend},
        "spool": {"path": str(work / "spool.sqlite"), "max_bytes": 1 << 30},
        "log": {"level": "warning"},
    })
    node = NodeDaemon(cfg)
    node.start()
    c = node.counters
    try:
        def send(batch: list, series_id: int) -> threading.Thread:
            def main() -> None:
                with FrameSender(node.receiver_endpoint, sndhwm=2, send_timeout_ms=600_000) as sender:
                    sender.start_series(series_id)
                    for tf in batch:
                        start, exposure_s, wcs, keywords = header_fields(tf.header, fallback_utc="")
                        sender.send_frame(tf.raw_adu, start_utc=start, exposure_s=exposure_s,
                                          wcs=wcs, keywords=keywords)
                    sender.end_series()
                    sender.close(linger_ms=600_000)  # queued frames must still leave
            t = threading.Thread(target=main, daemon=True)
            t.start()
            return t

        # warm-up: one frame per worker loads caches and the engine's first-run costs
        send(frames[:workers], 1).join()
        while c.frames_processed < workers:
            node.step()
        warm = {stage: len(ms) for stage, ms in node._stage_ms.items()}
        t0 = time.perf_counter()
        timed = frames[workers:]
        sender = send(timed, 2)
        while c.frames_processed < workers + len(timed):
            node.step()
        elapsed = time.perf_counter() - t0
        sender.join()
        stages = {stage: statistics.median(list(ms)[warm.get(stage, 0):])
                  for stage, ms in node._stage_ms.items() if len(ms) > warm.get(stage, 0)}
        peaks = [peak_mb(w.pid) for w in node.workers if w.pid]
        return len(timed) / elapsed, node.counters.snapshot(), stages, peaks
    finally:
        node.close()


def sep_fps(frames: list) -> float:
    from calibration import Calibrator
    from edge.detect import DetectSettings

    cal = Calibrator.without_bundle()
    settings = DetectSettings()
    calibrated = []
    for tf in frames:
        header = {k: tf.header[k] for k in tf.header if k not in ("COMMENT", "HISTORY", "")}
        out = cal.calibrate(tf.raw_adu, exposure_s=float(header["EXPTIME"]), header=header)
        calibrated.append((out.image_e.copy(), out.variance_e2.copy(), out.mask != 0))
    run_sep(*calibrated[0], settings)  # warm-up
    t0 = time.perf_counter()
    for image, variance, mask in calibrated:
        run_sep(image, variance, mask, settings)
    return len(frames) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--engine", default="", help="engine folder (default: the shipped engine)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--backend", choices=("sep", "fast"), default="sep",
                   help="the node's [detect] backend (default sep); the reference is always sep")
    p.add_argument("--mmap-threshold-kib", type=int, default=4096,
                   help="[node] mmap_threshold_kib for the node (default 4096; 0: glibc's moving threshold)")
    args = p.parse_args()
    from edge.log import configure

    configure(json=True, level="warning", stream=sys.stderr)
    t = time.perf_counter()
    frames = twin_frames(args.frames + args.workers, args.size, args.seed)
    print(f"made {len(frames)} twin frames {args.size}x{args.size} in {time.perf_counter() - t:.1f} s; "
          f"cores {os.cpu_count()}, workers {args.workers}, detect backend {args.backend}")
    with tempfile.TemporaryDirectory() as tmp:
        node, snap, stages, peaks = node_fps(frames, args.workers, args.engine, Path(tmp), args.mmap_threshold_kib,
                                      args.backend)
    print(f"node: {node:.3f} frames/s (ingest to spool), {snap['detections']} detections, "
          f"{snap['spooled']} records spooled, p50 latency {snap['latency_p50_ms']:.0f} ms")
    print("peak resident MB per worker (VmHWM): " + ", ".join(f"{mb:.0f}" for mb in peaks))
    print("median ms per frame in a worker, by stage:")
    for stage, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<12} {ms:8.1f}")
    print(f"  {'(sum)':<12} {sum(stages.values()):8.1f}")
    ref = sep_fps(frames[args.workers:])
    print(f"sep alone (background + extraction, one process): {ref:.3f} frames/s")
    print(f"ratio node/sep = {node / ref:.2f}")


if __name__ == "__main__":
    main()
