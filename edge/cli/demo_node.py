"""``astro-edge demo``: a whole node on loopback, scored against the twin's truth.

A ground receiver, a node (the shipped engine, an embedded default config) and the rig streaming
digital-twin frames with every anomaly family and transients, all over tcp://127.0.0.1; then a
scoreboard: frames/s, latency, bytes in versus bytes sent down, recall of each anomaly family and
of transients at the ground, the fraction of ordinary detections sent, drops, records lost.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.log import get_logger

log = get_logger(__name__)

#: the demo's sky: a moderately filled field with every anomaly family and some transients
DEMO_TWIN = {
    "n_stars": 250, "n_galaxies": 60, "n_anomalies_per_family": 1, "n_transients": 2,
    "cosmic_ray_rate_per_s": 0.05, "streak_probability": 0.05,
}
#: the demo node's log level (its embedded config's ``[log] level``): warnings and errors only, so
#: that the progress line and the scoreboard are what the terminal shows
DEMO_LOG_LEVEL = "warning"
#: a detection is "at S/N >= 20" for the recall figures when its truth's expected S/N is
SNR_FOR_RECALL = 20.0


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: frames, their size, the seed, where to write, how the node runs."""

    n_frames: int = 50
    size_px: int = 2048
    seed: int = 2026
    workers: int = 2
    out_dir: Path | None = None
    radius_px: float = 3.0
    progress: bool = True
    engine_path: str = ""              # empty: the shipped default engine


def twin_config(size_px: int) -> Any:
    """The twin's config for the demo: every anomaly family switched on, transients, a modest field."""
    from twin import ANOMALY_FAMILIES, DetectorModel, TwinConfig

    return dataclasses.replace(TwinConfig(detector=DetectorModel(shape_px=(size_px, size_px))),
                               anomalies=tuple(ANOMALY_FAMILIES), **DEMO_TWIN)


def node_config(work: Path, receive: str, downlink: str, catalog: Path, workers: int,
                engine_path: str = "") -> Any:
    """The embedded node config of the demo (every section at its defaults except addresses and files)."""
    from edge.config import config_from_mapping

    return config_from_mapping({
        "node": {"id": "demo-node", "workers": workers},
        "receive": {"address": receive, "queue_policy": "block", "queue_frames": 4},
        "catalog": {"reference": str(catalog)},
        "engine": {"path": engine_path},
        "spool": {"path": str(work / "spool.sqlite")},
        "downlink": {"address": downlink, "budget_bytes_per_s": 10_000_000},
        "log": {"json": True, "level": DEMO_LOG_LEVEL},
    }, where="embedded demo config")


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run ground, node and rig on loopback; return the scoreboard as a dict."""
    from astropy.table import vstack

    from edge.ground.receiver import FRAMES_NAME, RECORDS_NAME, GroundReceiver
    from edge.node.daemon import NodeDaemon
    from firmware_bridge import FrameSender
    from firmware_bridge.protocol import format_utc
    from firmware_bridge.rig import header_fields
    from twin import reference_catalog, simulate_frame

    work = Path(settings.out_dir) if settings.out_dir else Path(tempfile.mkdtemp(prefix="astro-edge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    tcfg = twin_config(settings.size_px)
    catalog = work / "reference_catalog.ecsv"
    reference_catalog(tcfg, settings.seed).write(catalog, overwrite=True)

    ground_ready = threading.Event()
    stop_ground = threading.Event()
    ground_box: dict[str, Any] = {}

    def ground_main() -> None:
        with GroundReceiver("tcp://127.0.0.1:0", work / "ground", fits_interval_s=0) as ground:
            ground_box["address"] = ground.address
            ground_ready.set()
            ground.serve(stop_ground.is_set, timeout_ms=50)
            ground.write_fits()
            ground_box["counters"] = dataclasses.asdict(ground.counters())

    gthread = threading.Thread(target=ground_main, name="ground", daemon=True)
    gthread.start()
    ground_ready.wait(10)
    cfg = node_config(work, "tcp://127.0.0.1:0", ground_box["address"], catalog, settings.workers,
                      settings.engine_path)
    node = NodeDaemon(cfg, status_path=work / "node_status.json")
    node.start()

    truths = []
    sent_at: list[float] = []
    bytes_in = 0
    stats: dict[str, Any] = {}

    def rig_main() -> None:
        nonlocal bytes_in
        try:
            _play()
        except BaseException as exc:  # noqa: BLE001 - reported on the scoreboard, never a hang
            stats["rig_error"] = f"{type(exc).__name__}: {exc}"
            log.error("demo.rig_failed", error=stats["rig_error"])

    def _play() -> None:
        nonlocal bytes_in
        with FrameSender(node.receiver_endpoint, detector_id="twin-cam", sndhwm=2,
                         send_timeout_ms=120_000) as sender:
            sender.start_series(1, expected_frames=settings.n_frames)
            for i in range(settings.n_frames):
                tf = simulate_frame(tcfg, i, settings.seed)
                _, exposure_s, wcs, keywords = header_fields(tf.header, fallback_utc=format_utc(datetime.now(timezone.utc)))
                truths.append(tf.truth)
                # the rig stamps the acquisition time when the frame leaves, like a DAQ would
                sender.send_frame(tf.raw_adu, start_utc=format_utc(datetime.now(timezone.utc)),
                                  exposure_s=exposure_s, wcs=wcs, keywords=keywords)
                sent_at.append(time.monotonic())
                bytes_in += tf.raw_adu.nbytes
            sender.end_series()
            # give the frames still queued in ZeroMQ time to leave: closing at once would discard them
            sender.close(linger_ms=120_000)
            stats["sender"] = dataclasses.asdict(sender.counters)

    t0 = time.monotonic()
    rig = threading.Thread(target=rig_main, name="rig", daemon=True)
    rig.start()
    last = 0.0
    c = node.counters
    idle_since: float | None = None
    while True:
        node.step()
        done = c.frames_processed + c.frames_rejected + c.frames_dropped
        # the rig has finished and the node has had nothing to do for 10 s: whatever was not
        # received by now was lost on the way, and the scoreboard says so
        if not rig.is_alive() and c.frames_in_flight == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 10.0:
                break
        else:
            idle_since = None
        if settings.progress and time.monotonic() - last > 1.0:
            last = time.monotonic()
            print(f"\r  frames {done}/{settings.n_frames}  detections {c.detections}  "
                  f"spooled {c.spooled}  {time.monotonic() - t0:5.1f} s", end="", file=sys.stderr, flush=True)
        if not rig.is_alive() and done >= settings.n_frames - stats.get("sender", {}).get("frames_dropped", 0):
            break
        if time.monotonic() - t0 > 30 * 60:
            raise TimeoutError("the demo did not finish in 30 minutes")
    node.finish()
    t_processed = time.monotonic()
    # the spool empties as the ground acknowledges
    while node.spool is not None and len(node.spool) > 0 and time.monotonic() - t_processed < 120:
        time.sleep(0.05)
    status = node.status()
    node.close()
    stop_ground.set()
    gthread.join(30)
    if settings.progress:
        print(file=sys.stderr)
    elapsed = t_processed - t0

    from edge.records import read_jsonl
    from firmware_bridge.rig import match_and_score, read_downlink

    records = read_downlink(work / "ground" / RECORDS_NAME) if (work / "ground" / RECORDS_NAME).exists() else []
    summaries = read_jsonl(work / "ground" / FRAMES_NAME).messages if (work / "ground" / FRAMES_NAME).exists() else ()
    truth = vstack(truths) if truths else None
    board = scoreboard(truth, records, summaries, status, ground_box.get("counters", {}),
                       bytes_in=bytes_in, elapsed_s=elapsed, n_frames=settings.n_frames,
                       radius_px=settings.radius_px, match=match_and_score)
    board["out_dir"] = str(work)
    board["rig"] = stats
    (work / "scoreboard.json").write_text(json.dumps(board, indent=1, default=str), encoding="utf-8")
    return board


def scoreboard(truth: Any, records: list[dict[str, Any]], summaries: Any, status: dict[str, Any],
               ground: dict[str, Any], *, bytes_in: int, elapsed_s: float, n_frames: int,
               radius_px: float, match: Any) -> dict[str, Any]:
    """The demo's figures from truth, what reached the ground, and the node's own counters."""
    labels = np.asarray(truth["label"]).astype(str)
    special = np.isin(labels, ("anomaly", "transient"))
    bright = special & (np.asarray(truth["snr_expected"], float) >= SNR_FOR_RECALL)
    sel = np.flatnonzero(bright)
    size = np.asarray(truth["size_px"], float)
    bright_score = match(np.asarray(truth["frame"])[sel], np.asarray(truth["x"])[sel], np.asarray(truth["y"])[sel],
                         labels[sel], np.asarray(truth["family"]).astype(str)[sel], records, radius_px=radius_px,
                         truth_size_px=size[sel])
    all_special = np.flatnonzero(special)
    special_score = match(np.asarray(truth["frame"])[all_special], np.asarray(truth["x"])[all_special],
                          np.asarray(truth["y"])[all_special], labels[all_special],
                          np.asarray(truth["family"]).astype(str)[all_special], records, radius_px=radius_px,
                          truth_size_px=size[all_special])
    n_special_sent = special_score["n_matched"]
    counters = status["counters"]
    detections = counters["detections"]
    # every detection not matched to an anomaly or transient counts as ordinary (bogus included)
    n_special_detected = n_special_sent  # a conservative bound: undetected ones are not detections
    ordinary_detections = max(detections - n_special_detected, 0)
    ordinary_sent = len(records) - n_special_sent
    bytes_down = int((status.get("downlink") or {}).get("sent_bytes", 0))
    latency = bright_score["latency"] or special_score["latency"]
    ids = [r.get("record_id") for r in records]
    return {
        "frames": n_frames,
        "frames_processed": counters["frames_processed"],
        "frames_per_s": counters["frames_processed"] / elapsed_s if elapsed_s > 0 else None,
        "latency_node_p50_ms": counters["latency_p50_ms"],
        "latency_node_p99_ms": counters["latency_p99_ms"],
        "latency_to_ground_s": latency,
        "bytes_in": bytes_in,
        "bytes_down": bytes_down,
        "reduction": (bytes_in / bytes_down) if bytes_down else None,
        "detections": detections,
        "records_at_ground": len(records),
        "records_unique": len(set(ids)),
        "records_spooled": counters["spooled"],
        "records_lost": counters["spooled"] - len(set(ids)) - (status.get("spool") or {}).get("evicted", {}).get("record", 0),
        "summaries_at_ground": len(summaries),
        "recall_snr20_by_family": {k: v["recall"] for k, v in bright_score["recall_by_family"].items()},
        "recall_snr20_detail": bright_score["recall_by_family"],
        "ordinary_detections": ordinary_detections,
        "ordinary_sent": ordinary_sent,
        "ordinary_sent_fraction": ordinary_sent / ordinary_detections if ordinary_detections else None,
        "drops": {"frames_dropped": counters["frames_dropped"], "frames_rejected": counters["frames_rejected"],
                  "dropped_seqs": counters["dropped_seqs"]},
        "conserved": counters["conserved"],
        "frames_received": counters["frames_received"],
        "ground": ground,
    }


def print_scoreboard(board: dict[str, Any], out: Any = sys.stdout) -> None:
    """The scoreboard as a few readable lines."""
    def fmt(v: Any, spec: str = ".3g") -> str:
        return "n/a" if v is None else format(v, spec)

    lat = board["latency_to_ground_s"] or {}
    print("astro-edge demo: scoreboard", file=out)
    print(f"  frames            {board['frames_processed']}/{board['frames']} processed, "
          f"{fmt(board['frames_per_s'])} frames/s", file=out)
    print(f"  latency           node p50 {fmt(board['latency_node_p50_ms'], '.0f')} ms, "
          f"p99 {fmt(board['latency_node_p99_ms'], '.0f')} ms; frame to ground p50 "
          f"{fmt(lat.get('p50_s'))} s, p99 {fmt(lat.get('p99_s'))} s", file=out)
    print(f"  data              {board['bytes_in'] / 1e6:.1f} MB in, {board['bytes_down'] / 1e3:.1f} kB down, "
          f"reduction {fmt(board['reduction'], '.0f')}x", file=out)
    for fam, rec in sorted(board["recall_snr20_detail"].items()):
        print(f"  recall S/N>=20    {fam:<14} {rec['n_sent']}/{rec['n_truth']} = {fmt(rec['recall'])}", file=out)
    print(f"  ordinary sent     {board['ordinary_sent']}/{board['ordinary_detections']} = "
          f"{fmt(board['ordinary_sent_fraction'])}", file=out)
    print(f"  drops             {board['drops']['frames_dropped']} frames dropped, "
          f"{board['drops']['frames_rejected']} rejected", file=out)
    print(f"  records           {board['records_spooled']} spooled, {board['records_unique']} at the ground, "
          f"{board['records_lost']} lost; counters conserved: {board['conserved']}", file=out)
    if board.get("rig", {}).get("rig_error"):
        print(f"  rig failed        {board['rig']['rig_error']}", file=out)
    print(f"  output            {board['out_dir']}", file=out)
