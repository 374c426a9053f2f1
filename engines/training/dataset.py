"""Labelled stamp sets for training and evaluation, built from twin frames by the node's own code.

Each twin frame is calibrated with the detector's truth as the node's calibration bundle would
(bias, dark map, flat; dead, hot and saturated pixels masked) or, for a share of the training
frames, without the bad-pixel map so that hot pixels reach the engine; then
:func:`edge.detect.subtract_background`, :func:`edge.detect.detect` and
:func:`engines.stamps.cut_stamps` run on it exactly as in the node, and every candidate is labelled by
matching it to the twin's truth table: the nearest true object within a matching radius gives the
label (streaks match anywhere along their track), and a candidate with no true object is
``bogus``. Anomalies and transients get label ``-1`` and their family name, so that training can
leave them out and evaluation can score them. Where the twin also gives each family's noise-free
light (frames with anomalies or transients), a candidate belongs to an anomaly or transient only
when that object's light makes at least half of the source light at the candidate
(``UNKNOWN_LIGHT_SHARE``): an ordinary star that happens to lie on a faint ghost's donut, a comet's
tail or near an arc is a star, and a candidate made of anomaly light is the anomaly's however far
from its centre. A candidate within an anomaly's reach that is not made of its light (a star on a
ghost's donut) is neither: it keeps label ``-1`` with the family ``near_<family>``
(``NEAR_PREFIX``), so that it counts neither as a find nor as an ordinary detection.

Outlier exposure (:func:`outlier_stamps`) is a separate generator of generic random multi-blob
shapes; it never draws any of the twin's anomaly families. This module is training-side only: the
node and the runtime never import it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge.detect import Candidates, DetectSettings, detect, subtract_background
from engines.stamps import CONTEXT_NORMALISATION, RECIPES, STAMP_SIZE, cut_for, cut_stamps

if TYPE_CHECKING:
    from twin.instrument import Progress

__all__ = [
    "CLASSES",
    "NEAR_PREFIX",
    "UNUSUAL_CLASSES",
    "StampSet",
    "calibrate_twin_frame",
    "class_labels",
    "candidates_from_frame",
    "concat",
    "frame_seed",
    "label_candidates",
    "outlier_stamps",
    "stamps_from_frame",
    "twin_stamp_set",
]

#: the ordinary classes: every engine has them, first and in this order
CLASSES: tuple[str, ...] = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak", "bogus")
#: the twin's unusual families an engine may be taught as classes of their own (after CLASSES);
#: close_double is not one: a blend is measured (edge.blend), not classified
UNUSUAL_CLASSES: tuple[str, ...] = ("lens_arc", "comet", "lobster_psf", "ghost")
BOGUS = CLASSES.index("bogus")
#: label of anomalies and transients, which never enter training
UNKNOWN = -1
#: a candidate matches a point-like truth object within this distance (px)
MATCH_RADIUS_PX = 2.5
#: a candidate matches a streak within this distance of the streak's track (px)
STREAK_MATCH_PX = 3.0
#: an anomaly is extended: a candidate within this distance of its centre is a piece of it (px);
#: about the radius of light each family spreads (a ghost's donut, a comet's tail, an arc)
ANOMALY_REACH_PX = {"lens_arc": 12.0, "comet": 20.0, "lobster_psf": 12.0, "close_double": 5.0,
                    "ghost": 30.0}
#: with the light of each family known, a candidate is an anomaly's or a transient's when that
#: family's light is at least this share of all source light (sky excluded) in the 3x3 pixels at
#: the candidate's centre pixel
UNKNOWN_LIGHT_SHARE = 0.5
#: family prefix of candidates within an anomaly's reach that are not made of its light
NEAR_PREFIX = "near_"
#: truth labels that never enter training
_UNKNOWN_LABELS = ("anomaly", "transient")


@dataclass(frozen=True)
class StampSet:
    """Stamps with their labels and truth, as parallel arrays of length n."""

    stamps: NDArray[np.float32]   # (n, 2 or 4, 32, 32), see engines.stamps.RECIPES
    labels: NDArray[np.int64]     # index into CLASSES, or UNKNOWN (-1) for anomalies/transients
                                  # (class_labels gives the labels of an engine with unusual classes)
    family: NDArray[np.str_]      # CLASSES name, or the anomaly family / "transient"
    snr: NDArray[np.float64]      # measured S/N of the candidate (edge.detect)
    frame: NDArray[np.int64]      # twin frame index

    def __len__(self) -> int:
        return int(self.labels.size)

    def select(self, keep: NDArray[np.bool_] | NDArray[np.int64]) -> StampSet:
        return StampSet(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def save(self, path: Any) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Any) -> StampSet:
        with np.load(path) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})


def class_labels(data: StampSet, classes: tuple[str, ...]) -> NDArray[np.int64]:
    """The labels of ``data`` for an engine whose classes are ``classes`` (CLASSES and then unusual
    families): ordinary labels as they are, a family that is a class its index, anything else UNKNOWN."""
    labels = data.labels.copy()
    for i, name in enumerate(classes[len(CLASSES):], start=len(CLASSES)):
        labels[data.family == name] = i
    return labels


def concat(sets: list[StampSet], channels: int = 2) -> StampSet:
    """One set from several, in order (``channels``: of the empty set when there are none)."""
    if not sets:
        return StampSet(np.zeros((0, channels, STAMP_SIZE, STAMP_SIZE), np.float32), np.zeros(0, np.int64),
                        np.zeros(0, "<U16"), np.zeros(0), np.zeros(0, np.int64))
    return StampSet(**{f.name: np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(StampSet)})


def calibrate_twin_frame(frame: Any, config: Any, bundle: bool = True) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """Electrons, variance (e^2) and bad-pixel mask of a twin frame, calibrated with the detector's truth.

    ``bundle=True`` does what the node does with a calibration bundle: subtract bias and the
    per-pixel dark current, divide by the flat, put the dark's shot noise in the variance, and mask
    dead, hot and saturated pixels. ``bundle=False`` is a frame calibrated without a bad-pixel map
    (bias, flat and the nominal dark level only): hot pixels stay in it, unmasked, which is where
    the engine meets them.
    """
    det = config.detector
    raw = frame.raw_adu.astype(np.float32)
    flat = det.flat_field()
    dead = flat <= 0
    saturated = raw >= det.saturate_adu - 1
    charge_e = (raw - det.bias_frame_adu()) * np.float32(det.gain_e_per_adu)
    if bundle:
        dark_e = det.dark_current_e_per_s() * np.float32(config.exposure_s)
        mask = dead | saturated | det.hot_pixel_mask()
    else:
        dark_e = np.float32(det.dark_e_per_s * config.exposure_s)
        mask = dead | saturated
    safe_flat = np.where(dead, np.float32(1.0), flat)
    image_e = (charge_e - dark_e) / safe_flat
    variance_e2 = (np.float32(det.read_noise_e ** 2) + np.maximum(charge_e, 0.0)) / safe_flat ** 2
    image_e[mask] = 0.0
    return image_e.astype(np.float32), variance_e2.astype(np.float32), mask


def label_candidates(x: NDArray[Any], y: NDArray[Any], truth: Any,
                     light: dict[str, NDArray[Any]] | None = None) -> tuple[NDArray[np.int64], NDArray[np.str_]]:
    """Label candidates at (x, y) from one frame's truth rows: (label index, family name).

    Distances are to each truth row's segment (``x0, y0`` to ``x1, y1``: a track for streaks and
    cosmic rays, a point otherwise). A track matches within ``STREAK_MATCH_PX``; any other object
    within ``MATCH_RADIUS_PX`` plus its size (``size_px``, at most 8 px, or the family's
    ``ANOMALY_REACH_PX``).

    Without ``light``, anomalies and transients win over ordinary matches, because they are what
    must be found; otherwise the nearest wins. With ``light`` (the frame's noise-free light per
    truth family, ``TwinFrame.light_e``), light decides instead of distance for them: a candidate is
    the anomaly's or transient's whose light is the larger share of the source light in the 3x3
    pixels at the candidate, when that share is at least ``UNKNOWN_LIGHT_SHARE``; a candidate that
    the distance rule would give to one but that is not made of its light gets ``UNKNOWN`` and the
    family ``NEAR_PREFIX + family`` (neither a find nor an ordinary detection); every other
    candidate takes the nearest ordinary match, as if no anomaly were there.
    """
    n = len(x)
    labels = np.full(n, BOGUS, np.int64)
    family = np.full(n, "bogus", "<U24")
    if n == 0 or len(truth) == 0:
        return labels, family
    if light is not None:
        return _label_by_light(np.asarray(x, float), np.asarray(y, float), truth, light)
    x = np.asarray(x, float)[:, None]
    y = np.asarray(y, float)[:, None]
    x0, y0 = np.asarray(truth["x0"], float)[None], np.asarray(truth["y0"], float)[None]
    dx = np.asarray(truth["x1"], float)[None] - x0
    dy = np.asarray(truth["y1"], float)[None] - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    d = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))                     # (n, m)
    size = np.nan_to_num(np.asarray(truth["size_px"], float), nan=0.0)
    tlabel = np.asarray(truth["label"]).astype(str)
    tfamily = np.asarray(truth["family"]).astype(str)
    extent = np.array([ANOMALY_REACH_PX.get(f, 0.0) for f in tfamily])
    reach = np.where(length2[0] > 0, STREAK_MATCH_PX,
                     MATCH_RADIUS_PX + np.maximum(np.clip(size, 0.0, 8.0), extent))
    unknown = np.isin(tlabel, ("anomaly", "transient"))
    score = np.where(d <= reach[None], d - 1000.0 * unknown[None], np.inf)
    best = np.argmin(score, axis=1)
    hit = np.isfinite(score[np.arange(n), best])
    rows = best[hit]
    family[hit] = tfamily[rows]
    index = {name: i for i, name in enumerate(CLASSES)}
    labels[hit] = [index.get(name, UNKNOWN) for name in tlabel[rows]]
    return labels, family


def _label_by_light(x: NDArray[np.float64], y: NDArray[np.float64], truth: Any,
                    light: dict[str, NDArray[Any]]) -> tuple[NDArray[np.int64], NDArray[np.str_]]:
    """label_candidates with the light of each family known (see there)."""
    tlabel = np.asarray(truth["label"]).astype(str)
    unknown_rows = np.isin(tlabel, _UNKNOWN_LABELS)
    labels, family = label_candidates(x, y, truth[~unknown_rows])
    unknown_families = sorted(set(np.asarray(truth["family"]).astype(str)[unknown_rows].tolist()))
    sources = [k for k in light if k != "sky"]
    if not unknown_families or not sources:
        return labels, family
    by_distance, near_family = label_candidates(x, y, truth)
    shape = light[sources[0]].shape
    rows = np.clip(np.floor(y + 0.5).astype(np.int64), 1, shape[0] - 2)
    cols = np.clip(np.floor(x + 0.5).astype(np.int64), 1, shape[1] - 2)

    def box_sum(image: NDArray[Any]) -> NDArray[np.float64]:
        img = np.asarray(image, np.float64)
        return sum(img[rows + dy, cols + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # type: ignore[return-value]

    total = np.zeros(len(x))
    share = {}
    for k in sources:
        part = box_sum(light[k])
        total += part
        if k in unknown_families:
            share[k] = part
    if not share:
        return labels, family
    names = list(share)
    stacked = np.stack([share[k] for k in names])
    best = stacked.argmax(axis=0)
    best_light = stacked[best, np.arange(len(x))]
    mine = (best_light > 0) & (best_light >= UNKNOWN_LIGHT_SHARE * total)
    near = (by_distance == UNKNOWN) & ~mine
    labels[near] = UNKNOWN
    family[near] = np.char.add(NEAR_PREFIX, near_family[near])
    labels[mine] = UNKNOWN
    family[mine] = np.asarray(names)[best[mine]]
    return labels, family


def candidates_from_frame(frame: Any, config: Any, settings: DetectSettings | None = None,
                          bundle: bool = True, stamp_size: int = STAMP_SIZE,
                          recipe: str = CONTEXT_NORMALISATION) -> tuple[StampSet, Candidates]:
    """Run the node's detection and stamp cutting on one twin frame and label every candidate;
    the labelled stamps (of the named ``recipe``, engines.stamps.RECIPES) and the detected
    candidates (positions, shape, flux), row for row.

    ``stamp_size`` other than the node's 32 px is for probes only (no engine reads other sizes):
    those stamps are the two sharp channels alone.
    """
    settings = settings or DetectSettings()
    image_e, variance_e2, mask = calibrate_twin_frame(frame, config, bundle)
    background = subtract_background(image_e, mask, settings)
    cands = detect(background.sub_e, variance_e2, mask, settings)
    if stamp_size == STAMP_SIZE:
        stamps = cut_for(recipe, background.sub_e, variance_e2, mask, cands.x, cands.y)
    else:
        stamps = cut_stamps(background.sub_e, variance_e2, mask, cands.x, cands.y, stamp_size)
    truth = frame.truth
    if "frame" in truth.colnames:
        truth = truth[np.asarray(truth["frame"]) == frame.index]
    labels, family = label_candidates(np.asarray(cands.x), np.asarray(cands.y), truth,
                                     getattr(frame, "light_e", None))
    return (StampSet(stamps, labels, family, np.asarray(cands.snr, float),
                     np.full(len(labels), frame.index, np.int64)), cands)


def stamps_from_frame(frame: Any, config: Any, settings: DetectSettings | None = None,
                      bundle: bool = True, stamp_size: int = STAMP_SIZE,
                      recipe: str = CONTEXT_NORMALISATION) -> StampSet:
    """The labelled stamps of one twin frame (:func:`candidates_from_frame` without the candidates)."""
    return candidates_from_frame(frame, config, settings, bundle, stamp_size, recipe)[0]


def frame_seed(seed: int, index: int) -> int:
    """The twin seed of frame ``index`` of a set: each frame is its own scene (the twin draws stars
    and anomalies from the seed, so one seed for a whole set would repeat the same objects)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def twin_stamp_set(config: Any, n_frames: int, seed: int, settings: DetectSettings | None = None,
                   unmasked_every: int = 0, stamp_size: int = STAMP_SIZE, *,
                   recipe: str = CONTEXT_NORMALISATION, progress: Progress | None = None,
                   stage: str = "simulating frames") -> StampSet:
    """Simulate ``n_frames`` twin frames, each with its own scene drawn from ``seed``, and return
    all their labelled candidates. Every ``unmasked_every``-th frame (0: none) is calibrated
    without the bad-pixel map, so its hot pixels become candidates (see calibrate_twin_frame).
    ``progress`` is told of each frame done, under the name ``stage``."""
    from twin import simulate_frame

    # frames with anomalies or transients carry each family's light, so labels follow the light
    light = bool(config.anomalies) or config.n_transients > 0
    if progress is not None:
        progress(stage, 0, n_frames)
    sets = []
    for i in range(n_frames):
        sets.append(stamps_from_frame(simulate_frame(config, i, frame_seed(seed, i), light_by_family=light),
                                      config, settings, bundle=not (unmasked_every and i % unmasked_every == 0),
                                      stamp_size=stamp_size, recipe=recipe))
        if progress is not None:
            progress(stage, 1, n_frames)
    return concat(sets, RECIPES.get(recipe, 2) if stamp_size == STAMP_SIZE else 2)


def outlier_stamps(n: int, rng: np.random.Generator, size: int = STAMP_SIZE,
                   recipe: str = CONTEXT_NORMALISATION, *, field: tuple[float, ...] = (),
                   field_rng: np.random.Generator | None = None) -> NDArray[np.float32]:
    """Generic random multi-blob shapes for outlier exposure, as stamps (n, channels, size, size)
    of the named ``recipe`` (at the node's 32 px; other sizes are the two sharp channels).

    Each stamp holds 2 to 6 elliptical Gaussian blobs (sigma 0.6-5 px, axis ratio 0.2-1, random
    angle and flux) scattered within 8 px of the centre, on sky noise; sometimes a short curved
    chain of blobs. None of these is built to look like a twin anomaly family.

    ``field`` (recipes with a context view): star and galaxy densities relative to the training
    mix (:func:`engines.training.train.training_twin_config`), taken in turn; each stamp's canvas
    then also holds a field of round star-like and elongated galaxy-like blobs at that density,
    drawn by ``field_rng``. Without it every outlier sits on empty sky, and the network learns
    that an empty context means "uncertain": the isolated stars of a sparse field come out with
    high entropy and are flagged unknown.
    """
    wide = size == STAMP_SIZE and RECIPES.get(recipe, 2) > 2
    # the context view needs the 96 px around the centre on the canvas
    canvas = 4 * size if wide else 2 * size
    half = canvas // 2
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    out = np.empty((n, RECIPES[recipe] if wide else 2, size, size), np.float32)
    for k in range(n):
        sky_e = float(rng.uniform(50.0, 400.0))
        variance = np.full((canvas, canvas), sky_e + 25.0, np.float32)
        image = np.zeros((canvas, canvas), np.float32)
        n_blobs = int(rng.integers(2, 7))
        if rng.random() < 0.3:
            # a chain: blobs along a random arc
            t = np.linspace(-1, 1, n_blobs)
            bend, length, angle = rng.uniform(-0.5, 0.5), rng.uniform(6, 14), rng.uniform(0, np.pi)
            cx = half + length * (t * np.cos(angle) - bend * t * t * np.sin(angle))
            cy = half + length * (t * np.sin(angle) + bend * t * t * np.cos(angle))
        else:
            cx = half + rng.uniform(-8, 8, n_blobs)
            cy = half + rng.uniform(-8, 8, n_blobs)
        peak_snr = 10 ** rng.uniform(np.log10(8.0), np.log10(400.0), n_blobs)
        for b in range(n_blobs):
            sigma = rng.uniform(0.6, 5.0)
            q = rng.uniform(0.2, 1.0)
            theta = rng.uniform(0, np.pi)
            dx, dy = xx - cx[b], yy - cy[b]
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            image += np.float32(peak_snr[b] * np.sqrt(sky_e)) * np.exp(-0.5 * (u * u + (v / q) ** 2) / sigma ** 2)
        if wide and field:
            image += _field_blobs(canvas, field[k % len(field)], sky_e, field_rng or rng, yy, xx)
        noisy = image + rng.standard_normal((canvas, canvas)).astype(np.float32) * np.sqrt(variance + image)
        variance = variance + image
        # centre on the brightest blob, as detection would
        j = int(np.argmax(peak_snr))
        if wide:
            out[k] = cut_for(recipe, noisy, variance, None, np.array([cx[j]]), np.array([cy[j]]))[0]
        else:
            out[k] = cut_stamps(noisy, variance, None, np.array([cx[j]]), np.array([cy[j]]), size)[0]
    return out


#: stars and galaxies per megapixel of the training mix at density 1 (training_twin_config)
_FIELD_PER_MPX = (1500.0, 600.0)


def _field_blobs(canvas: int, density: float, sky_e: float, rng: np.random.Generator,
                 yy: NDArray[np.float32], xx: NDArray[np.float32]) -> NDArray[np.float32]:
    """A canvas of field objects at ``density``: round blobs of a seeing-limited star (sigma
    1.0-1.6 px) and elongated extended ones (sigma 1.5-4 px, axis ratio 0.3-1), placed anywhere,
    with peak S/N from 2 to 300 (log-uniform), in electrons on sky ``sky_e``."""
    image = np.zeros((canvas, canvas), np.float32)
    area = canvas * canvas / 1e6
    n_star, n_gal = (int(rng.poisson(rate * density * area)) for rate in _FIELD_PER_MPX)
    for b in range(n_star + n_gal):
        galaxy = b >= n_star
        sigma = rng.uniform(1.5, 4.0) if galaxy else rng.uniform(1.0, 1.6)
        q = rng.uniform(0.3, 1.0) if galaxy else 1.0
        theta = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0, canvas, 2)
        peak = 10 ** rng.uniform(np.log10(2.0), np.log10(300.0)) * np.sqrt(sky_e)
        lo_y, hi_y = max(0, int(y0 - 5 * sigma)), min(canvas, int(y0 + 5 * sigma) + 1)
        lo_x, hi_x = max(0, int(x0 - 5 * sigma)), min(canvas, int(x0 + 5 * sigma) + 1)
        dx, dy = xx[lo_y:hi_y, lo_x:hi_x] - x0, yy[lo_y:hi_y, lo_x:hi_x] - y0
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        image[lo_y:hi_y, lo_x:hi_x] += np.float32(peak) * np.exp(-0.5 * (u * u + (v / q) ** 2) / sigma ** 2)
    return image
