"""``astro-edge commission`` as a library call: the steps in order, each one's result kept for the
report, and the node config written at the end.

Steps: read and check the science frames (one camera), build the calibration bundle, calibrate and
measure every frame, check the header's WCS, build the reference catalog, fit the twin, adapt the
engine (fine-tune, then refit the conformal set and the triage thresholds on frames the
fine-tuning did not see), write ``node.toml``. A step that the frames cannot support (no PSF
stars, too few detections for a conformal set) is skipped with its reason and the node keeps its
default for it; frames with no source at all, or of more than one camera, end with a typed error.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge import detect as detect_stage
from edge import sky
from edge.commission import adapt, catalog, measure, twinfit
from edge.commission.calib import BundleResult, build_commission_bundle
from edge.errors import CalibrationInputError
from edge.log import get_logger

log = get_logger(__name__)

Progress = Callable[[str, int, int], None]
#: a conformal set needs at least this many detections to mean anything at alpha = 0.01
MIN_CONFORMAL = 200
#: the diffuse pass's binning on a commissioned node (on Lowell's frames, 1.5 px FWHM: 0.96 of
#: the injected ghosts of S/N >= 20 found, against 0.83 without it; docs/commissioning.md)
DIFFUSE_BIN = 2


@dataclass(frozen=True)
class CommissionSettings:
    """What the command line gives."""

    out_dir: Path
    science: tuple[Path, ...]
    bias: tuple[Path, ...] = ()
    dark: tuple[Path, ...] = ()
    flat: tuple[Path, ...] = ()
    reference_catalog: Path | None = None
    base_engine: Path | None = None
    replay_frames: int = 48
    epochs: int = 8
    learning_rate: float = 1e-3
    #: injections of every known-unusual family into each fine-tuning frame (edge.commission.teach)
    teach_rounds: int = 12
    #: rounds of the twin fit and twin frames rendered in each (edge.commission.twinfit.fit_twin)
    twin_rounds: int = 12
    twin_frames: int = 8
    seed: int = 20261204
    threads: int = 2
    #: the node's detection, with the diffuse pass (edge.diffuse) on: a ghost's ring or a faint arc
    #: spread below the per-pixel threshold is found on the 2 x 2 binned frame
    detect: detect_stage.DetectSettings = field(
        default_factory=lambda: detect_stage.DetectSettings(diffuse_bin=DIFFUSE_BIN))


@dataclass
class Commissioning:
    """Every step's result, for the report and the config."""

    settings: CommissionSettings
    frames: list[Any] = field(default_factory=list)              # FrameInput of every science frame
    bundle: BundleResult | None = None
    measured: list[measure.FrameMeasurement] = field(default_factory=list)
    skipped_frames: dict[str, str] = field(default_factory=dict)
    wcs: sky.WcsCheck | None = None
    catalog_path: Path | None = None
    catalog_info: dict[str, Any] = field(default_factory=dict)
    cosmic_ray_rate: float | None = None
    twin: twinfit.FittedTwin | None = None
    labels: adapt.RealLabels | None = None
    engine_dir: Path | None = None
    point: adapt.OperatingPoint | None = None
    calibration_frames: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    config_path: Path | None = None
    images: dict[str, Any] = field(default_factory=dict)       # for the report's figures


def commission(settings: CommissionSettings, progress: Progress | None = None) -> Commissioning:
    """Run every step; return what each made (``config_path`` is the node config written)."""
    from edge.node.assemble import default_engine_dir
    from edge.node.process import read_frame

    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    c = Commissioning(settings=settings)
    tick = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        c.seconds[step] = round(now - tick, 2)
        tick = now

    if not settings.science:
        raise CalibrationInputError("no science frames given (--science FILE...)", where="commission")
    c.frames = [read_frame(p, i) for i, p in enumerate(settings.science)]
    _check_one_camera(c.frames)
    calibrator = _calibrator(c, out)
    lap("calibration")

    calibrated, detections = [], []
    # the instrument is measured (PSF, counts against flux, the fitted twin) on the sources the
    # full-resolution pass finds; the diffuse pass's extras are the node's, not the camera's
    measuring = dataclasses.replace(settings.detect, diffuse_bin=0)
    for fr, path in zip(c.frames, settings.science, strict=True):
        cal = calibrator.calibrate(fr.pixels, exposure_s=fr.exposure_s, filter_name=fr.filter_name, header=fr.header)
        image, var, mask = cal.image_e.copy(), cal.variance_e2.copy(), cal.mask.copy()
        name = Path(path).name
        try:
            m = measure.measure_frame(name, image, var, mask, fr.exposure_s, measuring, saturated=(mask & 2) > 0)
            c.measured.append(m)
        except CalibrationInputError as exc:
            c.skipped_frames[name] = str(exc)
        bkg = detect_stage.subtract_background(image, mask, settings.detect)
        calibrated.append((fr, bkg.sub_e, var, mask, image))
        # detected once here; the catalog's event count and the engine's stamps reuse these
        detections.append(detect_stage.detect(bkg.sub_e, var, mask, settings.detect))
    if progress:
        progress("measuring the frames", len(calibrated), len(calibrated))
    # a source is what the full-resolution pass finds: the diffuse pass can find a rare bump of a
    # bias frame's binned noise, and that is no star to commission on
    if sum(int(np.count_nonzero((d.flags & detect_stage.FLAG_DIFFUSE) == 0)) for d in detections) == 0:
        raise CalibrationInputError(
            "no source was detected in any science frame (darks, flats, a closed dome or thick cloud?); "
            "commissioning needs frames of the sky with stars", where="commission")
    if not c.measured:
        c.notes.append("no frame holds enough stars to measure the PSF ("
                       + "; ".join(c.skipped_frames.values())
                       + "): the twin is not fitted and the engine is not fine-tuned")
    # the figure's real frame: the one whose sky is nearest the median (a twilight frame is not typical)
    names = [Path(p).name for p in settings.science]
    sky_of = {m.name: m.sky_e for m in c.measured}
    median_sky = float(np.median(list(sky_of.values()))) if sky_of else 0.0
    typical = min(sky_of, key=lambda k: abs(sky_of[k] - median_sky)) if sky_of else names[0]
    k = names.index(typical)
    c.images = {"real": calibrated[k][4], "real_var": calibrated[k][2], "real_mask": calibrated[k][3],
                "real_name": typical}
    lap("measurement")

    fwhm = measure.summary(c.measured)["fwhm_px"] if c.measured else 2.0
    c.wcs = sky.check_wcs(c.frames[0].header, fwhm_px=fwhm,
                          expected_scale_arcsec=sky.header_pixel_scale_arcsec(c.frames[0].header))
    offsets = _catalog(c, [(s, v, m) for _, s, v, m, _ in calibrated], detections, out)
    lap("catalog")

    if c.measured:
        c.twin = twinfit.fit_twin(c.measured, _instrument(c, calibrated), measuring, rounds=settings.twin_rounds,
                                  n_frames=settings.twin_frames, seed=settings.seed, progress=progress)
        c.images["twin"], c.images["twin_var"], c.images["twin_mask"] = _twin_image(c.twin.config, settings.seed)
    lap("twin")

    base = settings.base_engine or default_engine_dir()
    _adapt(c, calibrated, detections, offsets, base, out, progress)
    lap("engine")
    c.config_path = write_config(c, out)
    return c


def _check_one_camera(frames: Sequence[Any]) -> None:
    """Every frame of one camera: one shape, one DETECTOR / INSTRUME, one binning."""
    def ident(fr: Any) -> tuple[Any, ...]:
        h = fr.header
        return (tuple(fr.pixels.shape), str(h.get("DETECTOR", h.get("INSTRUME", ""))).strip(),
                str(h.get("CCDSUM", "")).strip())

    kinds = {ident(fr) for fr in frames}
    if len(kinds) > 1:
        listed = "; ".join(f"shape {k[0]}, camera {k[1] or '?'}, binning {k[2] or '?'}" for k in sorted(kinds, key=str))
        raise CalibrationInputError(f"the science frames come from more than one camera or mode ({listed}); "
                                    "commission one camera at a time", where="commission")


def _calibrator(c: Commissioning, out: Path) -> Any:
    from calibration import Calibrator

    s = c.settings
    if s.bias:
        c.bundle = build_commission_bundle(s.bias, s.dark, s.flat, s.science, out / "calibration.fits")
        return Calibrator.from_bundle(out / "calibration.fits")
    c.notes.append("no bias frames given: the node calibrates from the frames' headers (GAIN/RDNOISE or a "
                   "per-amplifier AGAIN_nn/ARDNS_nn) or, without them, estimates the noise from each frame")
    return Calibrator.without_bundle()


def _catalog(c: Commissioning, frames: list[tuple[Any, Any, Any]], detections: list[Any],
             out: Path) -> list[tuple[float, float]]:
    """The reference catalog (given, or built from the frames' stack) and each frame's offset."""
    table, info = catalog.build_pixel_catalog(frames, c.settings.detect)
    offsets = [o if o is not None else (0.0, 0.0) for o in info.offsets_px]
    c.catalog_info = {**info.as_meta(), "sources": len(table)}
    if c.settings.reference_catalog is not None:
        c.catalog_path = Path(c.settings.reference_catalog).resolve()
    else:
        c.catalog_path = catalog.write_catalog(table, out / "reference.ecsv").resolve()
    # single-frame events: detections of S/N >= 7 that the catalog does not hold (cosmic rays, mostly)
    from scipy.spatial import cKDTree

    events, area_s = 0, 0.0
    tree = cKDTree(np.c_[np.asarray(table["x_px"], float), np.asarray(table["y_px"], float)]) if len(table) else None
    for (sub, _, _), cands, off, fr in zip(frames, detections, offsets, c.frames, strict=True):
        if len(cands) == 0 or tree is None:
            continue
        d, _ = tree.query(np.c_[cands.x + off[0], cands.y + off[1]])
        events += int(np.count_nonzero((d > 2.0) & (np.nan_to_num(cands.snr) >= 7)))
        area_s += sub.size / 1e6 * fr.exposure_s
    if len(frames) > 1 and area_s > 0:
        c.cosmic_ray_rate = events / area_s
    return offsets


def _instrument(c: Commissioning, calibrated: list[Any]) -> twinfit.Instrument:
    fr = c.frames[0]
    if c.bundle is not None:
        m = c.bundle.masters
        gain, rn = c.bundle.noise.gain_e_per_adu, c.bundle.noise.read_noise_e
        overscan = float(np.median([_overscan(f) for f in c.frames]))
        bias_adu = overscan + float(np.median(m.bias_adu))
        saturate_e = (m.saturate_adu - bias_adu) * gain
        flat = next(iter(m.flats.values()), None)
        vignetting = 0.1 if flat is None else float(1.0 - np.median(_corners(flat)))
    else:
        from calibration.noise import header_noise

        gain, rn = header_noise(fr.header) or (1.0, float(c.measured[0].sky_noise_e))
        bias_adu, saturate_e, vignetting = 500.0, 60000.0 * gain, 0.1
    scale = c.wcs.scale_arcsec if c.wcs is not None and c.wcs.plausible else sky.header_pixel_scale_arcsec(fr.header)
    return twinfit.Instrument(gain_e_per_adu=gain, read_noise_e=rn, bias_adu=bias_adu, saturate_e=saturate_e,
                              pixel_scale_arcsec=scale, filter_name=str(fr.filter_name or ""),
                              vignetting=vignetting, cosmic_ray_rate_per_s=c.cosmic_ray_rate or 0.1)


def _overscan(fr: Any) -> float:
    from calibration.frames import overscan_stats, parse_section

    sec = fr.header.get("BIASSEC")
    if not sec:
        return 0.0
    return float(overscan_stats(np.asarray(fr.pixels, np.float32), parse_section(str(sec), where="BIASSEC")).level_adu)


def _corners(flat: Any) -> Any:
    ny, nx = flat.shape
    h, w = max(1, ny // 20), max(1, nx // 20)
    return np.concatenate([flat[:h, :w].ravel(), flat[:h, -w:].ravel(), flat[-h:, :w].ravel(), flat[-h:, -w:].ravel()])


def _twin_image(config: Any, seed: int) -> tuple[Any, Any, Any]:
    from edge.commission.twinfit import calibrated_twin_frame

    return calibrated_twin_frame(config, 0, seed + 7)


def _adapt(c: Commissioning, calibrated: list[Any], detections: list[Any], offsets: list[tuple[float, float]],
           base: Path, out: Path, progress: Progress | None) -> None:
    """Fine-tune on the fitted twin and the labels not in doubt; refit on the held-out frames."""
    from engines.manifest import load_manifest
    from engines.stamps import cut_for
    from engines.training.train import package_engine  # noqa: F401 - the train extra must be there

    s = c.settings
    recipe = load_manifest(base).normalisation
    frames = []
    for (fr, sub, var, mask, _), cands, off in zip(calibrated, detections, offsets, strict=True):
        frames.append(adapt.FrameDetections(name=fr.series_id, cands=cands,
                                            stamps=cut_for(recipe, sub, var, mask, cands.x, cands.y), offset_px=off))
    n = len(frames)
    held = [i for i in range(n) if n >= 3 and i % 3 == 2]
    fit = [i for i in range(n) if i not in held]
    c.calibration_frames = [Path(s.science[i]).name for i in held]
    engine_dir = out / "engine"
    if engine_dir.exists():
        shutil.rmtree(engine_dir)
    if c.twin is not None and s.epochs > 0:
        from edge.commission.teach import (
            TEACH_COPIES,
            balance_galaxies,
            injected_examples,
            merge,
            repeat,
        )

        taught = injected_examples([(calibrated[i][4], calibrated[i][2], calibrated[i][3]) for i in fit],
                                   recipe, s.detect, rounds=s.teach_rounds, seed=s.seed)
        taught = repeat(taught, TEACH_COPIES)
        c.labels = merge(balance_galaxies(adapt.label_real([frames[i] for i in fit]), taught), taught)
        version = f"{load_manifest(base).version}-{_slug(c)}"
        adapt.adapt_engine(base, twinfit.preset(c.twin.config), c.labels, engine_dir, version=version,
                           replay_frames=s.replay_frames, epochs=s.epochs, learning_rate=s.learning_rate,
                           seed=s.seed, threads=s.threads,
                           progress=progress)
    else:
        shutil.copytree(base, engine_dir, ignore=shutil.ignore_patterns("*.sig", "build*.json"))
        c.notes.append("the engine is the base engine, not fine-tuned (" +
                       ("no fitted twin" if c.twin is None else "--epochs 0") + ")")
    c.engine_dir = engine_dir.resolve()
    if held:
        stamps = np.concatenate([frames[i].stamps for i in held])
    else:
        # one or two frames: every other detection calibrates (the fine-tuning saw only labelled ones)
        stamps = np.concatenate([f.stamps for f in frames])[1::2]
    if len(stamps) < MIN_CONFORMAL:
        c.notes.append(f"only {len(stamps)} detections to refit the conformal set on (at least {MIN_CONFORMAL} "
                       "are needed): the engine keeps its twin-made set and the node its default thresholds")
        return
    from edge.node.assemble import open_engine
    from edge.triage import TriagePolicy

    engine = open_engine(engine_dir, backend="onnxruntime", precision="fp32", threads=s.threads)
    try:
        logits, embedding = engine.infer(stamps)
    finally:
        engine.deactivate()
    manifest = load_manifest(engine_dir)
    c.point = adapt.operating_point(logits, embedding, manifest.scoring, manifest.classes,
                                    TriagePolicy().classes_of_interest)
    adapt.write_recalibrated(manifest, c.point, engine_dir)


def _slug(c: Commissioning) -> str:
    det = str(c.frames[0].header.get("DETECTOR", c.frames[0].header.get("INSTRUME", "camera")))
    word = "".join(ch if ch.isalnum() else "-" for ch in det.split()[0].lower()).strip("-") or "camera"
    return f"commissioned-{word}"


def write_config(c: Commissioning, out: Path) -> Path:
    """DIR/node.toml: a complete node config for the commissioned camera (absolute paths)."""
    s = c.settings
    d = s.detect
    lines = ["# node config written by `astro-edge commission` (report.md says how each value was chosen)", ""]
    if c.bundle is not None:
        lines += ["[calibration]", f'bundle = "{(out / "calibration.fits").resolve()}"', ""]
    lines += ["[detect]", f'backend = "{d.backend}"', f"threshold_snr = {d.threshold_snr}",
              f"background_box_px = {d.background_box_px}", f"diffuse_bin = {d.diffuse_bin}", ""]
    lines += ["[engine]", f'path = "{c.engine_dir}"', ""]
    lines += ["[triage]"]
    if c.point is not None:
        p = c.point
        lines += [f"confidence_min = {p.confidence_min:.6g}", f"epistemic_max_nats = {p.epistemic_max_nats:.6g}",
                  f"unusual_confidence_min = {p.unusual_confidence_min:.6g}", "alpha = 0.01"]
    lines += [""]
    lines += ["[catalog]", f'reference = "{c.catalog_path}"',
              f"use_header_wcs = {'true' if c.wcs is not None and c.wcs.plausible else 'false'}",
              f"min_new_snr = {adapt.MIN_NEW_SNR}", ""]
    path = out / "node.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
