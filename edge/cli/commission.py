"""``astro-edge commission``: commission a node on a real camera (docs/commissioning.md).

Light module: argparse wiring only; the steps live in ``edge.commission`` and are imported inside
the handler. Needs the ``train`` extra (torch, matplotlib): the engine is fine-tuned and the report
draws figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.cli.progress import Bars


def register(subparsers: Any) -> None:
    """Add the ``commission`` command to the ``astro-edge`` parser."""
    p = subparsers.add_parser(
        "commission", help="commission a node on a real camera: measure it, fit the twin, adapt the engine",
        description="Commission a node on a real camera from its own frames: build the calibration bundle "
                    "(gain checked against photon transfer and the sky), measure the instrument (PSF, sky, "
                    "saturation, counts against flux, cosmic rays, WCS), fit the twin to it, fine-tune the "
                    "engine on the fitted twin, on real detections whose label is not in doubt and on unusual "
                    "objects injected into the camera's own frames, refit the conformal set and the triage thresholds on frames the fine-tuning did not see, build the "
                    "field's reference catalog, and write DIR/node.toml (used as it is by `astro-edge run` and "
                    "`astro-edge process --config`), DIR/report.md with figures, and everything they point to "
                    "(docs/commissioning.md). Needs the train extra.")
    p.add_argument("--science", type=Path, nargs="+", required=True, metavar="FILE",
                   help="raw science frames of one camera (one is enough to run; every third one, from the "
                        "third, calibrates the conformal set when there are three or more)")
    p.add_argument("--bias", type=Path, nargs="+", default=[], metavar="FILE", help="bias frames")
    p.add_argument("--dark", type=Path, nargs="+", default=[], metavar="FILE",
                   help="dark frames (without them, hot pixels and bad columns are found in the science frames)")
    p.add_argument("--flat", type=Path, nargs="+", default=[], metavar="FILE", help="flat frames (any filters)")
    p.add_argument("--reference-catalog", type=Path, default=None, metavar="FILE",
                   help="the field's catalog (ra/dec or x_px/y_px columns); default: built from the science frames")
    p.add_argument("--engine", type=Path, default=None, metavar="DIR",
                   help="engine to start from (default: the shipped default engine)")
    p.add_argument("--replay-frames", type=int, default=48, metavar="N",
                   help="fitted-twin frames of 512 x 512 px the engine is fine-tuned on (default: 48)")
    p.add_argument("--epochs", type=int, default=8, metavar="N",
                   help="fine-tuning epochs; 0 keeps the base engine and only refits its conformal set (default: 8)")
    p.add_argument("--teach-rounds", type=int, default=12, metavar="N",
                   help="injections of every known-unusual family into each fine-tuning frame, whose detections "
                        "teach the engine those families on the camera's own sky (default: 12)")
    p.add_argument("--twin-rounds", type=int, default=12, metavar="N",
                   help="rounds of render, measure and scale that fit the twin to the camera (default: 12)")
    p.add_argument("--twin-frames", type=int, default=8, metavar="N",
                   help="twin frames rendered in each of those rounds; the fitted twin's distances are "
                        "measured on twice as many fresh ones (default: 8)")
    p.add_argument("--seed", type=int, default=20261204, metavar="N",
                   help="seed of the twin, the injections and the fine-tuning (default: 20261204)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads (default: 2)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    p.set_defaults(func=_commission)


def _commission(args: argparse.Namespace) -> int:
    from edge.commission.report import as_dict, write_report
    from edge.commission.run import CommissionSettings, commission
    from edge.errors import ConfigError

    if (args.epochs < 0 or args.replay_frames < 4 or args.threads < 1 or args.teach_rounds < 0
            or args.twin_rounds < 1 or args.twin_frames < 1):
        raise ConfigError("--epochs and --teach-rounds must be >= 0, --replay-frames >= 4, and --threads, "
                          "--twin-rounds and --twin-frames >= 1", where="commission")
    settings = CommissionSettings(out_dir=args.out, science=tuple(args.science), bias=tuple(args.bias),
                                  dark=tuple(args.dark), flat=tuple(args.flat),
                                  reference_catalog=args.reference_catalog, base_engine=args.engine,
                                  replay_frames=args.replay_frames, epochs=args.epochs,
                                  teach_rounds=args.teach_rounds, twin_rounds=args.twin_rounds,
                                  twin_frames=args.twin_frames, seed=args.seed,
                                  threads=args.threads)
    with Bars(quiet=args.quiet) as bars:
        result = commission(settings, progress=bars)
    report = write_report(result, args.out)
    data = as_dict(result)
    print(json.dumps({"config": str(result.config_path), "report": str(report), "engine": data["engine"]["path"],
                      "operating_point": data["operating_point"], "notes": data["notes"]}, indent=1))
    return 0
