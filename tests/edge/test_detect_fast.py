"""Tests for the fast detection backend (edge.fastdetect): it finds and measures what sep does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import sep

from edge.config import config_from_mapping
from edge.detect import (
    FLAG_MASKED,
    FLAG_NEAR_EDGE,
    FLAG_SATURATED,
    Candidates,
    DetectSettings,
    detect,
    subtract_background,
)
from edge.errors import ConfigError, DetectionError

SEP = DetectSettings()
FAST = DetectSettings(backend="fast")


def _scene(rng: np.random.Generator, shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray,
           fluxes: np.ndarray, sigma_px: float = 1.5, sky_e: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy frame of Gaussian sources on a flat sky (electrons) and its variance."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    model = np.full(shape, sky_e)
    for x0, y0, f in zip(xs, ys, fluxes, strict=True):
        model += f / (2 * np.pi * sigma_px**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma_px**2))
    variance = model + 25.0
    image = model + rng.normal(size=shape) * np.sqrt(variance)
    return image.astype(np.float32), variance.astype(np.float32)


def _run(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None, settings: DetectSettings,
         **kwargs: np.ndarray) -> Candidates:
    return detect(subtract_background(image, mask, settings).sub_e, variance, mask, settings, **kwargs)


def _pairs(a: Candidates, b: Candidates, radius_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into a, into b) of the candidates of a whose nearest candidate of b is within radius_px."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    d = np.hypot(a.x[:, None] - b.x[None, :], a.y[:, None] - b.y[None, :])
    j = d.argmin(axis=1)
    ok = d[np.arange(len(a)), j] <= radius_px
    return np.nonzero(ok)[0], j[ok]


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 512x512 frame of 300 well separated Gaussian stars over four decades of flux, with
    sparse bad pixels, and the stars' true (x, y)."""
    rng = np.random.default_rng(19)
    grid = np.stack(np.meshgrid(np.arange(20, 500, 27.0), np.arange(20, 500, 27.0)), -1).reshape(-1, 2)
    pick = grid[rng.permutation(len(grid))[:300]] + rng.uniform(-4, 4, (300, 2))
    image, variance = _scene(rng, (512, 512), pick[:, 0], pick[:, 1], 10 ** rng.uniform(2.7, 5.5, 300))
    mask = rng.uniform(size=image.shape) < 2e-4
    return image, variance, mask, pick


def test_background_matches_sep_within_a_hundredth_of_the_noise(field: tuple[np.ndarray, ...]) -> None:
    """The fast background map is sep's spline to well under the noise, with the same global RMS."""
    image, _, mask, _ = field
    sky = np.float32(50.0) * np.sin(np.arange(512, dtype=np.float32) / 90.0)[None, :]
    a = subtract_background(image + sky, mask, SEP)
    b = subtract_background(image + sky, mask, FAST)
    assert np.abs(a.background_e - b.background_e).max() < 0.01 * a.rms_e
    assert b.rms_e == pytest.approx(a.rms_e, rel=1e-3)


def test_fast_finds_and_measures_the_same_stars_as_sep(field: tuple[np.ndarray, ...]) -> None:
    """Every sep candidate has a fast one within 0.01 px with the same flux, error, shape, peak,
    area and flags; what fast finds beyond sep are true stars that sep's cleaning dropped."""
    image, variance, mask, truth = field
    a, b = _run(image, variance, mask, SEP), _run(image, variance, mask, FAST)
    i, j = _pairs(a, b, radius_px=0.01)
    assert len(a) >= 250
    assert i.size >= 0.98 * len(a)
    extra = np.setdiff1d(np.arange(len(b)), j)
    assert len(extra) <= 0.2 * len(a)
    d_true = np.hypot(b.x[extra, None] - truth[None, :, 0], b.y[extra, None] - truth[None, :, 1]).min(axis=1)
    assert np.all(d_true < 1.0)
    for name in ("flux_e", "flux_err_e", "a_px", "b_px", "x_err_px", "peak_e"):
        ratio = getattr(b, name)[j] / getattr(a, name)[i]
        assert np.median(np.abs(ratio - 1)) < 1e-3, name
        assert np.mean(np.abs(ratio - 1) < 0.01) > 0.97, name
    assert np.array_equal(b.npix[j], a.npix[i]) or np.mean(b.npix[j] == a.npix[i]) > 0.97
    assert np.mean(b.flags[j] == a.flags[i]) > 0.97


def test_fast_agrees_with_sep_on_the_real_ntt_frame(ntt: dict[str, np.ndarray]) -> None:
    """On the real NTT frame with SExtractor's threshold and area, fast finds every sep candidate at
    the same place with the same flux, and as many objects as sep before its cleaning step."""
    settings = DetectSettings(threshold_snr=1.5, min_area_px=5)
    sub = subtract_background(ntt["image"], None, settings).sub_e
    a = detect(sub, ntt["variance"], None, settings)
    b = detect(sub, ntt["variance"], None, replace(settings, backend="fast"))
    i, j = _pairs(a, b, radius_px=1.0)
    assert len(a) >= 50
    assert i.size >= 0.95 * len(a)
    assert np.median(np.hypot(a.x[i] - b.x[j], a.y[i] - b.y[j])) < 0.01
    assert np.median(np.abs(b.flux_e[j] / a.flux_e[i] - 1)) < 0.01
    uncleaned = sep.extract(sub, 1.5, var=ntt["variance"], minarea=5, filter_kernel=sep.default_kernel,
                            filter_type="matched", clean=False)
    assert abs(len(b) - len(uncleaned)) <= 0.03 * len(uncleaned)


def test_fast_finds_the_twin_stars_sep_finds_with_centroids_as_good() -> None:
    """On a dense 512x512 twin frame, fast misses no more bright true stars than sep and places them as well."""
    from engines.training.dataset import calibrate_twin_frame, frame_seed
    from engines.training.train import training_twin_config
    from twin import simulate_frame

    config = training_twin_config(512)
    frame = simulate_frame(config, 0, frame_seed(1919, 0))
    image, variance, mask = calibrate_twin_frame(frame, config, True)
    t = frame.truth[(frame.truth["label"] == "star") & (frame.truth["snr_expected"] >= 20)]
    tx, ty = np.asarray(t["x"], float), np.asarray(t["y"], float)
    inner = (tx > 20) & (tx < 492) & (ty > 20) & (ty < 492)
    tx, ty = tx[inner], ty[inner]
    errors = {}
    for name, settings in (("sep", SEP), ("fast", FAST)):
        c = _run(image, variance, mask, settings)
        d = np.hypot(c.x[None, :] - tx[:, None], c.y[None, :] - ty[:, None]).min(axis=1)
        errors[name] = d
    assert tx.size >= 50
    found_sep, found_fast = errors["sep"] <= 2.5, errors["fast"] <= 2.5
    assert found_fast.sum() >= found_sep.sum()
    both = found_sep & found_fast
    assert np.median(errors["fast"][both]) <= 1.1 * np.median(errors["sep"][both])


def test_a_close_pair_is_deblended_into_two_merged_candidates(rng: np.random.Generator) -> None:
    """Two equal stars 5 px apart come out as two candidates near the true places, both flagged OBJ_MERGED."""
    xs, ys = np.array([60.0, 65.0]), np.array([64.0, 64.0])
    image, variance = _scene(rng, (128, 128), xs, ys, np.array([3e4, 3e4]))
    c = _run(image, variance, None, FAST)
    assert len(c) == 2
    assert np.all(c.flags & sep.OBJ_MERGED)
    assert np.allclose(np.sort(c.x), xs, atol=0.5) and np.allclose(c.y, 64.0, atol=0.5)


def test_masked_and_non_finite_pixels_are_never_detected(rng: np.random.Generator) -> None:
    """A bright masked star, a patch of NaNs and a patch of zero variance give no candidate and no NaN."""
    image, variance = _scene(rng, (128, 128), np.array([64.0, 30.0]), np.array([64.0, 100.0]),
                             np.array([5e4, 2e4]))
    mask = np.zeros(image.shape, dtype=bool)
    mask[54:75, 54:75] = True
    image[10:14, 10:14] = np.nan
    variance[100:104, 100:104] = 0.0
    c = _run(image, variance, mask, FAST)
    assert len(c) == 1 and abs(c.x[0] - 30) < 0.5 and abs(c.y[0] - 100) < 0.5
    for name in ("x", "y", "x_err_px", "y_err_px", "flux_e", "flux_err_e", "snr", "a_px", "b_px"):
        assert np.isfinite(getattr(c, name)).all(), name


def test_flags_mark_edge_masked_saturated_and_truncated_candidates(rng: np.random.Generator) -> None:
    """The project's flags and sep's OBJ_TRUNC are set as the sep backend sets them."""
    xs = np.array([1.0, 100.0, 60.0, 150.0])
    ys = np.array([100.0, 100.0, 60.0, 150.0])
    image, variance = _scene(rng, (200, 200), xs, ys, np.full(4, 2e4))
    mask = np.zeros(image.shape, dtype=bool)
    mask[100, 101] = True
    saturated = np.zeros(image.shape, dtype=bool)
    saturated[60, 60] = True
    a = _run(image, variance, mask, SEP, saturated=saturated)
    b = _run(image, variance, mask, FAST, saturated=saturated)
    i, j = _pairs(a, b)
    assert len(a) == len(b) == 4 and i.size == 4
    assert np.array_equal(a.flags[i], b.flags[j])
    flags = b.flags[j][np.argsort(a.x[i])]  # by x: the edge star, the saturated, the masked, the clean
    assert flags[0] & FLAG_NEAR_EDGE and flags[0] & sep.OBJ_TRUNC
    assert flags[1] & FLAG_SATURATED and flags[2] & FLAG_MASKED
    assert not flags[3] & (FLAG_NEAR_EDGE | FLAG_MASKED | FLAG_SATURATED | sep.OBJ_TRUNC)


def test_without_the_matched_filter_fast_still_agrees_with_sep(field: tuple[np.ndarray, ...]) -> None:
    """matched_filter=False thresholds image / sigma in both backends and they find the same stars."""
    image, variance, mask, _ = field
    settings = DetectSettings(matched_filter=False)
    a = _run(image, variance, mask, settings)
    b = _run(image, variance, mask, replace(settings, backend="fast"))
    i, _ = _pairs(a, b, radius_px=0.01)
    assert len(a) >= 150 and i.size >= 0.97 * len(a) and len(b) <= 1.2 * len(a)


def test_an_empty_frame_gives_empty_candidates(rng: np.random.Generator) -> None:
    """Flat sky with noise gives no candidate at S/N 8, as empty float and int columns."""
    variance = np.full((256, 256), 225.0, dtype=np.float32)
    image = (200 + rng.normal(size=variance.shape) * 15).astype(np.float32)
    c = _run(image, variance, None, replace(FAST, threshold_snr=8.0))
    assert len(c) == 0 and c.n_truncated == 0
    assert c.x.dtype == np.float64 and c.flags.dtype == np.int64


def test_fast_is_a_pure_function_of_its_inputs(field: tuple[np.ndarray, ...]) -> None:
    """Two calls on the same arrays give identical candidates and leave the inputs untouched."""
    image, variance, mask, _ = field
    sub = subtract_background(image, mask, FAST).sub_e
    before = sub.copy()
    a, b = detect(sub, variance, mask, FAST), detect(sub, variance, mask, FAST)
    assert np.array_equal(sub, before)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.flux_e, b.flux_e) and np.array_equal(a.flags, b.flags)


def test_config_key_selects_the_backend() -> None:
    """[detect] backend = "fast" reaches DetectSettings; sep stays the default."""
    assert config_from_mapping({}).detect.backend == "sep"
    assert config_from_mapping({"detect": {"backend": "fast"}}).detect.backend == "fast"


def test_an_unknown_backend_is_refused_with_the_choices() -> None:
    """An unknown backend is a ConfigError from the file and a DetectionError in code, naming the valid ones."""
    with pytest.raises(ConfigError, match="backend='gpu'.*'sep', 'fast'"):
        config_from_mapping({"detect": {"backend": "gpu"}})
    with pytest.raises(DetectionError, match="backend"):
        DetectSettings(backend="SEP")


def test_threads_change_nothing_but_the_time(field: tuple[np.ndarray, ...]) -> None:
    """The fast backend on three threads gives the very same background and candidates as on one."""
    image, variance, mask, _ = field
    one, three = FAST, replace(FAST, threads=3)
    a, b = subtract_background(image, mask, one), subtract_background(image, mask, three)
    assert np.array_equal(a.sub_e, b.sub_e)
    ca, cb = detect(a.sub_e, variance, mask, one), detect(b.sub_e, variance, mask, three)
    for name in ("x", "y", "flux_e", "a_px", "flags", "npix"):
        assert np.array_equal(getattr(ca, name), getattr(cb, name)), name
    with pytest.raises(DetectionError, match="threads"):
        DetectSettings(threads=0)
