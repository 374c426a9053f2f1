"""Spool throughput: records/s made durable by Spool.put against a raw sqlite3 insert loop, same run.

Both write the same records (stamps: the 65 objects of the real NTT frame in
tests/data/real/sep-ntt, or the folder given with --ntt, in turn), one transaction per frame of ``--per-frame`` records, into a fresh
SQLite file in WAL mode with ``synchronous=FULL`` (one fsync per commit) in a temporary folder on
the same disk. ``Spool.put`` encodes each record to msgpack, counts, checks the bound and
commits; the raw loop inserts payloads encoded beforehand into a table with a primary key and
commits. Rounds alternate between the two so load changes hit both; each figure is the best round
(the machine is shared), the median is printed beside it. The last line prints the ratio of the
best rounds.

    .venv/bin/python bench/spool.py [--frames 100] [--per-frame 20] [--rounds 9] [--ntt DIR]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# bench/ holds scripts named like the packages (engines.py, twin.py): keep it off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.utils.exceptions import AstropyUserWarning  # noqa: E402

from edge.cli.progress import track  # noqa: E402
from edge.codec import encode_msgpack  # noqa: E402
from edge.link.spool import Spool  # noqa: E402
from edge.log import configure  # noqa: E402
from edge.records import CompressedStamp, DownlinkRecord, compress_stamp, record_id  # noqa: E402
from engines.stamps import cut_stamps  # noqa: E402

#: the repository's copy of the real NTT frame (tests/data/real/README.md says where it comes from)
NTT_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "real" / "sep-ntt"


def real_stamps(folder: Path) -> list[CompressedStamp]:
    """The compressed 2x32x32 stamps of the 65 catalogued objects of the real NTT frame in ``folder``."""
    planes = []
    with warnings.catch_warnings():
        # the file's non-standard ESO-LOG header cards warn on read; that is the file's, not ours
        warnings.simplefilter("ignore", AstropyUserWarning)
        for name in ("image.fits", "back.fits", "rms.fits"):
            with fits.open(folder / name, memmap=False) as hdul:
                planes.append(hdul[0].data.astype(np.float32))
    image, back, rms = planes
    cat = np.loadtxt(folder / "image.cat", comments="#")
    stamps = cut_stamps(image - back, rms**2, None, cat[:, 1] - 1.0, cat[:, 2] - 1.0)
    return [compress_stamp(s) for s in stamps]


def make_records(n_frames: int, per_frame: int, ntt: Path) -> list[list[DownlinkRecord]]:
    """Frames of records carrying the real NTT stamps in turn."""
    rng = np.random.default_rng(1)
    stamps = real_stamps(ntt)
    frames = []
    for f in range(n_frames):
        batch = []
        for i in range(per_frame):
            p = float(rng.uniform(1e-4, 1.0))
            batch.append(DownlinkRecord(
                record_id=record_id("bench", "s1", f, i), node_id="bench", detector_id="d1",
                series_id="s1", frame=f, index=i, frame_time="2026-11-28T10:00:00Z",
                processed_time="2026-11-28T10:00:01Z", x=float(rng.uniform(0, 4096)),
                y=float(rng.uniform(0, 4096)), x_err=0.05, y_err=0.05, ra=150.1, dec=2.2,
                label="galaxy", confidence=0.7, probs={"star": 0.2, "galaxy": 0.7, "streak": 0.1},
                entropy=0.8, aleatoric=0.7, epistemic=0.1, anomaly_score=4.0, anomaly_pvalue=p,
                snr=40.0, flux_e=8000.0, flux_err_e=200.0, a_px=2.0, b_px=1.5, theta_rad=0.4,
                flags=0, new=False, reasons=("uncertain",), priority=float(-np.log10(p)),
                policy_version=1, engine_id="cnn-1", calibration_id="bundle-1",
                stamp=stamps[(f * per_frame + i) % len(stamps)]))
        frames.append(batch)
    return frames


def run_spool(path: Path, frames: list[list[DownlinkRecord]]) -> float:
    with Spool(path) as spool:
        t0 = time.perf_counter()
        for batch in frames:
            spool.put(batch)
        elapsed = time.perf_counter() - t0
        assert len(spool) == sum(len(b) for b in frames)
    return sum(len(b) for b in frames) / elapsed


def run_raw(path: Path, frames: list[list[tuple[str, float, bytes]]]) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE items (id TEXT PRIMARY KEY, priority REAL, payload BLOB)")
    t0 = time.perf_counter()
    for batch in frames:
        db.execute("BEGIN")
        db.executemany("INSERT INTO items VALUES (?, ?, ?)", batch)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return sum(len(b) for b in frames) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="transactions per round (default 100)")
    parser.add_argument("--per-frame", type=int, default=20, help="records per transaction (default 20)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per writer (default 9)")
    parser.add_argument("--ntt", type=Path, default=NTT_DIR,
                        help="folder of the sep NTT frame and its catalog (default tests/data/real/sep-ntt)")
    args = parser.parse_args()
    configure(level="warning")  # the spool's start-up lines would drown the figures
    print(f"load average before: {os.getloadavg()[0]:.2f} (cpus: {os.cpu_count()}), "
          f"sqlite {sqlite3.sqlite_version}")
    frames = make_records(args.frames, args.per_frame, args.ntt)
    encoded = [[(r.record_id, r.priority, encode_msgpack(r)) for r in batch] for batch in frames]
    size = statistics.mean(len(p) for batch in encoded for _, _, p in batch)
    results: dict[str, list[float]] = {"raw sqlite3": [], "Spool.put": []}
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        for r in track(range(args.rounds), "rounds (raw sqlite3, then Spool.put)"):
            results["raw sqlite3"].append(run_raw(Path(tmp) / f"raw{r}.sqlite", encoded))
            results["Spool.put"].append(run_spool(Path(tmp) / f"spool{r}.sqlite", frames))
    for name, rates in results.items():
        print(f"{name:12s} {max(rates):8.0f} records/s best of {args.rounds} rounds of "
              f"{args.frames} x {args.per_frame} records of {size:.0f} B (median {statistics.median(rates):.0f}), "
              f"{max(rates) / args.per_frame:.0f} durable commits/s")
    print(f"Spool.put/raw sqlite3 = {max(results['Spool.put']) / max(results['raw sqlite3']):.3f}")


if __name__ == "__main__":
    main()
