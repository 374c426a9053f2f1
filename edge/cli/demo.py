"""``astro-edge demo``: a whole node on loopback, scored against the twin's truth; or, with
``--protocol-only``, just frames through the wire protocol. The node, sockets, astropy and the
twin are imported inside the handlers, so ``astro-edge --help`` stays fast.

The node demo: a ground station, a node (the shipped engine, an embedded config) and a DAQ
streaming twin frames with every anomaly family and transients, all over tcp://127.0.0.1
(``edge.testing``); then a scoreboard: frames/s, latency, bytes in versus bytes sent down, recall
of each anomaly family and of transients at the ground, close doubles measured as blends,
ordinary detections sent, drops, records lost. The node's config is the defaults but for
addresses, files and ``[triage] send_blends = true``: close doubles are blends, not anomalies,
and reach the ground only when the policy sends what its multiplicity fit calls two sources.

The protocol-only demo is ``edge.cli.protocol_demo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.log import get_logger

log = get_logger(__name__)

#: the demo node's log level (its embedded config's ``[log] level``): warnings and errors only, so
#: that the progress line and the scoreboard are what the terminal shows
DEMO_LOG_LEVEL = "warning"
#: a detection is "at S/N >= 20" for the recall figures when its truth's expected S/N is
SNR_FOR_RECALL = 20.0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to the ``astro-edge`` parser."""
    p = subparsers.add_parser(
        "demo", help="a whole node on loopback, scored against the twin's truth",
        description="Start a ground receiver, a node with the shipped engine and an embedded config, "
                    "and the rig streaming twin frames with every anomaly family and transients, all "
                    "over tcp://127.0.0.1; then print a scoreboard (frames/s, latency, bytes in vs "
                    "down, recall per anomaly family at S/N >= 20, ordinary detections sent, drops, "
                    "records lost). With --protocol-only: just frames through the wire protocol, "
                    "with a corrupted frame and a skipped sequence number caught.")
    p.add_argument("--n", type=int, default=None, metavar="N", help="frames to send (default 50; 12 with --protocol-only)")
    p.add_argument("--size", type=int, default=2048, metavar="PX", help="frame side in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=None, metavar="SEED", help="seed for the frames (default 2026; 1 with --protocol-only)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="node pipeline processes (default 2)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the ground's files, the spool and scoreboard.json (default: a new temporary folder)")
    p.add_argument("--detect-backend", choices=["sep", "fast"], default="sep",
                   help="the node's [detect] backend (default sep, as in a node's config)")
    p.add_argument("--protocol-only", action="store_true",
                   help="only stream frames through the protocol and show what arrived")
    p.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none",
                   help="--protocol-only: payload compression (default none)")
    p.add_argument("--synthetic", action="store_true",
                   help="--protocol-only: synthetic star fields even when the twin is available")
    p.add_argument("--no-faults", action="store_true",
                   help="--protocol-only: do not inject the corrupted frame and the skipped sequence number")
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.protocol_only:
        args.n = 12 if args.n is None else args.n
        args.seed = 1 if args.seed is None else args.seed
        from edge.cli.protocol_demo import run_protocol_demo

        return run_protocol_demo(args)
    return run_node_demo(args)


# --- the node demo ---------------------------------------------------------------------------

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
    detect_backend: str = "sep"        # [detect] backend of the node


def run_node_demo(args: argparse.Namespace) -> int:
    """The node demo; exit code 0 when no accepted record was lost."""
    from edge.errors import ConfigError
    from edge.log import configure

    n = 50 if args.n is None else args.n
    if n < 1 or not 256 <= args.size <= 8192 or args.workers < 1:
        raise ConfigError("--n must be >= 1, --size in [256, 8192] and --workers >= 1 for the node demo")
    # as `astro-edge run` does, the node logs at its config's level: the embedded config's is
    # warning, so one line per frame does not bury the progress line
    configure(json=args.log_json, level=DEMO_LOG_LEVEL)
    board = run_demo(DemoSettings(n_frames=n, size_px=args.size, seed=2026 if args.seed is None else args.seed,
                                  workers=args.workers, out_dir=Path(args.out) if args.out else None,
                                  detect_backend=args.detect_backend))
    print_scoreboard(board)
    return 0 if board["records_lost"] == 0 and board["conserved"] else 1


def node_config(work: Path, receive: str, downlink: str, catalog: Path, workers: int,
                engine_path: str = "", detect_backend: str = "sep") -> Any:
    """The embedded node config of the demo (every section at its defaults except addresses, files
    and ``[triage] send_blends``, on so that close doubles reach the ground as measured blends)."""
    from edge.config import config_from_mapping

    return config_from_mapping({
        "node": {"id": "demo-node", "workers": workers},
        "receive": {"address": receive, "queue_policy": "block", "queue_frames": 4},
        "catalog": {"reference": str(catalog)},
        "engine": {"path": engine_path},
        "detect": {"backend": detect_backend},
        "triage": {"send_blends": True},
        "spool": {"path": str(work / "spool.sqlite")},
        "downlink": {"address": downlink, "budget_bytes_per_s": 10_000_000},
        "log": {"json": True, "level": DEMO_LOG_LEVEL},
    }, where="embedded demo config")


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run ground, node and rig on loopback; return the scoreboard as a dict."""
    from astropy.table import vstack

    from edge.ground.receiver import RECORDS_NAME
    from edge.node.daemon import NodeDaemon
    from edge.testing import Ground, LoopbackDaq, every_family_twin_config, twin_source
    from firmware_bridge.rig import FrameSource, read_downlink
    from twin import reference_catalog, simulate_frame

    work = Path(settings.out_dir) if settings.out_dir else Path(tempfile.mkdtemp(prefix="astro-edge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    tcfg = every_family_twin_config(settings.size_px)
    catalog = work / "reference_catalog.ecsv"
    reference_catalog(tcfg, settings.seed).write(catalog, overwrite=True)
    truths: list[Any] = []
    bytes_in = 0

    def frames() -> Iterator[FrameSource]:
        """The twin's frames, made in the DAQ's thread while the earlier ones travel."""
        nonlocal bytes_in
        for i in range(settings.n_frames):
            tf = simulate_frame(tcfg, i, settings.seed)
            truths.append(tf.truth)
            bytes_in += tf.raw_adu.nbytes
            # an empty start time is stamped when the frame leaves, as a DAQ stamps an acquisition
            yield dataclasses.replace(twin_source(tf), start_utc="")

    stats: dict[str, Any] = {}
    with Ground(work / "ground") as ground:
        cfg = node_config(work, "tcp://127.0.0.1:0", ground.address, catalog, settings.workers,
                          settings.engine_path, settings.detect_backend)
        node = NodeDaemon(cfg, status_path=work / "node_status.json")
        node.start()
        t0 = time.monotonic()
        rig = LoopbackDaq(node.receiver_endpoint, frames(), expected_frames=settings.n_frames, sndhwm=2,
                          send_timeout_ms=120_000)
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
            if not rig.is_alive() and done >= settings.n_frames - rig.counters.frames_dropped:
                break
            if time.monotonic() - t0 > 30 * 60:
                raise TimeoutError("the demo did not finish in 30 minutes")
        try:
            stats["sender"] = dataclasses.asdict(rig.join())
        except Exception as exc:  # noqa: BLE001 - reported on the scoreboard
            stats["rig_error"] = f"{type(exc).__name__}: {exc}"
            log.error("demo.rig_failed", error=stats["rig_error"])
        node.finish()
        t_processed = time.monotonic()
        # the spool empties as the ground acknowledges
        while node.spool is not None and len(node.spool) > 0 and time.monotonic() - t_processed < 120:
            time.sleep(0.05)
        status = node.status()
        node.close()
    if settings.progress:
        print(file=sys.stderr)
    records_path = ground.out_dir / RECORDS_NAME
    board = scoreboard(vstack(truths) if truths else None,
                       read_downlink(records_path) if records_path.exists() else [], ground.summaries(), status,
                       dataclasses.asdict(ground.counters) if ground.counters else {}, bytes_in=bytes_in,
                       elapsed_s=t_processed - t0, n_frames=settings.n_frames, radius_px=settings.radius_px)
    board["out_dir"] = str(work)
    board["rig"] = stats
    (work / "scoreboard.json").write_text(json.dumps(board, indent=1, default=str), encoding="utf-8")
    return board


def scoreboard(truth: Any, records: list[dict[str, Any]], summaries: Any, status: dict[str, Any],
               ground: dict[str, Any], *, bytes_in: int, elapsed_s: float, n_frames: int,
               radius_px: float) -> dict[str, Any]:
    """The demo's figures from truth, what reached the ground, and the node's own counters."""
    from firmware_bridge.rig import match_and_score

    labels = np.asarray(truth["label"]).astype(str)
    special = np.isin(labels, ("anomaly", "transient"))
    size = np.asarray(truth["size_px"], float)

    def score(rows: Any) -> dict[str, Any]:
        return match_and_score(np.asarray(truth["frame"])[rows], np.asarray(truth["x"])[rows],
                               np.asarray(truth["y"])[rows], labels[rows],
                               np.asarray(truth["family"]).astype(str)[rows], records,
                               radius_px=radius_px, truth_size_px=size[rows])

    bright = special & (np.asarray(truth["snr_expected"], float) >= SNR_FOR_RECALL)
    bright_score = score(np.flatnonzero(bright))
    special_score = score(np.flatnonzero(special))
    n_special_sent = special_score["n_matched"]
    counters = status["counters"]
    detections = counters["detections"]
    # every detection not matched to an anomaly or transient counts as ordinary (bogus included);
    # the matched ones are a conservative count of the special detections (undetected ones are not)
    ordinary_detections = max(detections - n_special_sent, 0)
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
        "close_double_blends": _blends(truth, np.flatnonzero(bright & (np.asarray(truth["family"]).astype(str)
                                                                       == "close_double")), records, radius_px),
        "ordinary_detections": ordinary_detections,
        "ordinary_sent": ordinary_sent,
        "ordinary_sent_fraction": ordinary_sent / ordinary_detections if ordinary_detections else None,
        "drops": {"frames_dropped": counters["frames_dropped"], "frames_rejected": counters["frames_rejected"],
                  "dropped_seqs": counters["dropped_seqs"]},
        "conserved": counters["conserved"],
        "frames_received": counters["frames_received"],
        "ground": ground,
    }


def _blends(truth: Any, rows: Any, records: list[dict[str, Any]], radius_px: float) -> dict[str, int]:
    """Close doubles (truth rows) with a record within ``radius_px`` at the ground, and of those the
    ones whose multiplicity fit calls them two sources (``edge.blend``)."""
    from edge.blend import LR_MIN

    by_frame: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_frame.setdefault(int(r["frame"]), []).append(r)
    sent = blends = 0
    for i in rows:
        near = [r for r in by_frame.get(int(truth["frame"][i]), [])
                if np.hypot(float(r["x"]) - float(truth["x"][i]), float(r["y"]) - float(truth["y"][i])) <= radius_px]
        sent += bool(near)
        blends += any((r.get("blend_lr") or 0.0) >= LR_MIN for r in near)
    return {"n_truth": len(rows), "n_sent": sent, "n_blend": blends}


def print_scoreboard(board: dict[str, Any], out: Any = None) -> None:
    """The scoreboard as a few readable lines on ``out`` (None: standard output at the time)."""
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
    cd = board["close_double_blends"]
    print(f"  close doubles     {cd['n_sent']}/{cd['n_truth']} at the ground, {cd['n_blend']} of them measured as "
          "two sources (the demo's [triage] send_blends sends what the multiplicity fit calls two)", file=out)
    print(f"  ordinary sent     {board['ordinary_sent']}/{board['ordinary_detections']} = "
          f"{fmt(board['ordinary_sent_fraction'])}", file=out)
    print(f"  drops             {board['drops']['frames_dropped']} frames dropped, "
          f"{board['drops']['frames_rejected']} rejected", file=out)
    print(f"  records           {board['records_spooled']} spooled, {board['records_unique']} at the ground, "
          f"{board['records_lost']} lost; counters conserved: {board['conserved']}", file=out)
    if board.get("rig", {}).get("rig_error"):
        print(f"  rig failed        {board['rig']['rig_error']}", file=out)
    print(f"  output            {board['out_dir']}", file=out)
