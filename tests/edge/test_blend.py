"""Tests for edge.blend: the frame's PSF, and one- versus two-component fits of detections."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.blend import (
    LR_MIN,
    MULT_EDGE,
    MULT_FAILED,
    MULT_MASKED,
    BlendSettings,
    FramePsf,
    estimate_psf,
    is_blend,
    measure_multiplicity,
)
from edge.detect import DetectSettings, detect, subtract_background
from edge.errors import DetectionError

FWHM = 3.0
BETA = 3.0
SKY_E = 200.0
SIZE = 200


def _alpha2(fwhm: float = FWHM, beta: float = BETA) -> float:
    return (fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2


def _moffat_image(xs: np.ndarray, ys: np.ndarray, fluxes: np.ndarray, fwhm: float = FWHM,
                  size: int = SIZE) -> np.ndarray:
    """Noise-free round Moffat stars sampled at pixel centres, in electrons."""
    a2 = _alpha2(fwhm)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size))
    for x0, y0, f in zip(xs, ys, fluxes, strict=True):
        image += f * (BETA - 1) / (np.pi * a2) * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / a2) ** -BETA
    return image


def _observe(model: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The model with sky and Poisson-like Gaussian noise removed of its sky: (sub_e, variance_e2)."""
    variance = model + SKY_E
    noise = np.random.default_rng(seed).normal(size=model.shape) * np.sqrt(variance)
    return (model + noise).astype(np.float32), variance.astype(np.float32)


def _known_psf() -> FramePsf:
    """The round Moffat of the synthetic frames, as estimate_psf would report it."""
    a2 = _alpha2()
    return FramePsf(beta=BETA, moments=np.array([[a2], [a2], [0.0]]), shape_px=(SIZE, SIZE), n_stars=20,
                    fwhm_px=FWHM)


def _grid(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8 x 8 positions 22 px apart with random sub-pixel offsets, well inside the frame."""
    rng = np.random.default_rng(seed)
    g = np.arange(22.0, 190.0, 22.0)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    return x + rng.uniform(-0.5, 0.5, x.size), y + rng.uniform(-0.5, 0.5, y.size)


def test_single_moffat_stars_are_not_blends() -> None:
    """Isolated single stars of S/N ~100 under the right PSF give small likelihood ratios, none a blend."""
    x, y = _grid(1)
    sub, var = _observe(_moffat_image(x, y, np.full(x.size, 2e4)), seed=2)
    m = measure_multiplicity(sub, var, None, x, y, _known_psf())
    assert not is_blend(m).any()
    assert np.median(m.likelihood_ratio) < 5.0
    assert (m.flags & MULT_FAILED == 0).all()


def test_pair_at_0p7_fwhm_with_flux_ratio_half_is_a_blend_and_measured() -> None:
    """Two stars 0.7 FWHM apart, flux ratio 0.5, S/N ~100: every pair is a blend; separation and flux ratio
    unbiased (median within 0.05 px and 0.03), 90 % within 0.15 px and 0.12, all within 0.3 px and 0.2."""
    x, y = _grid(3)
    angle = np.random.default_rng(4).uniform(0.0, np.pi, x.size)
    sep, ratio, total = 0.7 * FWHM, 0.5, 2e4
    w = ratio / (1 + ratio)   # the pair's flux-weighted centre is (x, y)
    xs = np.r_[x + sep * w * np.cos(angle), x - sep * (1 - w) * np.cos(angle)]
    ys = np.r_[y + sep * w * np.sin(angle), y - sep * (1 - w) * np.sin(angle)]
    fluxes = np.r_[np.full(x.size, total * (1 - w)), np.full(x.size, total * w)]
    sub, var = _observe(_moffat_image(xs, ys, fluxes), seed=5)
    m = measure_multiplicity(sub, var, None, x, y, _known_psf())
    assert is_blend(m).all()
    for error, bias, most, worst in ((m.separation_px - sep, 0.05, 0.15, 0.3), (m.flux_ratio - ratio, 0.03, 0.12, 0.2)):
        assert abs(np.median(error)) < bias
        assert np.quantile(np.abs(error), 0.9) < most
        assert np.abs(error).max() < worst


def test_masked_pixels_are_left_out_of_the_fit() -> None:
    """A bright bad pixel beside a star makes it a blend unless the mask names it; then it is left out and flagged."""
    x, y = np.array([100.3]), np.array([99.8])
    sub, var = _observe(_moffat_image(x, y, np.array([2e4])), seed=6)
    sub[101, 102] += 3000.0
    mask = np.zeros(sub.shape, bool)
    mask[101, 102] = True
    unmasked = measure_multiplicity(sub, var, None, x, y, _known_psf())
    masked = measure_multiplicity(sub, var, mask, x, y, _known_psf())
    assert is_blend(unmasked)[0]
    assert not is_blend(masked)[0]
    assert masked.flags[0] & MULT_MASKED
    assert masked.n_pix[0] == unmasked.n_pix[0] - 1


def test_non_finite_pixels_are_left_out_like_masked_ones() -> None:
    """NaN data and infinite variance inside the fit region are left out, flagged, and change nothing else."""
    x, y = np.array([100.3]), np.array([99.8])
    sub, var = _observe(_moffat_image(x, y, np.array([2e4])), seed=7)
    mask = np.zeros(sub.shape, bool)
    mask[98, 101] = mask[102, 99] = True
    expected = measure_multiplicity(sub, var, mask, x, y, _known_psf())
    sub[98, 101], var[102, 99] = np.nan, np.inf
    m = measure_multiplicity(sub, var, None, x, y, _known_psf())
    assert m.flags[0] & MULT_MASKED
    assert np.isfinite(m.likelihood_ratio[0])
    assert m.likelihood_ratio[0] == pytest.approx(expected.likelihood_ratio[0], rel=1e-6, abs=1e-6)


def test_failed_fits_are_nan_with_the_failed_flag_and_never_blends() -> None:
    """A non-finite position, and a fit region all masked, give NaN figures and MULT_FAILED, not numbers."""
    x, y = np.array([100.3, np.nan, 50.0]), np.array([99.8, 40.0, 50.0])
    sub, var = _observe(_moffat_image(x[:1], y[:1], np.array([2e4])), seed=8)
    mask = np.zeros(sub.shape, bool)
    mask[40:61, 40:61] = True
    m = measure_multiplicity(sub, var, mask, x, y, _known_psf())
    assert list(m.flags & MULT_FAILED) == [0, MULT_FAILED, MULT_FAILED]
    for values in (m.likelihood_ratio, m.separation_px, m.flux_ratio, m.chi2_one):
        assert np.isfinite(values[0]) and np.isnan(values[1:]).all()
    assert not is_blend(m)[1:].any()


def test_fit_region_off_the_frame_is_flagged_edge() -> None:
    """A star 1 px from the frame's edge is fitted on the pixels inside and flagged MULT_EDGE."""
    x, y = np.array([1.2, 100.0]), np.array([100.0, 100.0])
    sub, var = _observe(_moffat_image(x, y, np.array([2e4, 2e4])), seed=9)
    m = measure_multiplicity(sub, var, None, x, y, _known_psf())
    assert list(m.flags & MULT_EDGE) == [MULT_EDGE, 0]
    assert not is_blend(m).any()


def test_a_neighbour_outside_the_pair_range_is_fitted_not_taken_for_a_companion() -> None:
    """A star 2 FWHM from a 10x brighter one is a blend without the neighbours given and a single star with them."""
    x, y = np.array([100.0, 106.0]), np.array([100.0, 100.4])
    sub, var = _observe(_moffat_image(x, y, np.array([2e4, 2e5])), seed=10)
    alone = measure_multiplicity(sub, var, None, x[:1], y[:1], _known_psf())
    modelled = measure_multiplicity(sub, var, None, x[:1], y[:1], _known_psf(), neighbours=(x, y))
    assert alone.likelihood_ratio[0] >= LR_MIN
    assert modelled.likelihood_ratio[0] < LR_MIN


def test_many_positions_are_fitted_in_chunks_with_the_same_results() -> None:
    """More candidates than one chunk (1024) give, row for row, what a small call gives."""
    x, y = _grid(14)
    sub, var = _observe(_moffat_image(x, y, np.full(x.size, 2e4)), seed=15)
    small = measure_multiplicity(sub, var, None, x, y, _known_psf())
    large = measure_multiplicity(sub, var, None, np.tile(x, 17), np.tile(y, 17), _known_psf())
    assert len(large.flags) == 17 * x.size
    np.testing.assert_allclose(large.likelihood_ratio[-x.size:], small.likelihood_ratio, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(large.flags[-x.size:], small.flags)


def test_no_positions_give_empty_figures() -> None:
    """Measuring no candidates returns empty arrays, not an error."""
    sub, var = _observe(np.zeros((SIZE, SIZE)), seed=11)
    m = measure_multiplicity(sub, var, None, np.zeros(0), np.zeros(0), _known_psf(), neighbours=([1.0], [2.0]))
    assert m.likelihood_ratio.shape == m.flags.shape == (0,)


def _star_field(n: int, fwhm: float, seed: int) -> tuple[np.ndarray, np.ndarray, object]:
    """A frame of n stars (flux 1e4 to 1e5 e) on sky, background-subtracted and detected by the node."""
    rng = np.random.default_rng(seed)
    x, y = _grid(seed)
    pick = rng.choice(x.size, n, replace=False)
    sub, var = _observe(_moffat_image(x[pick], y[pick], rng.uniform(1e4, 1e5, n), fwhm), seed)
    settings = DetectSettings()
    sub = subtract_background(sub, None, settings).sub_e
    return sub, var, detect(sub, var, None, settings)


@pytest.mark.parametrize("fwhm", [2.5, 4.0])
def test_psf_estimate_recovers_fwhm_and_beta_of_synthetic_stars(fwhm: float) -> None:
    """40 Moffat stars of known FWHM and beta 3: the estimate is within 5 % in FWHM and 0.5 in beta, and clean."""
    sub, var, cands = _star_field(40, fwhm, seed=12)
    psf = estimate_psf(sub, var, None, cands)
    assert psf.fwhm_px == pytest.approx(fwhm, rel=0.05)
    assert np.abs(psf.fwhm_at(np.array([20.0, 100.0, 180.0]), np.array([30.0, 100.0, 170.0])) / fwhm - 1).max() < 0.05
    assert psf.beta == pytest.approx(BETA, abs=0.5)
    assert psf.n_stars >= 20
    assert psf.model_error < 0.05


def test_psf_estimate_recovers_the_twin_psf() -> None:
    """On a twin frame calibrated and detected as the node does, the PSF's FWHM at the true stars is within 10 %."""
    from engines.training.dataset import calibrate_twin_frame
    from engines.training.train import training_twin_config
    from twin import simulate_frame

    config = training_twin_config(384)
    frame = simulate_frame(config, 0, 31)
    image, var, mask = calibrate_twin_frame(frame, config)
    settings = DetectSettings()
    sub = subtract_background(image, mask, settings).sub_e
    psf = estimate_psf(sub, var, mask, detect(sub, var, mask, settings))
    stars = np.asarray(frame.truth["label"]) == "star"
    truth = np.asarray(frame.truth["fwhm_px"])[stars]
    error = psf.fwhm_at(np.asarray(frame.truth["x"])[stars], np.asarray(frame.truth["y"])[stars]) / truth - 1
    assert np.median(np.abs(error)) < 0.05
    assert np.abs(error).max() < 0.10


def test_too_few_stars_raise_detection_error() -> None:
    """A frame with three stars has no PSF to measure: DetectionError says how many stars there were."""
    sub, var, cands = _star_field(3, FWHM, seed=13)
    with pytest.raises(DetectionError, match="3 PSF stars .* where 5 are needed"):
        estimate_psf(sub, var, None, cands)


def test_settings_and_psf_out_of_range_are_refused() -> None:
    """Nonsense settings or PSF values raise DetectionError naming the value."""
    with pytest.raises(DetectionError, match="n_starts=0"):
        BlendSettings(n_starts=0)
    with pytest.raises(DetectionError, match="model_error_quantile"):
        BlendSettings(model_error_quantile=1.5)
    with pytest.raises(DetectionError, match="beta=1.0"):
        dataclasses.replace(_known_psf(), beta=1.0)
    with pytest.raises(DetectionError, match="moments shape"):
        dataclasses.replace(_known_psf(), moments=np.full((3, 1), np.nan))
