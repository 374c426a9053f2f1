"""``astro-edge rig inject`` on files: read real FITS frames, inject, write frames, truth and a summary.

The thin shell around :mod:`edge.commission.inject`. Each frame is read as ``astro-edge process``
reads it (:func:`edge.node.process.read_frame`), calibrated with the bundle or without one, given
its objects, and written as ``OUT/<stem>_inj.fits``: the same HDUs, header and pixel dtype, plus
the keywords ``INJSEED``, ``INJN``, ``INJFAM`` and a ``HISTORY`` line. ``OUT/truth.ecsv`` holds
the twin's truth columns plus ``file`` and ``series_id``; ``frame`` numbers the written frames in
name order, which is how ``rig replay OUT`` and ``process OUT/*_inj.fits`` number them.
``OUT/inject.json`` records the PSF each frame was drawn with and the counts. A frame that cannot
be read, calibrated or given a PSF is logged, named in the report and skipped.
"""

from __future__ import annotations

import json
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration import Calibrator
from edge import sky
from edge.commission.inject import (
    Injection,
    InjectSettings,
    frame_response,
    inject_frame,
    measure_for_injection,
)
from edge.errors import AstroEdgeError, CalibrationInputError, ConfigError
from edge.log import get_logger
from edge.node.process import read_frame

log = get_logger(__name__)

TRUTH_NAME = "truth.ecsv"
SUMMARY_NAME = "inject.json"
_FITS_SUFFIXES = (".fits", ".fit", ".fts")


@dataclass(frozen=True)
class InjectReport:
    """What one run wrote: frames, objects, the frames that failed (``path: error``) and where."""

    frames: int
    injected: int
    failed: tuple[str, ...]
    out_dir: Path
    truth: Path
    summary: Path


def output_name(path: Path | str) -> str:
    """``<stem>_inj.fits`` for a frame file (``.gz``/``.fz`` and the FITS suffix taken off)."""
    name = Path(path).name
    for suffix in (".gz", ".fz", *_FITS_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}_inj.fits"


def inject_files(paths: Sequence[Path | str], out_dir: Path | str, settings: InjectSettings, *, seed: int,
                 calibration: Path | str | None = None) -> InjectReport:
    """Inject into every frame (in name order of the outputs) and write frames, truth and summary."""
    from astropy.table import Table, vstack

    out = Path(out_dir)
    names = [output_name(p) for p in paths]
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    if twice:
        raise ConfigError(f"frames would be written to the same file {twice}; give frames of distinct names",
                          where="FRAME")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder ({exc}); choose a writable --out", where=str(out)) from exc
    calibrator = Calibrator.from_bundle(calibration) if calibration is not None else Calibrator.without_bundle()
    truths: list[Table] = []
    frames: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for path, name in sorted(zip((Path(p) for p in paths), names, strict=True), key=lambda pn: pn[1]):
        try:
            truth, summary = _inject_one(path, out / name, settings, calibrator, seed, len(truths))
        except AstroEdgeError as exc:
            log.error("inject.frame_failed", file=str(path), reason=exc.reason, error=str(exc))
            failed.append({"file": str(path), "error": str(exc) if str(path) in str(exc) else f"{path}: {exc}"})
            continue
        truths.append(truth)
        frames.append(summary)
    truth = vstack(truths) if truths else _empty_truth()
    truth.meta.update({"seed": seed, "families": list(settings.families), "per_frame": settings.per_frame,
                       "snr_min": settings.snr_min, "snr_max": settings.snr_max, "injected": True})
    truth.write(out / TRUTH_NAME, format="ascii.ecsv", overwrite=True)
    n_injected = len(truth)
    doc = {"seed": seed, "families": list(settings.families), "per_frame": settings.per_frame,
           "snr_min": settings.snr_min, "snr_max": settings.snr_max,
           "calibration": None if calibration is None else str(calibration), "truth": TRUTH_NAME,
           "n_frames": len(frames), "n_injected": n_injected, "frames": frames, "failed": failed}
    (out / SUMMARY_NAME).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    log.info("inject.done", frames=len(frames), injected=n_injected, failed=len(failed), out=str(out))
    return InjectReport(frames=len(frames), injected=n_injected,
                        failed=tuple(f["error"] for f in failed), out_dir=out,
                        truth=out / TRUTH_NAME, summary=out / SUMMARY_NAME)


def _inject_one(path: Path, out_path: Path, settings: InjectSettings, calibrator: Calibrator, seed: int,
                index: int) -> tuple[Any, dict[str, Any]]:
    """One frame: read, calibrate, measure, inject, write; its truth rows and its summary."""
    frame = read_frame(path, index)
    cal = calibrator.calibrate(frame.pixels, exposure_s=frame.exposure_s, filter_name=frame.filter_name,
                               header=frame.header)
    measured = measure_for_injection(cal, settings, where=str(path))
    response = frame_response(calibrator, cal, frame.pixels.shape, filter_name=frame.filter_name,
                              header=frame.header)
    # the frame's own generator: the same seed and frame name give the same objects, whatever else is run
    rng = np.random.default_rng([seed, zlib.crc32(out_path.name.encode())])
    inj = inject_frame(frame.pixels, measured, response, settings, rng, frame_index=index)
    families = [str(f) for f in inj.truth["family"]]
    _write_frame(path, out_path, inj.raw, seed=seed, families=families)
    written = read_frame(out_path, index)   # what the node will read: it must be exactly what was made
    same_type = written.pixels.dtype.newbyteorder("=") == inj.raw.dtype.newbyteorder("=")
    if not same_type or not np.array_equal(written.pixels, inj.raw, equal_nan=inj.raw.dtype.kind == "f"):
        raise CalibrationInputError("the written frame does not read back as injected", where=str(out_path))
    truth = inj.truth
    truth["ra_deg"], truth["dec_deg"] = sky.pixel_to_sky(sky.wcs_from_header(frame.header),
                                                         np.asarray(truth["x"]), np.asarray(truth["y"]))
    truth.add_column(np.full(len(truth), out_path.name, dtype=f"<U{max(len(out_path.name), 1)}"), index=1,
                     name="file")
    truth.add_column(np.full(len(truth), written.series_id, dtype="<U32"), index=2, name="series_id")
    summary = {"file": str(path), "out": out_path.name, "frame": index, "series_id": written.series_id,
               "shape": list(cal.shape), "noise_model": cal.noise_model,
               "gain_e_per_adu": response.gain_e_per_adu, "flat": response.flat is not None,
               "detections": inj.n_detections, "psf": _psf_summary(inj),
               "requested": inj.n_requested, "injected": len(truth), "by_family": dict(Counter(families))}
    log.info("inject.frame", file=str(path), out=str(out_path), injected=len(truth), requested=inj.n_requested,
             fwhm_px=round(inj.psf.fwhm_px, 3), beta=round(inj.psf.beta, 3))
    if len(truth) < inj.n_requested:
        log.warning("inject.crowded", file=str(path), injected=len(truth), requested=inj.n_requested)
    return truth, summary


def _psf_summary(inj: Injection) -> dict[str, Any]:
    """The PSF an injection was drawn with, and how its FWHM varies over the frame (5 x 5 points)."""
    psf = inj.psf
    ny, nx = psf.shape_px
    gy, gx = np.meshgrid(np.linspace(0, ny - 1, 5), np.linspace(0, nx - 1, 5), indexing="ij")
    fwhm = psf.fwhm_at(gx.ravel(), gy.ravel())
    return {"fwhm_px": psf.fwhm_px, "beta": psf.beta, "n_stars": psf.n_stars, "model_error": psf.model_error,
            "fwhm_min_px": float(np.nanmin(fwhm)), "fwhm_max_px": float(np.nanmax(fwhm)),
            "moments_px2": np.asarray(psf.moments).tolist()}


def _write_frame(src: Path, dst: Path, pixels: Any, *, seed: int, families: list[str]) -> None:
    """``src`` with its first 2-D image replaced by ``pixels`` and the injection keywords, as ``dst``."""
    from astropy.io import fits

    present = ",".join(dict.fromkeys(families)) or "none"
    try:
        # astropy warns about the non-standard cards some real headers carry; they are copied as they are
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(src, memmap=False) as hdul:
                hdu = next(h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2)
                checksum = any("CHECKSUM" in h.header for h in hdul)
                hdu.data = pixels
                hdu.header["INJSEED"] = (seed, "astro-edge rig inject: random seed")
                hdu.header["INJN"] = (len(families), "astro-edge rig inject: objects injected")
                hdu.header["INJFAM"] = (present, "astro-edge rig inject: families")
                hdu.header.add_history(f"astro-edge rig inject: {len(families)} objects ({present}), "
                                       f"seed {seed}; truth in truth.ecsv")
                hdul.writeto(dst, overwrite=True, output_verify="ignore", checksum=checksum)
    except OSError as exc:
        raise CalibrationInputError(f"cannot write the injected frame ({exc})", where=str(dst)) from exc


def _empty_truth() -> Any:
    from twin.truth import empty_truth

    table = empty_truth()
    table.add_column(np.zeros(0, "<U1"), index=1, name="file")
    table.add_column(np.zeros(0, "<U32"), index=2, name="series_id")
    return table
