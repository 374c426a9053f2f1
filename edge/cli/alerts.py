"""``astro-edge alerts``: the ground's records as Avro alert packets for brokers, and a look inside.

``export`` reads a ground folder's ``downlink.jsonl`` and writes one Avro container file, one
packet per record (docs/alerts.md); every line it cannot turn into an alert is counted by reason,
printed and logged, never dropped unseen. ``show`` prints packets readably, and ``tail`` the
records the grounds publish to NATS JetStream as they arrive (:mod:`edge.ground.tail`). Light on purpose:
fastavro and astropy are imported inside the handlers, so ``astro-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, ProtocolError, RecordError
from edge.records import REASONS, DownlinkRecord


def register(subparsers: Any) -> None:
    """Add ``alerts`` to the ``astro-edge`` parser."""
    p = subparsers.add_parser(
        "alerts", help="export downlinked records as Avro alert packets (ZTF-like) and show them",
        description="Alert packets for brokers: each downlinked record as an Avro packet laid out "
                    "like a ZTF alert, with its uncertainty, provenance and its stamp as gzipped "
                    "FITS cut-outs (docs/alerts.md).")
    sub = p.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND", required=True)
    e = sub.add_parser(
        "export", help="write a ground folder's records to one Avro file",
        description="Read GROUND_DIR/downlink.jsonl and write one Avro container file (deflate), "
                    "one alert packet per record. Lines that are not version 1 records, and records "
                    "that cannot become alerts, are counted by reason and reported. Prints how many "
                    "alerts and bytes it wrote.")
    e.add_argument("ground_dir", metavar="GROUND_DIR", help="the ground's output folder (astro-edge ground --out)")
    e.add_argument("--out", required=True, metavar="FILE", help="the Avro file to write, e.g. alerts.avro (replaced whole)")
    e.add_argument("--since", default=None, metavar="ISO",
                   help="only records the ground received at or after this UTC time, e.g. "
                        "2026-03-20T03:00:00Z (a record with no received time, as `astro-edge "
                        "process` writes, is taken at its frame time)")
    e.add_argument("--reason", action="append", default=[], choices=REASONS, metavar="R",
                   help=f"only records sent for this triage reason ({', '.join(REASONS)}); "
                        "repeat for any of several")
    e.set_defaults(func=_export)
    s = sub.add_parser("show", help="print the alert packets of an Avro file",
                       description="Print the first N packets of an alert file readably, then how many it holds.")
    s.add_argument("file", metavar="FILE", help="an alert file (astro-edge alerts export)")
    s.add_argument("--n", type=int, default=10, metavar="N", help="packets to print (default 10)")
    s.set_defaults(func=_show)
    t = sub.add_parser(
        "tail", help="watch the records the grounds publish to NATS JetStream",
        description="Print one line per record from the JetStream stream ASTRO_EDGE that "
                    "`astro-edge ground --publish` fills (docs/jetstream.md), as they arrive, "
                    "filtered by node and reason. Stops on Ctrl-C, after --n records, or after "
                    "--timeout-s without one.")
    t.add_argument("url", metavar="URL", help="a NATS server of the stream, nats://HOST:PORT")
    t.add_argument("--reason", default=None, choices=REASONS, metavar="R",
                   help=f"only records sent for this reason ({', '.join(REASONS)})")
    t.add_argument("--node", default=None, metavar="NODE", help="only this node's records")
    t.add_argument("--durable", default=None, metavar="NAME",
                   help="a durable consumer: the stream remembers where NAME stopped, so the next "
                        "tail with it starts there (default: none, a consumer for this run only)")
    t.add_argument("--from-start", action="store_true",
                   help="start at the stream's first record rather than the next one to arrive")
    t.add_argument("--n", type=int, default=0, metavar="N", help="stop after N records (default 0: no limit)")
    t.add_argument("--timeout-s", type=float, default=0.0, metavar="S",
                   help="stop after S seconds without a record (default 0: wait for ever)")
    t.set_defaults(func=_tail)


def _parse_since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--since {text!r} is not an ISO 8601 time such as 2026-03-20T03:00:00Z",
                          where="alerts export") from exc
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _unexportable(record: DownlinkRecord, received_time: str | None, since: datetime | None) -> str | None:
    """Why a record is left out: ``before_since`` (filtered), a time that does not parse
    (``frame_time``, ``received_time``: counted as refused), or None to export it."""
    from edge.alerts import mjd
    from firmware_bridge.protocol import parse_utc

    try:
        mjd(record.frame_time)
    except RecordError:
        return "frame_time"
    if since is None:
        return None
    try:
        when = parse_utc(received_time, key="received_time") if received_time is not None else None
    except ProtocolError:
        return "received_time"
    if when is None:
        when = parse_utc(record.frame_time, key="frame_time")
    return "before_since" if when < since else None


def _export(args: argparse.Namespace) -> int:
    from edge.alerts import write_alerts
    from edge.codec import read_jsonl
    from edge.ground.writers import RECORDS_NAME
    from edge.log import get_logger

    log = get_logger(__name__)
    source = Path(args.ground_dir) / RECORDS_NAME
    out = Path(args.out)
    if not source.is_file():
        raise ConfigError(f"{source} does not exist: give the folder `astro-edge ground --out` wrote",
                          where="alerts export")
    if not out.parent.is_dir():
        raise ConfigError(f"the folder of --out {out} does not exist", where="alerts export")
    since = _parse_since(args.since) if args.since is not None else None
    found = read_jsonl(source)
    refused: dict[str, int] = dict(found.skipped)
    kept: list[DownlinkRecord] = []
    received: dict[str, str] = {}
    for msg, received_time in zip(found.messages, found.received_times, strict=True):
        if not isinstance(msg, DownlinkRecord):
            refused["not_a_record"] = refused.get("not_a_record", 0) + 1
            continue
        if args.reason and not set(args.reason) & set(msg.reasons):
            continue
        why = _unexportable(msg, received_time, since)
        if why == "before_since":
            continue
        if why is not None:
            refused[why] = refused.get(why, 0) + 1
            log.warning("alerts.record_refused", record_id=msg.record_id, reason=why)
            continue
        kept.append(msg)
        if received_time is not None:
            received[msg.record_id] = received_time
    n = write_alerts(kept, out, received_times=received)
    size = out.stat().st_size
    n_refused = sum(refused.values())
    log.info("alerts.exported", source=str(source), out=str(out), alerts=n, bytes=size,
             refused=n_refused, refused_by_reason=refused)
    print(f"astro-edge alerts export: {n} alerts, {size} bytes written to {out}")
    if n_refused:
        detail = ", ".join(f"{reason} {count}" for reason, count in sorted(refused.items()))
        print(f"astro-edge alerts export: {n_refused} lines of {source} refused ({detail})")
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _show(args: argparse.Namespace) -> int:
    from edge.alerts import read_packets

    if args.n < 0:
        raise ConfigError("--n must be >= 0", where="alerts show")
    if not Path(args.file).is_file():
        raise ConfigError(f"{args.file} does not exist", where="alerts show")
    total = 0
    for packet in read_packets(args.file):
        total += 1
        if total > args.n:
            continue
        c, u, p = packet["candidate"], packet["uncertainty"], packet["provenance"]
        cut = packet["cutoutScience"]
        mask = packet["cutoutMask"]
        print(f"candid {packet['candid']}  record {packet['recordId']}  schema {packet['schemavsn']}")
        print(f"  frame {c['frameTime']} (MJD {c['mjd']:.6f})  x {c['x']:.2f} y {c['y']:.2f} px"
              f"  ra {_fmt(c['ra'], '.6f')} dec {_fmt(c['dec'], '.6f')} deg")
        print(f"  snr {c['snr']:.1f}  flux {c['fluxE']:.1f} +- {c['fluxErrE']:.1f} e-  new {c['isNew']}"
              f"  blend lr {_fmt(c['blendLr'], '.1f')}")
        probs = ", ".join(f"{q['label']} {q['probability']:.3f}" for q in u["probs"])
        print(f"  {u['label']} ({u['confidence']:.3f}): {probs}")
        print(f"  entropy {u['entropy']:.3f} nats (aleatoric {u['aleatoric']:.3f}, epistemic "
              f"{u['epistemic']:.3f})  anomaly p {u['anomalyPvalue']:.3g}")
        print(f"  reasons {','.join(u['reasons']) or '-'}  priority {u['priority']:.3g}")
        print(f"  engine {p['engineId']}  calibration {p['calibrationId']}  policy {p['policyVersion']}"
              f"  received {p['receivedTime'] or '-'}")
        sizes = [f"{name} {len(x['stampData'])} B" for name, x in (("science", cut), ("mask", mask)) if x]
        print(f"  cutouts {', '.join(sizes) or '-'}")
    shown = min(total, args.n)
    print(f"astro-edge alerts show: {shown} of {total} alerts in {args.file}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    import contextlib

    if not args.url.startswith(("nats://", "tls://")) or args.n < 0 or args.timeout_s < 0:
        raise ConfigError("tail takes nats://HOST:PORT, --n >= 0 and --timeout-s >= 0", where="alerts tail")
    try:
        import nats  # noqa: F401 - only to say what is missing before connecting
    except ImportError:
        raise ConfigError("alerts tail needs nats-py: pip install 'astro-edge[ground]'", where="alerts tail") from None
    from edge.ground.tail import run_tail

    with contextlib.suppress(KeyboardInterrupt):
        run_tail(args.url, node=args.node, reason=args.reason, durable=args.durable, from_start=args.from_start,
                 count=args.n, timeout_s=args.timeout_s, out=lambda line: print(line, flush=True))
    return 0
