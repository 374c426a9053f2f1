"""Ground station over a long mission: FITS rewrite and restart against a bare table write.

A ground folder is filled with --records records received over --days UTC days (JSON lines, as
the ground writes them; the last day is "today"). Then, in one process:

1. a GroundReceiver starts on it with no FITS tables yet (it rebuilds every day's table) and
   closes: "first start + rebuild";
2. a GroundReceiver starts again on the complete folder: "restart" (its id index is up to date;
   today's rows are decoded for today's table);
3. --batch new records arrive over a real socket, and ``write_fits()`` rewrites today's table:
   "interval rewrite", what the ground pays every --fits-interval-s while records come in;
4. references in the same run: astropy's ``Table.write`` of today's rows alone ("bare write", the
   least any FITS rewrite of the day can cost) and ``edge.ground.writers.write_fits`` of the whole
   mission's JSON lines into one table (what a single mission-long table costs per rewrite).

The ratio printed last is interval rewrite / bare write.

    .venv/bin/python bench/ground.py [--records 60000] [--days 3] [--batch 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def make_record(i: int, rng):  # type: ignore[no-untyped-def]
    from edge.records import DownlinkRecord, compress_stamp, record_id

    frame, index = divmod(i, 7)
    return DownlinkRecord(
        record_id=record_id("bench", "s1", frame, index), node_id="bench", detector_id="d1", series_id="s1",
        frame=frame, index=index, frame_time="2026-11-28T10:00:00.000000Z",
        processed_time="2026-11-28T10:00:01.000000Z", x=10.0 + index, y=20.0, x_err=0.1, y_err=0.1,
        ra=150.1, dec=2.2, label="galaxy", confidence=0.6, probs={"star": 0.4, "galaxy": 0.6},
        entropy=0.67, aleatoric=0.6, epistemic=0.07, anomaly_score=3.0, anomaly_pvalue=0.004,
        snr=30.0, flux_e=900.0, flux_err_e=30.0, a_px=3.0, b_px=2.0, theta_rad=0.3, flags=0, new=False,
        reasons=("uncertain", "unknown"), priority=2.0, policy_version=1, engine_id="stampnet:1:a25e200fbc20",
        calibration_id="bundle:0123456789ab", stamp=compress_stamp(rng.normal(size=(2, 32, 32)).astype("f4")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60000, help="records already stored (default 60000)")
    parser.add_argument("--days", type=int, default=3, help="UTC days they arrived over (default 3)")
    parser.add_argument("--batch", type=int, default=500, help="new records before the rewrite (default 500)")
    args = parser.parse_args()

    import numpy as np
    import zmq
    from astropy.table import Table

    from edge.codec import encode_msgpack, to_json_line
    from edge.ground.receiver import GroundReceiver
    from edge.ground.writers import RECORDS_NAME, write_fits
    from edge.link.wire import DATA, TAG
    from edge.log import configure

    configure(json=True, level="warning")
    rng = np.random.default_rng(1)
    days = [f"2026-11-{10 + d:02d}" for d in range(args.days)]
    today = days[-1]
    with tempfile.TemporaryDirectory(prefix="bench-ground-") as tmp:
        out = Path(tmp) / "ground"
        out.mkdir()
        t0 = time.perf_counter()
        with (out / RECORDS_NAME).open("w", encoding="utf-8") as fh:
            for i in range(args.records):
                day = days[i * args.days // args.records]
                fh.write(to_json_line(make_record(i, rng), received_time=f"{day}T12:00:00.000000Z") + "\n")
        size_mb = (out / RECORDS_NAME).stat().st_size / 1e6
        print(f"{args.records} records over {args.days} days written ({size_mb:.0f} MB of JSON lines) "
              f"in {time.perf_counter() - t0:.1f} s")

        def utc_now() -> str:
            return f"{today}T13:00:00.000000Z"

        t0 = time.perf_counter()
        with GroundReceiver("tcp://127.0.0.1:0", out, fits_interval_s=0, utc_now=utc_now):
            pass
        first = time.perf_counter() - t0

        t0 = time.perf_counter()
        g = GroundReceiver("tcp://127.0.0.1:0", out, fits_interval_s=0, utc_now=utc_now)
        restart = time.perf_counter() - t0
        try:
            ctx = zmq.Context.instance()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(g.address)
            for i in range(args.records, args.records + args.batch):
                sock.send_multipart([TAG, DATA, encode_msgpack(make_record(i, rng))])
            taken, end = 0, time.monotonic() + 30
            while taken < args.batch and time.monotonic() < end:
                taken += g.poll(50)
            sock.close()
            t0 = time.perf_counter()
            [today_file] = g.write_fits()
            rewrite = time.perf_counter() - t0
        finally:
            g.close()
        rows = Table.read(today_file)
        t0 = time.perf_counter()
        rows.write(Path(tmp) / "bare.fits", overwrite=True)
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_fits(out / RECORDS_NAME, Path(tmp) / "mission.fits")
        whole = time.perf_counter() - t0
        n_files = len(list(out.glob("downlink-*.fits")))

    print(f"first start + rebuild of {n_files} day tables: {first:.2f} s")
    print(f"restart on {args.records + args.batch} records:        {restart:.2f} s")
    print(f"interval rewrite of today ({len(rows)} rows):     {rewrite:.3f} s")
    print(f"reference: bare Table.write of today's rows:  {bare:.3f} s")
    print(f"reference: one mission-long table from JSON:  {whole:.2f} s")
    print(f"ratio interval rewrite / bare write = {rewrite / bare:.2f}")


if __name__ == "__main__":
    main()
