"""Review desk over a long mission: list pages of 100 000 records against a bare SQLite query.

A ground folder is filled with --records records from 4 nodes (JSON lines as the ground writes
them, each with a 4-plane int8 stamp like the context engine's) and a frame summary per 50
records. Then, in one process:

1. the review catalog is built from the JSON lines ("catalog build", once per ground folder; later
   starts only read what was appended);
2. the desk is served by waitress on loopback, and each list page below is fetched over HTTP
   --repeat times (the median is kept): the first page by priority, the middle page by priority, the
   first page of one reason, one node's page by p-value, and the last page by time;
3. the reference, in the same run: the very rows and count of each page asked of the catalog's
   SQLite file directly (``sqlite3``, the same WHERE, ORDER BY, LIMIT and OFFSET).

The ratio printed last is the slowest page over its bare query.

    .venv/bin/python bench/review_pages.py [--records 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def fill(folder: Path, n: int) -> None:
    import numpy as np

    from edge.codec import to_json_line
    from edge.records import REASONS, DownlinkRecord, FrameSummary, compress_stamp, record_id

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((xx - 15.5) ** 2 + (yy - 15.5) ** 2) / 4.0)
    classes = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak", "bogus", "lens_arc", "comet")
    with (folder / "downlink.jsonl").open("w") as records, (folder / "frames.jsonl").open("w") as frames:
        for i in range(n):
            node = f"node-{i % 4}"
            frame, index = divmod(i // 4, 50)
            image = rng.normal(size=(32, 32)) + 20 * rng.uniform() * blob
            stamp = compress_stamp(np.stack([image, np.ones((32, 32)), image[::-1], np.ones((32, 32))]))
            label = classes[int(rng.integers(len(classes)))]
            reason = REASONS[int(rng.integers(len(REASONS)))]
            r = DownlinkRecord(
                record_id=record_id(node, "s1", frame, index), node_id=node, detector_id="cam", series_id="s1",
                frame=frame, index=index, frame_time=f"2026-12-0{1 + frame // 200}T10:00:{index:02d}Z",
                processed_time="2026-12-01T10:00:01Z", x=float(rng.uniform(0, 4096)), y=float(rng.uniform(0, 4096)),
                x_err=0.1, y_err=0.1, ra=150.0, dec=2.0, label=label, confidence=float(rng.uniform(0.3, 1)),
                probs={c: 1.0 / len(classes) for c in classes}, entropy=1.0, aleatoric=0.7, epistemic=0.3,
                anomaly_score=float(rng.uniform(0, 20)), anomaly_pvalue=float(rng.uniform(0.001, 1)),
                snr=float(rng.uniform(5, 200)), flux_e=1e4, flux_err_e=100.0, a_px=2.0, b_px=1.5, theta_rad=0.1,
                flags=0, new=False, reasons=(reason,), priority=float(rng.uniform(0, 10)), policy_version=1,
                engine_id="stampnet:3:000000000000", calibration_id="c1", stamp=stamp)
            received = f"2026-12-0{1 + frame // 200}T11:{(i // 1000) % 60:02d}:00Z"
            records.write(to_json_line(r, received_time=received) + "\n")
            if index == 49:
                s = FrameSummary(node_id=node, detector_id="cam", series_id="s1", frame=frame,
                                 frame_time=r.frame_time, detections=5000, by_class={"star": 5000},
                                 sent_by_reason={reason: 50}, sent=50, suppressed=4950, dropped_frames=(),
                                 noise_model="bundle", timings_ms={"detect": 300.0}, engine_id=r.engine_id,
                                 policy_version=1)
                frames.write(to_json_line(s, received_time=received) + "\n")


PAGES = (
    ("first page, by priority", "/?sort=priority", ("", [], "priority DESC, record_id", 0)),
    ("middle page, by priority", "/?sort=priority&page={middle}", ("", [], "priority DESC, record_id", -1)),
    ("reason unknown, first page", "/?reason=unknown&sort=priority",
     (" WHERE (reason_bits & ?) != 0", [2], "priority DESC, record_id", 0)),
    ("node-2 by p-value", "/?node=node-2&sort=pvalue", (" WHERE node_id = ?", ["node-2"], "anomaly_pvalue ASC, record_id", 0)),
    ("last page, by time", "/?sort=time&page={last}", ("", [], "received_time DESC, record_id", None)),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from edge.ground.catalog import Catalog
    from edge.ground.review import ReviewSettings, create_app, run_until, serve
    from edge.records import REASONS

    assert REASONS[1] == "unknown", REASONS   # the bit of the reason filter below
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        fill(folder, args.records)
        size_mb = (folder / "downlink.jsonl").stat().st_size / 1e6
        print(f"ground folder: {args.records} records, {size_mb:.0f} MB of JSON lines, written in "
              f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        with Catalog(folder) as catalog:
            catalog.catch_up()
        print(f"catalog build: {time.perf_counter() - t0:.1f} s "
              f"({(folder / 'review.sqlite').stat().st_size / 1e6:.0f} MB)")
        last = -(-args.records // 50)

        app = create_app(ReviewSettings(folder))
        server = serve(app, "127.0.0.1", 0)
        stop = threading.Event()
        thread = threading.Thread(target=run_until, args=(server, stop.is_set), daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.effective_port}"
        bare = sqlite3.connect(folder / "review.sqlite")
        worst = (0.0, 1.0)
        try:
            for name, path, (where, params, order, offset) in PAGES:
                url = base + path.format(last=last, middle=last // 2)
                offset = {None: (last - 1) * 50, -1: (last // 2 - 1) * 50}.get(offset, offset)
                http_s, sql_s = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(url, timeout=30) as page:
                        body = page.read()
                    http_s.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    bare.execute(f"SELECT count(*) FROM records{where}", params).fetchone()  # noqa: S608 - fixed clauses
                    rows = bare.execute(f"SELECT record_id, node_id, detector_id, series_id, frame, label, confidence, "  # noqa: S608 - as above
                                        f"reasons, priority, anomaly_pvalue, snr, frame_time, received_time, engine_id "
                                        f"FROM records{where} ORDER BY {order} LIMIT 50 OFFSET ?", [*params, offset]).fetchall()
                    sql_s.append(time.perf_counter() - t0)
                assert rows and rows[0][0].encode() in body, name
                h, q = statistics.median(http_s), statistics.median(sql_s)
                print(f"  {name:28s} page {1e3 * h:6.1f} ms   bare query {1e3 * q:6.2f} ms   ({len(body) / 1e3:.0f} kB)")
                worst = max(worst, (h, q))
        finally:
            bare.close()
            stop.set()
            thread.join(10)
            app.extensions["desk"].close()
    h, q = worst
    print(f"slowest page {1e3 * h:.1f} ms against its bare SQLite query {1e3 * q:.2f} ms: ratio {h / q:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
