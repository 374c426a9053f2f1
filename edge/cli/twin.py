"""``astro-edge twin``: write simulated light frames with truth, or a calibration-frame set.

Light module: it declares and checks the arguments; the twin itself is imported when a subcommand
runs. Both subcommands draw a progress bar on a terminal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.cli.progress import Bars
from edge.errors import ConfigError

PRESETS = ("default", "dsi-m13")


def register(subparsers: Any) -> None:
    """Add ``twin frames`` and ``twin calib`` to the ``astro-edge`` command."""
    twin = subparsers.add_parser(
        "twin", help="digital twin: simulated frames with truth, calibration sets",
        description="The digital twin of the instrument: simulated raw light frames with the truth of "
                    "every object in them, and bias/dark/flat sets of the same detector (docs/twin.md).")
    sub = twin.add_subparsers(dest="twin_command", metavar="ACTION", required=True)

    frames = sub.add_parser(
        "frames", help="write FITS light frames, truth.ecsv and reference_catalog.ecsv",
        description="Write N raw light frames (DIR/frame_0000.fits ..., uint16 with WCS), the truth "
                    "of every object in them (DIR/truth.ecsv) and the reference catalog a node "
                    "compares detections with (DIR/reference_catalog.ecsv, transients left out). The "
                    "same arguments give the same bytes.")
    frames.add_argument("--n", type=int, default=1, metavar="N", help="number of frames (default 1)")
    frames.add_argument("--size", type=int, default=None, metavar="PX",
                        help="square frame side in pixels, source density kept (default: the preset's, 4096 for default)")
    frames.add_argument("--anomalies", default="", metavar="FAMILY,...",
                        help="comma-separated anomaly families to inject (lens_arc,comet,lobster_psf,close_double,ghost); default none")
    frames.add_argument("--n-anomalies", type=int, default=5, metavar="N", help="objects per anomaly family (default 5)")
    frames.add_argument("--transients", type=int, default=0, metavar="N",
                        help="transients absent from the reference catalog (default 0)")
    frames.add_argument("--seed", type=int, default=0, metavar="N", help="sequence seed (default 0)")
    frames.add_argument("--preset", choices=PRESETS, default="default",
                        help="configured instrument: default (4096x4096, 0.5\"/px) or dsi-m13 (mimics m13-raw)")
    frames.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    frames.set_defaults(func=_frames)

    calib = sub.add_parser(
        "calib", help="write a bias/dark/flat calibration-frame set of the twin's detector",
        description="Write bias_000.fits, dark_000.fits and flat_FILTER_000.fits ... (raw uint16, with "
                    "IMAGETYP, EXPTIME and FILTER) of the twin's detector: the input of "
                    "`astro-edge calib build`, made by the same detector model as `twin frames`.")
    calib.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    calib.add_argument("--size", type=int, default=None, metavar="PX",
                       help="square frame side in pixels (default: the preset's)")
    calib.add_argument("--preset", choices=PRESETS, default="default",
                       help="detector of this configured instrument (default: default)")
    calib.add_argument("--n-bias", type=int, default=10, metavar="N", help="bias frames (default 10)")
    calib.add_argument("--n-dark", type=int, default=5, metavar="N", help="dark frames (default 5)")
    calib.add_argument("--dark-exptime", type=float, default=300.0, metavar="S", help="dark exposure in s (default 300)")
    calib.add_argument("--n-flat", type=int, default=10, metavar="N", help="flat frames per filter (default 10)")
    calib.add_argument("--flat-level", type=float, default=20000.0, metavar="E",
                       help="flat illumination in e per pixel (default 20000)")
    calib.add_argument("--filters", default="r", metavar="FILTER,...",
                       help="comma-separated filters for flats (default r)")
    calib.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed (default 0)")
    calib.set_defaults(func=_calib)


def _config(preset: str, size: int | None) -> Any:
    from twin.instrument import TwinConfig, dsi_m13_config

    config = dsi_m13_config() if preset == "dsi-m13" else TwinConfig()
    if size is not None:
        if size < 16:
            raise ConfigError(f"--size {size} is too small; use at least 16", where="--size")
        config = config.with_size(size)
    return config


def _frames(args: argparse.Namespace) -> int:
    from twin.frames import write_frames
    from twin.instrument import ANOMALY_FAMILIES

    families = tuple(f.strip() for f in args.anomalies.split(",") if f.strip())
    unknown = [f for f in families if f not in ANOMALY_FAMILIES]
    if unknown:
        raise ConfigError(f"unknown anomaly families {unknown}; choose from {','.join(ANOMALY_FAMILIES)}",
                          where="--anomalies")
    if args.n < 1 or args.transients < 0 or args.n_anomalies < 0:
        raise ConfigError("--n must be >= 1, --transients and --n-anomalies >= 0", where="twin frames")
    config = _config(args.preset, args.size).with_(anomalies=families, n_transients=args.transients,
                                                   n_anomalies_per_family=args.n_anomalies)
    with Bars(quiet=args.quiet) as bars:
        paths = write_frames(args.out, config, args.n, args.seed, progress=bars)
    print(f"wrote {len(paths)} frames, truth.ecsv and reference_catalog.ecsv to {args.out}")
    return 0


def _calib(args: argparse.Namespace) -> int:
    from twin.calib import make_calibration_set

    filters = tuple(f.strip() for f in args.filters.split(",") if f.strip())
    if not filters:
        raise ConfigError("--filters names no filter", where="--filters")
    config = _config(args.preset, args.size)
    with Bars(quiet=args.quiet) as bars:
        truth = make_calibration_set(args.out, config.detector, n_bias=args.n_bias, n_dark=args.n_dark,
                                     dark_exptime_s=args.dark_exptime, n_flat=args.n_flat,
                                     flat_level_e=args.flat_level, filters=filters, seed=args.seed,
                                     progress=bars)
    print(f"wrote {len(truth.files)} calibration frames to {args.out}")
    return 0
