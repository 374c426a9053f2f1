"""The review desk's commands: ``astro-edge ground review``, ``astro-edge ground labels export`` and
``astro-edge explain``. Flask, waitress, ONNX Runtime and the ground's files are imported inside
the handlers, so ``astro-edge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

DEFAULT_REVIEW_BIND = "127.0.0.1:8080"


def register(subparsers: Any) -> None:
    """Add ``explain`` to the ``astro-edge`` parser."""
    p = subparsers.add_parser(
        "explain", help="why the engine called a downlinked record what it did",
        description="Explain one record a ground stored, with the very engine that made it (found by the "
                    "record's engine id among the folders of --engines and the shipped engines, loaded "
                    "read-only): each ensemble member's vote and their disagreement, the nearest class "
                    "prototypes and training examples in the engine's embedding, and an occlusion saliency "
                    "map of the stamp for the predicted class. Prints JSON.")
    p.add_argument("record_id", metavar="RECORD_ID", help="the record's id (record_id of its JSON line)")
    p.add_argument("--ground", type=Path, required=True, metavar="DIR", help="the ground's folder (its --out)")
    _engines_option(p)
    p.add_argument("--with-stamps", action="store_true",
                   help="include the training examples' stamps in the JSON (default: class and distance only)")
    p.set_defaults(func=_explain)


def add_ground_commands(sub: Any) -> None:
    """Add ``review`` and ``labels export`` under ``astro-edge ground``."""
    p = sub.add_parser(
        "review", help="the review desk: a web page of the records, their explanation, and labelling",
        description="Serve the review desk over a ground folder: the records (filter by node, reason, class "
                    "and time; sort by priority, p-value, time or S/N), each record's cut-out, probabilities, "
                    "reasons, explanation, frame summary and sky position, per-node health plots, and a form "
                    "to label a record with a class, a new class or 'artefact' (stored in DIR/labels.sqlite "
                    "with who and when). Listens on loopback by default; anywhere else it needs "
                    "--token-file (HTTP Basic: any user name, the token as password). docs/review.md.")
    p.add_argument("--ground", type=Path, required=True, metavar="DIR", help="the ground's folder (its --out)")
    p.add_argument("--bind", dest="review_bind", default=DEFAULT_REVIEW_BIND, metavar="ADDRESS",
                   help=f"HOST:PORT to listen on (default {DEFAULT_REVIEW_BIND}; port 0: any free port)")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="a file whose first line is the access token; required beyond loopback")
    _engines_option(p)
    p.add_argument("--threads", type=int, default=4, metavar="N", help="request threads (default 4)")
    p.set_defaults(func=_review)

    labels = sub.add_parser("labels", help="the labels given at the review desk",
                            description="Work with the labels of DIR/labels.sqlite.")
    lsub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    e = lsub.add_parser(
        "export", help="write the labels file `engines finetune --labels` takes",
        description="Write each labelled record's latest label as the .npz `astro-edge engines finetune "
                    "--labels` reads: 'stamps' (n, channels, 32, 32) float32 as the records carry them and "
                    "'label' (class names; 'artefact' is written as the engines' class 'bogus' unless "
                    "--artefact-as says otherwise). Records without a stamp are left out and counted.")
    e.add_argument("--ground", type=Path, required=True, metavar="DIR", help="the ground's folder (its --out)")
    e.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .npz to write")
    e.add_argument("--engine-id", default="", metavar="ID",
                   help="only records of this engine (needed when labelled records come from engines of "
                        "different stamp shapes)")
    e.add_argument("--artefact-as", default="bogus", metavar="CLASS",
                   help="the class name artefacts are exported as (default bogus; 'artefact' keeps the name)")
    e.set_defaults(func=_export)


def _engines_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder of engine folders (or an engine folder) to look records' engines up in, before "
                        "the shipped engines (repeat for several)")


def _engine_folders(given: list[Path]) -> tuple[Path, ...]:
    from edge.node.assemble import MODELS_DIR

    return (*given, MODELS_DIR)


def _host_port(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--bind takes HOST:PORT, got {bind!r}", where="ground review")
    host = host.strip("[]")
    # one address, one socket: "localhost" may resolve to two
    return ("127.0.0.1" if host == "localhost" else host), int(port)


def _review(args: argparse.Namespace) -> int:
    from edge.ground.review import ReviewSettings, check_bind, create_app, run_until, serve
    from edge.log import get_logger

    host, port = _host_port(args.review_bind)
    token = ""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read a token from {args.token_file}: {exc}", where="ground review") from exc
        if len(token) < 16:
            raise ConfigError("the token must be at least 16 characters", where=str(args.token_file))
    check_bind(host, token)
    settings = ReviewSettings(args.ground, engines=_engine_folders(args.engines), token=token)
    app = create_app(settings)
    server = serve(app, host, port, threads=args.threads)
    log = get_logger(__name__)
    log.info("review.started", host=host, port=server.effective_port, ground=str(args.ground), auth=bool(token))
    print(f"astro-edge ground review: http://{host}:{server.effective_port}/ over {args.ground}", flush=True)
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        run_until(server, lambda: stop["now"])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.extensions["desk"].close()
    log.info("review.stopped")
    return 0


def _export(args: argparse.Namespace) -> int:
    from edge.ground.catalog import Catalog
    from edge.ground.labels import ARTEFACT, LabelStore, export_labels

    artefact_as = "" if args.artefact_as == ARTEFACT else args.artefact_as
    with Catalog(args.ground) as catalog, LabelStore(args.ground) as labels:
        done = export_labels(labels, catalog, args.out, engine_id=args.engine_id, artefact_as=artefact_as)
    total = sum(done.per_class.values())
    print(f"astro-edge ground labels export: {total} labelled stamps to {done.path}: "
          + ", ".join(f"{name} {n}" for name, n in done.per_class.items()))
    for reason, n in done.left_out.items():
        print(f"  left out {n}: {reason}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from edge.ground.catalog import Catalog
    from engines.explain import explainer_for

    with Catalog(args.ground) as catalog:
        catalog.catch_up()
        record = catalog.record(args.record_id)
    if record is None:
        raise ConfigError(f"no record {args.record_id} in {args.ground}", where=str(args.ground))
    if record.stamp is None:
        raise ConfigError(f"record {args.record_id} carries no stamp to explain", where=str(args.ground))
    with explainer_for(record.engine_id, _engine_folders(args.engines)) as explainer:
        explanation = explainer.explain(record.stamp.decompress())
    out = explanation.to_dict()
    if not args.with_stamps:
        for e in out.get("exemplars", []):
            e.pop("stamp", None)
    json.dump({"record_id": record.record_id, "label": record.label, "reasons": list(record.reasons), **out},
              sys.stdout, indent=1)
    print()
    return 0
