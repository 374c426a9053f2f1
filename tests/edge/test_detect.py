"""Tests for edge.detect: agreement with SExtractor on a real frame, recovery of known sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits

from edge.detect import (
    FLAG_MASKED,
    FLAG_NEAR_EDGE,
    FLAG_SATURATED,
    DetectSettings,
    detect,
    subtract_background,
)
from edge.errors import DetectionError

SKY_E = 200.0
READ_E = 5.0


def _gaussian_scene(rng: np.random.Generator, shape: tuple[int, int], xs: np.ndarray,
                    ys: np.ndarray, fluxes: np.ndarray, sigma_px: float = 1.5):
    """A noisy frame with Gaussian sources of known flux on a flat sky, its variance and truth."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    model = np.full(shape, SKY_E)
    for x0, y0, f in zip(xs, ys, fluxes, strict=True):
        box = (slice(max(int(y0) - 8, 0), int(y0) + 9), slice(max(int(x0) - 8, 0), int(x0) + 9))
        r2 = (xx[box] - x0) ** 2 + (yy[box] - y0) ** 2
        model[box] += f / (2 * np.pi * sigma_px**2) * np.exp(-r2 / (2 * sigma_px**2))
    variance = model + READ_E**2
    image = model + rng.normal(size=shape) * np.sqrt(variance)
    return image.astype(np.float32), variance.astype(np.float32)


def _match(cx: np.ndarray, cy: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest candidate to each true position, and its distance in pixels."""
    if cx.size == 0:
        return np.zeros(tx.size, dtype=int), np.full(tx.size, np.inf)
    dist = np.hypot(cx[None, :] - tx[:, None], cy[None, :] - ty[:, None])
    return dist.argmin(axis=1), dist.min(axis=1)


def test_detections_agree_with_sextractor_catalog_on_real_frame(ntt: dict[str, np.ndarray]) -> None:
    """On the NTT frame with SExtractor's threshold and area, nearly every clean SExtractor object is found at the same place."""
    settings = DetectSettings(threshold_snr=1.5, min_area_px=5)
    bkg = subtract_background(ntt["image"], None, settings)
    cands = detect(bkg.sub_e, ntt["variance"], None, settings)
    _, dist = _match(cands.x, cands.y, ntt["x"], ntt["y"])
    assert ntt["x"].size >= 50
    assert np.mean(dist < 1.5) >= 0.9
    assert np.median(dist[dist < 1.5]) < 0.3


def test_position_errors_are_of_sextractor_size_on_real_frame(ntt: dict[str, np.ndarray]) -> None:
    """Our second-moment position errors agree in scale with SExtractor's ERRX2/ERRY2 for matched objects."""
    settings = DetectSettings(threshold_snr=1.5, min_area_px=5)
    bkg = subtract_background(ntt["image"], None, settings)
    cands = detect(bkg.sub_e, ntt["variance"], None, settings)
    idx, dist = _match(cands.x, cands.y, ntt["x"], ntt["y"])
    ok = dist < 0.5
    ratio = cands.x_err_px[idx[ok]] / np.sqrt(ntt["errx2"][ok])
    assert ok.sum() >= 30
    assert 0.33 < np.median(ratio) < 3.0
    assert np.all(cands.x_err_px > 0) and np.all(cands.y_err_px > 0)


def test_synthetic_sources_are_recovered_with_honest_positions_and_fluxes(rng: np.random.Generator) -> None:
    """Bright injected sources are all found; position pulls and flux errors match the truth."""
    # a jittered grid keeps sources apart, so blending does not blur what is measured
    gx, gy = np.meshgrid(np.arange(24, 240, 28.0), np.arange(24, 240, 28.0))
    xs = gx.ravel() + rng.uniform(-4, 4, gx.size)
    ys = gy.ravel() + rng.uniform(-4, 4, gy.size)
    n = xs.size
    fluxes = rng.uniform(3e3, 3e4, n)
    image, variance = _gaussian_scene(rng, (256, 256), xs, ys, fluxes)
    settings = DetectSettings()
    bkg = subtract_background(image, None, settings)
    cands = detect(bkg.sub_e, variance, None, settings)
    idx, dist = _match(cands.x, cands.y, xs, ys)
    found = dist < 1.0
    assert found.mean() >= 0.95
    pull_x = (cands.x[idx[found]] - xs[found]) / cands.x_err_px[idx[found]]
    assert 0.3 < np.std(pull_x) < 3.0
    flux_pull = (cands.flux_e[idx[found]] - fluxes[found]) / cands.flux_err_e[idx[found]]
    assert abs(np.median(flux_pull)) < 2.0
    assert np.all(cands.snr[idx[found]] > 10)


def test_pure_noise_gives_almost_no_candidates(rng: np.random.Generator) -> None:
    """A frame of sky noise alone yields only a handful of spurious candidates at 5 sigma."""
    image, variance = _gaussian_scene(rng, (512, 512), np.array([]), np.array([]), np.array([]))
    settings = DetectSettings()
    bkg = subtract_background(image, None, settings)
    cands = detect(bkg.sub_e, variance, None, settings)
    assert len(cands) <= 3
    assert abs(float(np.median(bkg.sub_e))) < 0.05 * np.sqrt(SKY_E)


def test_background_follows_a_smooth_gradient(rng: np.random.Generator) -> None:
    """A sky gradient is removed, leaving a background-subtracted frame centred on zero everywhere."""
    yy, xx = np.mgrid[0:256, 0:256]
    sky = 100.0 + 0.5 * xx + 0.2 * yy
    image = (sky + rng.normal(size=sky.shape) * 10).astype(np.float32)
    bkg = subtract_background(image, None, DetectSettings(background_box_px=32))
    assert np.abs(bkg.background_e - sky)[16:-16, 16:-16].max() < 5.0
    assert bkg.sub_e.dtype == np.float32
    assert 8.0 < bkg.rms_e < 12.0


def test_flags_mark_edge_masked_and_saturated_candidates(rng: np.random.Generator) -> None:
    """A source near the border, one beside a masked pixel and one on a saturated pixel carry our flags."""
    xs = np.array([5.0, 100.0, 60.0, 150.0])
    ys = np.array([100.0, 100.0, 60.0, 150.0])
    image, variance = _gaussian_scene(rng, (200, 200), xs, ys, np.full(4, 2e4))
    mask = np.zeros(image.shape, dtype=bool)
    mask[100, 101] = True
    saturated = np.zeros(image.shape, dtype=bool)
    saturated[60, 60] = True
    settings = DetectSettings()
    bkg = subtract_background(image, mask, settings)
    cands = detect(bkg.sub_e, variance, mask, settings, saturated=saturated)
    idx, dist = _match(cands.x, cands.y, xs, ys)
    assert np.all(dist < 1.0)
    flags = cands.flags[idx]
    assert flags[0] & FLAG_NEAR_EDGE and not flags[3] & FLAG_NEAR_EDGE
    assert flags[1] & FLAG_MASKED and not flags[3] & FLAG_MASKED
    assert flags[2] & FLAG_SATURATED and not flags[3] & FLAG_SATURATED


def test_masked_and_non_finite_pixels_are_never_detected(rng: np.random.Generator) -> None:
    """A bright masked blob and a patch of NaNs produce no candidate and no NaN in any column."""
    image, variance = _gaussian_scene(rng, (128, 128), np.array([64.0]), np.array([64.0]), np.array([5e4]))
    mask = np.zeros(image.shape, dtype=bool)
    mask[54:75, 54:75] = True
    image[10:14, 10:14] = np.nan
    variance[100:104, 100:104] = 0.0
    settings = DetectSettings()
    bkg = subtract_background(image, mask, settings)
    cands = detect(bkg.sub_e, variance, mask, settings)
    _, dist = _match(cands.x, cands.y, np.array([64.0]), np.array([64.0]))
    assert dist[0] > 5
    for name in ("x", "y", "x_err_px", "y_err_px", "flux_e", "flux_err_e", "snr", "a_px", "b_px"):
        assert np.isfinite(getattr(cands, name)).all(), name


def test_crowded_frame_is_truncated_by_snr_and_reports_the_cut(rng: np.random.Generator) -> None:
    """With max_candidates below the number of sources, the brightest are kept and the rest counted."""
    n = 40
    xs = rng.uniform(20, 236, n)
    ys = rng.uniform(20, 236, n)
    image, variance = _gaussian_scene(rng, (256, 256), xs, ys, np.geomspace(2e3, 2e5, n))
    full = detect(subtract_background(image, None, DetectSettings()).sub_e, variance, None, DetectSettings())
    settings = DetectSettings(max_candidates=10)
    cut = detect(subtract_background(image, None, settings).sub_e, variance, None, settings)
    assert len(cut) == 10
    assert cut.n_truncated == len(full) - 10
    assert cut.snr.min() >= np.sort(full.snr)[-10] - 1e-9


def test_detect_is_a_pure_function_of_its_inputs(rng: np.random.Generator) -> None:
    """Two calls on the same arrays give identical candidates and leave the inputs untouched."""
    image, variance = _gaussian_scene(rng, (128, 128), np.array([40.0, 90.0]), np.array([50.0, 80.0]),
                                      np.array([1e4, 2e4]))
    sub = subtract_background(image, None, DetectSettings()).sub_e
    before = sub.copy()
    a = detect(sub, variance, None, DetectSettings())
    b = detect(sub, variance, None, DetectSettings())
    assert np.array_equal(sub, before)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.flux_e, b.flux_e) and np.array_equal(a.flags, b.flags)


def test_sep_flags_are_kept_in_the_low_byte(rng: np.random.Generator) -> None:
    """Two overlapping sources are deblended and sep's merged flag survives in our flags."""
    image, variance = _gaussian_scene(rng, (128, 128), np.array([60.0, 65.0]), np.array([64.0, 64.0]),
                                      np.array([3e4, 3e4]))
    settings = DetectSettings()
    cands = detect(subtract_background(image, None, settings).sub_e, variance, None, settings)
    assert len(cands) == 2
    assert np.all(cands.flags & sep.OBJ_MERGED)


@pytest.mark.parametrize("bad", [
    {"threshold_snr": 0.0}, {"min_area_px": 0}, {"max_candidates": 0}, {"deblend_cont": 2.0},
    {"background_box_px": 1},
])
def test_settings_out_of_range_are_refused(bad: dict[str, float]) -> None:
    """Impossible settings raise DetectionError naming the field."""
    with pytest.raises(DetectionError, match=next(iter(bad))):
        DetectSettings(**bad)


def test_mismatched_shapes_are_refused_with_a_typed_error() -> None:
    """A variance map of the wrong shape or a 1-D image is a DetectionError, not a crash in sep."""
    with pytest.raises(DetectionError, match="variance_e2"):
        detect(np.zeros((10, 10), np.float32), np.ones((10, 11), np.float32), None, DetectSettings())
    with pytest.raises(DetectionError, match="2-D"):
        subtract_background(np.zeros(10, np.float32), None, DetectSettings())
    with pytest.raises(DetectionError, match="masked"):
        subtract_background(np.full((10, 10), np.nan, np.float32), None, DetectSettings())


def test_both_known_cosmic_rays_in_the_real_gmos_frame_are_detected(real_data: Path) -> None:
    """With GMOS's own variance extension, each of the two cosmic rays astroscrappy fixes yields a candidate."""
    with fits.open(real_data / "gmos-cr" / "gmos.fits", memmap=False) as hdul:
        sci = hdul["SCI"].data.astype(np.float32)
        var = hdul["VAR"].data.astype(np.float32)
    settings = DetectSettings()
    cands = detect(subtract_background(sci, None, settings).sub_e, var, None, settings)
    for rows, cols in ((slice(41, 72), slice(142, 161)), (slice(117, 147), slice(35, 43))):
        inside = ((cands.y >= rows.start) & (cands.y < rows.stop)
                  & (cands.x >= cols.start) & (cands.x < cols.stop))
        assert inside.any()
        assert cands.snr[inside].max() > 50


def test_near_edge_flag_is_set_exactly_when_the_stamp_leaves_the_frame(rng: np.random.Generator) -> None:
    """For sources straddling the edge margin, FLAG_NEAR_EDGE matches whether the 32-pixel stamp has outside pixels."""
    from engines.stamps import cut_stamps

    size = 160
    offsets = np.array([14.7, 15.3, 15.7, 16.2, 17.0])
    xs = np.concatenate([offsets, size - 1 - offsets, np.linspace(30, 130, 5), np.linspace(35, 125, 5)])
    ys = np.concatenate([np.linspace(35, 125, 5), np.linspace(30, 130, 5), offsets, size - 1 - offsets])
    image, variance = _gaussian_scene(rng, (size, size), xs, ys, np.full(xs.size, 3e4))
    settings = DetectSettings()
    sub = subtract_background(image, None, settings).sub_e
    cands = detect(sub, variance, None, settings)
    idx, dist = _match(cands.x, cands.y, xs, ys)
    assert np.all(dist < 0.5)
    stamps = cut_stamps(sub, variance, None, cands.x[idx], cands.y[idx])
    leaves = stamps[:, 1].reshape(len(idx), -1).max(axis=1) > 0
    flagged = (cands.flags[idx] & FLAG_NEAR_EDGE) != 0
    assert np.array_equal(flagged, leaves)
    assert leaves.any() and not leaves.all()


def test_degenerate_shapes_still_get_a_flux() -> None:
    """Non-finite or inverted ellipse parameters from extraction fall back to a valid aperture instead of failing the frame."""
    from edge.detect import DetectSettings, _auto_flux

    sub = np.zeros((64, 64), np.float32)
    sub[30:33, 30:33] = 100.0
    var = np.ones_like(sub)
    bad = np.zeros(sub.shape, bool)
    x = np.array([31.0, 31.0, 31.0])
    y = np.array([31.0, 31.0, 31.0])
    a = np.array([np.nan, 3.0, 2.0])
    b = np.array([1.0, 4.0, 1.0])          # b > a in the second row
    theta = np.array([0.0, np.nan, 2.0])   # NaN and beyond pi/2
    flux, flux_err, _ = _auto_flux(sub, var, bad, x, y, a, b, theta, DetectSettings())
    assert np.allclose(flux, 900.0) and np.all(flux_err > 0)
