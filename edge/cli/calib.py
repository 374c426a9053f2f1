"""``astro-edge calib``: build a calibration bundle, show what one holds, measure a frame's overscan.

Light module: argparse wiring only; numpy, astropy and the calibration modules are imported
inside the handlers so ``astro-edge --help`` stays fast. Handlers return an exit code and raise
``CalibrationError`` subclasses for bad input; they never print tracebacks.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from edge.cli.progress import Bars


def register(subparsers: Any) -> None:
    """Add the ``calib`` command group to the ``astro-edge`` parser."""
    calib = subparsers.add_parser(
        "calib", help="detector calibration: build and inspect bundles",
        description="Detector calibration: build a calibration bundle (master bias, dark, flats, "
                    "bad-pixel mask, gain and read noise) from raw calibration frames, show what one "
                    "holds, measure a raw frame's overscan (docs/calibration.md).")
    sub = calib.add_subparsers(dest="calib_command", metavar="ACTION", required=True)

    build = sub.add_parser(
        "build", help="build a bundle from a folder of BIAS/DARK/FLAT FITS frames",
        description="Read every FITS frame in DIR (kind from IMAGETYP; overscan removed and trimmed "
                    "where BIASSEC/TRIMSEC say so), combine the biases, darks and each filter's flats "
                    "with sigma clipping, flag hot, dead, low-response pixels and bad columns, measure "
                    "gain and read noise by photon transfer, and write one checksummed FITS bundle "
                    "that `astro-edge run` and `process` read. Other frames in DIR are skipped.")
    build.add_argument("folder", type=Path, metavar="DIR", help="folder of calibration FITS frames")
    build.add_argument("--out", type=Path, required=True, metavar="FILE",
                       help="bundle file to write (e.g. bundle.fits)")
    build.add_argument("--trust-header-gain", action="store_true",
                       help="take gain and read noise from the GAIN/RDNOISE keywords instead of measuring them")
    build.set_defaults(func=_build)

    show = sub.add_parser(
        "show", help="print what a bundle holds and whether its checksums hold",
        description="Print a bundle's header summary (version, id, gain, read noise, inputs) and each "
                    "HDU with its shape and whether its FITS checksum holds. Exit 1 when one does not.")
    show.add_argument("bundle", type=Path, metavar="FILE", help="bundle file")
    show.set_defaults(func=_show)

    over = sub.add_parser("overscan", help="overscan level and read noise of a raw frame's BIASSEC strip, "
                          "and the gain its sky implies",
                          description="Level and read noise of a raw frame's BIASSEC strip (ADU, and e- "
                          "with a gain); with TRIMSEC, the trimmed shape and the gain implied by the "
                          "sky's shot noise against its level (light frames).")
    over.add_argument("frame", type=Path, metavar="FILE", help="raw FITS frame with a BIASSEC keyword")
    over.add_argument("--gain", type=float, default=None, metavar="GAIN",
                      help="e-/ADU for the electron figures (default: the frame's GAIN keyword)")
    over.set_defaults(func=_overscan)


def _build(args: argparse.Namespace) -> int:
    from calibration import build_bundle
    from edge.log import get_logger

    with Bars(quiet=args.quiet) as bars:
        masters, bundle_id = build_bundle(args.folder, args.out, trust_header_gain=args.trust_header_gain,
                                          progress=bars)
    ptc = masters.photon_transfer
    get_logger(__name__).info(
        "calib.bundle_built", path=str(args.out), bundle_id=bundle_id, inputs=len(masters.inputs),
        gain_e_per_adu=masters.gain_e_per_adu, read_noise_e=masters.read_noise_e,
        noise_source=masters.noise_source, bad_pixels=int((masters.bad_pixels != 0).sum()))
    print(f"wrote {args.out} (bundle {bundle_id}): {masters.n_bias} bias, {masters.n_dark} dark, "
          f"flats {dict(sorted(masters.n_flat.items()))}, {masters.shape[0]}x{masters.shape[1]} px")
    extra = (f" +- {ptc.gain_err_e_per_adu:.4f}" if ptc else "")
    print(f"gain {masters.gain_e_per_adu:.4f}{extra} e-/ADU, read noise {masters.read_noise_e:.3f} e- "
          f"({masters.noise_source}); {int((masters.bad_pixels != 0).sum())} bad pixels")
    return 0


def _show(args: argparse.Namespace) -> int:
    from calibration.bundle import describe

    info = describe(args.bundle)
    print(f"bundle {args.bundle}")
    for key, value in info.items():
        if key != "hdus":
            print(f"  {key:<12} {value}")
    for h in info["hdus"]:
        shape = "x".join(str(v) for v in h["shape"]) or "-"
        flt = f" filter={h['filter']!r}" if h["name"] == "FLAT" else ""
        print(f"  HDU {h['name']:<8} {shape:<12}{flt} checksum {'ok' if h['checksum_ok'] else 'BROKEN'}")
    return 0 if info["checksums_ok"] else 1


def _overscan(args: argparse.Namespace) -> int:
    from astropy.io import fits

    from calibration.frames import (
        check_section_fits,
        header_float,
        overscan_stats,
        parse_section,
        sky_gain,
    )
    from edge.errors import CalibrationInputError

    where = str(args.frame)
    try:
        with fits.open(args.frame, memmap=False) as hdul:
            header = hdul[0].header
            data = hdul[0].data
    except (OSError, ValueError) as exc:
        raise CalibrationInputError(f"not a readable FITS file ({exc})", where=where) from None
    if data is None or "BIASSEC" not in header:
        raise CalibrationInputError("the primary HDU has no image or no BIASSEC keyword", where=where)
    bsec = parse_section(str(header["BIASSEC"]), where=f"{where} BIASSEC")
    check_section_fits(bsec, data.shape, key="BIASSEC", where=where)
    gain = args.gain if args.gain is not None else header_float(header, "GAIN", where=where)
    s = overscan_stats(data, bsec, gain_e_per_adu=gain)
    print(f"{where}: BIASSEC {header['BIASSEC'].strip()} ({s.n_pixels} px)")
    print(f"  level       {s.level_adu:.2f} ADU")
    print(f"  read noise  {s.read_noise_adu:.3f} +- {s.read_noise_err_adu:.3f} ADU")
    if s.read_noise_e is not None:
        print(f"  read noise  {s.read_noise_e:.3f} +- {s.read_noise_err_e:.3f} e- (gain {gain} e-/ADU)")
    if "RDNOISE" in header:
        print(f"  header RDNOISE {header['RDNOISE']} e-")
    if "TRIMSEC" in header:
        tsec = parse_section(str(header["TRIMSEC"]), where=f"{where} TRIMSEC")
        check_section_fits(tsec, data.shape, key="TRIMSEC", where=where)
        rows, cols = tsec
        print(f"  trimmed shape {rows.stop - rows.start}x{cols.stop - cols.start} (TRIMSEC {header['TRIMSEC'].strip()})")
        sky = sky_gain(data[tsec].astype(float) - s.level_adu, s.read_noise_adu,
                       read_noise_err_adu=s.read_noise_err_adu)
        if sky is None:
            print("  sky         too faint against the read noise for a gain check")
        else:
            print(f"  sky         {sky.level_adu:.2f} ADU above the overscan, {sky.variance_adu2:.2f} ADU^2 "
                  f"per pixel ({sky.n_pairs} source-free pixel pairs)")
            print(f"  gain from the sky {sky.gain_e_per_adu:.3f} +- {sky.gain_err_e_per_adu:.3f} e-/ADU; "
                  f"read noise at that gain {s.read_noise_adu * sky.gain_e_per_adu:.3f} +- "
                  f"{math.hypot(s.read_noise_err_adu * sky.gain_e_per_adu, s.read_noise_adu * sky.gain_err_e_per_adu):.3f} e-")
    return 0
