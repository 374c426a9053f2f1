"""One frame's path through the node, as one straight line.

``Pipeline.process`` runs the stages in order: calibrate, subtract background, detect, cut
stamps, infer, score, sky positions and "new", triage, multiplicity of the sent detections
(``edge.blend``: one versus two point sources of the frame's own PSF; before triage, on every
star, when the policy sends blends), build records and the frame summary. The
daemon (live, over ZeroMQ) and ``astro-edge process`` (offline, on FITS files) both call it, so
what a test measures offline is what the daemon does live.

This module touches no socket, file, SQLite or thread: the calibrator, engine, scorer, catalog,
clock and random generator come in as arguments. Each seam is a small Protocol below
(:class:`Calibrator`, :class:`Engine`, :class:`Scorer`): ``calibration.Calibrator``,
``engines.runtime`` backends and ``engines.scoring.score`` satisfy them, and a test may pass any
object that does. It logs one thing of its own: whether a frame could be registered onto a pixel
reference catalog (``catalog.registered`` at debug; ``catalog.unregistered`` as a warning, and
nothing in that frame is "new").
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge import blend as blend_stage
from edge import detect as detect_stage
from edge import sky
from edge.errors import ConfigError, DetectionError
from edge.log import get_logger
from edge.records import DownlinkRecord, FrameSummary, compress_stamp, record_id
from edge.triage import TriagePolicy, TriageResult, triage
from engines.scoring import Scores, ScoringConstants, score
from engines.stamps import RECIPES, cut_for
from firmware_bridge.protocol import utc_now

if TYPE_CHECKING:
    from astropy.wcs import WCS

    from calibration import CalibratedFrame
    from engines.manifest import EngineManifest

#: labels whose "new" (no catalog counterpart) means something astrophysical; an artefact such as
#: a cosmic ray never has a counterpart, so "new" would say nothing about it
ASTROPHYSICAL_LABELS = ("star", "galaxy")
#: the catalog match radius is this many times the detection's position error (or the floor)
MATCH_SIGMAS = 3.0

log = get_logger(__name__)


class Calibrator(Protocol):
    """Turns raw pixels into electrons, their variance and a mask (``calibration.Calibrator``)."""

    def calibrate(self, raw: NDArray[Any], *, exposure_s: float, filter_name: str | None = None,
                  header: Mapping[str, Any] | None = None,
                  out: CalibratedFrame | None = None) -> CalibratedFrame: ...


class Engine(Protocol):
    """Classifies stamps: (N, K, C) member logits and an (N, D) embedding (``engines.runtime``)."""

    manifest: EngineManifest

    @property
    def engine_id(self) -> str: ...

    def infer(self, stamps: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...


class Scorer(Protocol):
    """Turns an engine's outputs into per-detection scores (``engines.scoring.score``)."""

    def __call__(self, logits: NDArray[Any], embedding: NDArray[Any],
                 constants: ScoringConstants) -> Scores: ...


@dataclass(frozen=True)
class FrameInput:
    """A raw frame and what the node needs to know about it, whether it came from a socket or a file."""

    detector_id: str
    series_id: str
    seq: int
    frame_time: str                    # acquisition start, UTC ISO 8601
    exposure_s: float
    pixels: NDArray[Any]               # raw (integer) or already calibrated (float) pixels
    header: Mapping[str, Any] = field(default_factory=dict)   # FITS-style keywords incl. WCS
    filter_name: str | None = None


@dataclass(frozen=True)
class FrameResult:
    """What one frame produced: the records to spool and the frame summary."""

    records: tuple[DownlinkRecord, ...]
    summary: FrameSummary
    labels: tuple[str, ...]            # the label of every detection, sent or not
    #: with a shadow engine: (detections where its top-1 class agrees with the live engine's, detections)
    shadow: tuple[int, int] | None = None


class Pipeline:
    """Configured once, then called on frames; the engine may be swapped between two frames."""

    def __init__(self, *, node_id: str, calibrator: Calibrator, engine: Engine,
                 detect_settings: detect_stage.DetectSettings, policy: TriagePolicy,
                 catalog: sky.ReferenceCatalog | None = None, min_match_radius_arcsec: float = 1.0,
                 seed: int = 0, scorer: Scorer = score, clock: Callable[[], float] = time.perf_counter,
                 now: Callable[[], str] = utc_now, use_header_wcs: bool = True,
                 min_match_radius_px: float = 2.0, min_new_snr: float = 0.0,
                 register_max_shift_px: float = 50.0) -> None:
        engine.manifest.check_normalisation(tuple(RECIPES))
        if catalog is not None and not catalog.in_pixels and not use_header_wcs:
            raise ConfigError("a reference catalog with RA/Dec alone needs the frames' WCS: set "
                              "use_header_wcs = true, or give a catalog with x_px/y_px columns "
                              "(edge.commission.catalog)", where=catalog.source)
        self.node_id = node_id
        self.calibrator = calibrator
        self.engine = engine
        self.detect_settings = detect_settings
        self.policy = policy
        self.catalog = catalog
        self.min_match_radius_arcsec = min_match_radius_arcsec
        #: false: the frame's WCS is ignored (records carry null ra/dec)
        self.use_header_wcs = use_header_wcs
        self.min_match_radius_px = min_match_radius_px
        self.min_new_snr = min_new_snr
        self.register_max_shift_px = register_max_shift_px
        self.seed = seed
        self.scorer = scorer
        self._clock = clock
        self._now = now
        self._outputs: dict[tuple[int, ...], CalibratedFrame] = {}   # calibrator output buffers, by raw frame shape
        #: an engine run beside the live one on the same stamps, only to measure agreement
        self.shadow: Engine | None = None

    def process(self, frame: FrameInput, *, dropped_frames: Sequence[int] = ()) -> FrameResult:
        """Run every stage on one frame and return its records and summary."""
        timings: dict[str, float] = {}
        tick = self._clock()

        def lap(stage: str) -> None:
            nonlocal tick
            now = self._clock()
            timings[stage] = round((now - tick) * 1000.0, 3)
            tick = now

        cal = self.calibrator.calibrate(frame.pixels, exposure_s=frame.exposure_s,
                                        filter_name=frame.filter_name, header=frame.header,
                                        out=self._reusable(frame.pixels.shape))
        self._outputs[frame.pixels.shape] = cal
        lap("calibrate")
        bkg = detect_stage.subtract_background(cal.image_e, cal.mask, self.detect_settings)
        lap("background")
        cands = detect_stage.detect(bkg.sub_e, cal.variance_e2, cal.mask, self.detect_settings)
        lap("detect")
        recipe = self.engine.manifest.normalisation
        stamps = cut_for(recipe, bkg.sub_e, cal.variance_e2, cal.mask, cands.x, cands.y)
        lap("stamps")
        logits, embedding = self.engine.infer(stamps)
        lap("infer")
        shadow = None
        if self.shadow is not None:
            shadow_recipe = self.shadow.manifest.normalisation
            shadow_stamps = (stamps if shadow_recipe == recipe else
                             cut_for(shadow_recipe, bkg.sub_e, cal.variance_e2, cal.mask, cands.x, cands.y))
            shadow_logits, _ = self.shadow.infer(shadow_stamps)
            # by class name: the two engines may have different classes
            live_names = np.asarray(self.engine.manifest.classes, dtype=object)
            shadow_names = np.asarray(self.shadow.manifest.classes, dtype=object)
            agree = (shadow_names[shadow_logits.mean(axis=1).argmax(axis=1)]
                     == live_names[logits.mean(axis=1).argmax(axis=1)])
            shadow = (int(agree.sum()), len(stamps))
            lap("shadow")
        scores = self.scorer(logits, embedding, self.engine.manifest.scoring)
        lap("score")
        classes = self.engine.manifest.classes
        labels = tuple(classes[i] for i in scores.label_index.tolist())
        wcs = sky.wcs_from_header(frame.header) if self.use_header_wcs else None
        ra, dec = sky.pixel_to_sky(wcs, cands.x, cands.y)
        new = self._new(wcs, ra, dec, cands, labels, seq=frame.seq)
        lap("sky")
        multiplicity = _Multiplicity(bkg.sub_e, cal.variance_e2, cal.mask, cands)
        if self.policy.send_blends:
            multiplicity.measure(np.flatnonzero(np.asarray(labels, dtype=object) == "star"))
            lap("blend")
        verdict = triage(self.policy, labels=labels, confidence=scores.confidence,
                         epistemic_nats=scores.epistemic, anomaly_pvalue=scores.anomaly_pvalue,
                         new=new, rng=self.frame_rng(frame), blend_lr=multiplicity.lr)
        lap("triage")
        multiplicity.measure(np.flatnonzero(verdict.send))
        lap("multiplicity")
        engine_id = self.engine.engine_id
        calibration_id = cal.bundle_id or f"none:{cal.noise_model}"
        processed = self._now()
        records = tuple(
            self._record(frame, int(i), cands, scores, labels, classes, ra, dec, new, verdict,
                         stamps, engine_id, calibration_id, processed, multiplicity)
            for i in np.flatnonzero(verdict.send)
        )
        lap("records")
        summary = FrameSummary(
            node_id=self.node_id, detector_id=frame.detector_id, series_id=frame.series_id,
            frame=frame.seq, frame_time=frame.frame_time, detections=len(cands),
            by_class=dict(Counter(labels)), sent_by_reason=verdict.counts_by_reason(),
            sent=verdict.sent, suppressed=verdict.suppressed, dropped_frames=tuple(dropped_frames),
            noise_model=cal.noise_model, timings_ms=timings, engine_id=engine_id,
            policy_version=self.policy.version, capped=verdict.capped,
        )
        return FrameResult(records=records, summary=summary, labels=labels, shadow=shadow)

    def frame_rng(self, frame: FrameInput) -> np.random.Generator:
        """The audit sample's generator for this frame: the same frame always draws the same sample,
        whichever worker runs it and however often (a frame re-sent after a crash gives the same records)."""
        return np.random.default_rng([self.seed, zlib.crc32(frame.series_id.encode()), frame.seq])

    def _reusable(self, shape: tuple[int, ...]) -> CalibratedFrame | None:
        # keyed by the raw shape: a frame trimmed by its TRIMSEC has outputs of another shape
        return self._outputs.get(shape)

    def _new(self, wcs: WCS | None, ra: NDArray[np.float64], dec: NDArray[np.float64],
             cands: detect_stage.Candidates, labels: tuple[str, ...], *, seq: int = -1) -> NDArray[np.bool_]:
        # a star or galaxy bright enough, with no catalog source within max(floor, 3 sigma): pixel
        # catalogs after registering the frame onto their grid, sky catalogs through the WCS
        eligible = np.isin(np.asarray(labels, dtype=object), ASTROPHYSICAL_LABELS) & (cands.snr >= self.min_new_snr)
        nothing = np.zeros(len(cands), bool)
        if self.catalog is None or not eligible.any():
            return nothing
        err_px = np.hypot(cands.x_err_px, cands.y_err_px)
        if self.catalog.in_pixels:
            radius_px = np.fmax(self.min_match_radius_px, MATCH_SIGMAS * err_px)
            match = self.catalog.match_in_pixels(cands.x, cands.y, cands.flux_e, radius_px,
                                                 max_shift_px=self.register_max_shift_px)
            if match.registration is None:
                log.warning("catalog.unregistered", seq=seq, detections=len(cands), reason=match.reason)
                return nothing
            reg = match.registration
            log.debug("catalog.registered", seq=seq, dx=round(reg.dx_px, 3), dy=round(reg.dy_px, 3),
                      pairs=reg.pairs)
            return eligible & match.new
        if wcs is None:
            return nothing
        scale = sky.pixel_scale_arcsec(wcs) or 1.0
        radius = np.fmax(self.min_match_radius_arcsec, MATCH_SIGMAS * err_px * scale)
        return eligible & ~self.catalog.has_counterpart(ra, dec, radius)

    def _record(self, frame: FrameInput, i: int, cands: detect_stage.Candidates, scores: Scores,
                labels: tuple[str, ...], classes: Sequence[str], ra: NDArray[np.float64],
                dec: NDArray[np.float64], new: NDArray[np.bool_], verdict: TriageResult, stamps: NDArray[np.float32],
                engine_id: str, calibration_id: str, processed: str, multiplicity: _Multiplicity) -> DownlinkRecord:
        def finite(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        blend = multiplicity.fields(i)

        return DownlinkRecord(
            record_id=record_id(self.node_id, frame.series_id, frame.seq, i),
            node_id=self.node_id, detector_id=frame.detector_id, series_id=frame.series_id,
            frame=frame.seq, index=i, frame_time=frame.frame_time, processed_time=processed,
            x=float(cands.x[i]), y=float(cands.y[i]),
            x_err=_finite_or(cands.x_err_px[i], 0.0), y_err=_finite_or(cands.y_err_px[i], 0.0),
            ra=finite(ra[i]), dec=finite(dec[i]), label=labels[i],
            confidence=float(scores.confidence[i]),
            probs={c: float(p) for c, p in zip(classes, scores.probs[i].tolist(), strict=True)},
            entropy=float(scores.entropy[i]), aleatoric=float(scores.aleatoric[i]),
            epistemic=float(scores.epistemic[i]), anomaly_score=float(scores.anomaly_score[i]),
            anomaly_pvalue=float(scores.anomaly_pvalue[i]), snr=_finite_or(cands.snr[i], 0.0),
            flux_e=_finite_or(cands.flux_e[i], 0.0), flux_err_e=_finite_or(cands.flux_err_e[i], 0.0),
            a_px=_finite_or(cands.a_px[i], 0.0), b_px=_finite_or(cands.b_px[i], 0.0),
            theta_rad=_finite_or(cands.theta_rad[i], 0.0), flags=int(cands.flags[i]),
            new=bool(new[i]), reasons=verdict.reasons[i], priority=float(verdict.priority[i]),
            policy_version=self.policy.version, engine_id=engine_id, calibration_id=calibration_id,
            stamp=compress_stamp(stamps[i]), blend_lr=blend[0], blend_sep_px=blend[1], blend_flux_ratio=blend[2],
        )


class _Multiplicity:
    """One frame's multiplicity figures, measured on demand: the frame's PSF once, then each
    detection at most once. A frame with too few PSF stars, or a failed fit, leaves NaN (the
    record's blend fields are then None, docs/downlink.md)."""

    def __init__(self, sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
                 cands: detect_stage.Candidates) -> None:
        self._images = (sub_e, variance_e2, mask)
        self._cands = cands
        self._psf: blend_stage.FramePsf | None = None
        self._no_psf = False
        n = len(cands)
        self.lr = np.full(n, np.nan)
        self.sep = np.full(n, np.nan)
        self.ratio = np.full(n, np.nan)
        self._done = np.zeros(n, bool)

    def measure(self, index: NDArray[np.int64]) -> None:
        todo = index[~self._done[index]]
        if todo.size == 0:
            return
        self._done[todo] = True
        if self._psf is None and not self._no_psf:
            try:
                self._psf = blend_stage.estimate_psf(*self._images, self._cands)
            except DetectionError:
                self._no_psf = True
        if self._psf is None:
            return
        c = self._cands
        m = blend_stage.measure_multiplicity(*self._images, c.x[todo], c.y[todo], self._psf,
                                             neighbours=(c.x, c.y))
        self.lr[todo], self.sep[todo], self.ratio[todo] = m.likelihood_ratio, m.separation_px, m.flux_ratio

    def fields(self, i: int) -> tuple[float, float, float] | tuple[None, None, None]:
        """(blend_lr, blend_sep_px, blend_flux_ratio) of detection i, or three None."""
        values = (self.lr[i], self.sep[i], self.ratio[i])
        if not all(np.isfinite(values)):
            return None, None, None
        return float(values[0]), float(values[1]), float(min(1.0, max(0.0, values[2])))


def _finite_or(value: float, default: float) -> float:
    return float(value) if np.isfinite(value) else default


__all__ = ["ASTROPHYSICAL_LABELS", "Calibrator", "Engine", "FrameInput", "FrameResult", "Pipeline", "Scorer"]
