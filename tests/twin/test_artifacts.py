"""Artifacts: cosmic rays sharper than any PSF; streaks long, straight, PSF-wide and where the truth says."""

from __future__ import annotations

import numpy as np
import pytest

from twin import DetectorModel, TwinConfig, simulate_frame
from twin.artifacts import add_streak, clip_segment


def _sharpness(image: np.ndarray, x: int, y: int) -> float:
    """Peak over the median of its 8 neighbours: LACosmic's idea of how sharp a feature is."""
    ring = np.delete(image[y - 1:y + 2, x - 1:x + 2].ravel(), 4)
    return float(image[y, x] / max(np.median(ring), 1e-3))


def test_cosmic_rays_are_sharper_than_the_psf() -> None:
    """Every cosmic ray's brightest pixel stands out of its neighbours more than any star's peak does."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(512, 512)), n_stars=300, n_galaxies=0, sky_e_per_s=0.0,
                     cosmic_ray_rate_per_s=5.0, streak_probability=0.0, star_mag_range=(14.0, 20.0))
    frame = simulate_frame(cfg, 0, 5)
    image = frame.expected_e.astype(float)
    t = frame.truth
    crs = t[t["label"] == "cosmic_ray"]
    assert len(crs) > 25
    assert np.any(crs["size_px"] == 0) and np.any(crs["size_px"] > 5)  # single hits and tracks
    sx, sy = np.asarray(t["x"][t["label"] == "star"]), np.asarray(t["y"][t["label"] == "star"])
    cr_sharp = []
    for row in crs:
        if np.hypot(sx - row["x"], sy - row["y"]).min() < 3 * cfg.fwhm_px + row["size_px"]:
            continue  # a hit on top of a star is judged against the star's light, not the sky
        # the brightest pixel along the hit or track
        xs = np.rint(np.linspace(row["x0"], row["x1"], 40)).astype(int)
        ys = np.rint(np.linspace(row["y0"], row["y1"], 40)).astype(int)
        ok = (xs > 0) & (xs < 511) & (ys > 0) & (ys < 511)
        if not ok.any():
            continue
        k = np.argmax(image[ys[ok], xs[ok]])
        cr_sharp.append(_sharpness(image, xs[ok][k], ys[ok][k]))
    stars = t[(t["label"] == "star") & (t["x"] > 2) & (t["x"] < 509) & (t["y"] > 2) & (t["y"] < 509)]
    star_sharp = []
    for row in stars:
        x, y = int(round(row["x"])), int(round(row["y"]))
        patch = image[y - 1:y + 2, x - 1:x + 2]
        dy, dx = np.unravel_index(np.argmax(patch), patch.shape)
        star_sharp.append(_sharpness(image, x + dx - 1, y + dy - 1))
    assert len(cr_sharp) > 20
    assert np.min(cr_sharp) > np.max(star_sharp)
    assert np.median(cr_sharp) > 10 * np.median(star_sharp)


def test_streak_is_a_psf_wide_line_between_its_truth_end_points() -> None:
    """A streak's profile across the trail has the PSF's FWHM, and its truth centre and ends lie on the trail."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(400, 400)), psf_fwhm_variation=0.0, psf_ellipticity=0.0)
    image = np.zeros((400, 400), np.float32)
    dep = add_streak(image, cfg, -300.0, 50.0, 700.0, 350.0, flux_per_px_e=200.0)
    x0, y0, x1, y1 = (float(e[0]) for e in dep.ends)
    assert (x0, y0) == pytest.approx((-0.5, 139.85), abs=0.01) and (x1, y1) == pytest.approx((399.5, 259.85), abs=0.01)
    assert (dep.x[0], dep.y[0]) == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2))
    assert dep.length_px[0] == pytest.approx(np.hypot(x1 - x0, y1 - y0))
    assert dep.flux_e[0] == pytest.approx(200.0 * dep.length_px[0], rel=0.02)
    # the profile across the trail, perpendicular to it, at its middle
    ux, uy = np.array([1000.0, 300.0]) / np.hypot(1000.0, 300.0)
    d = np.arange(-8, 8.01, 0.05)
    xs, ys = dep.x[0] - d * uy, dep.y[0] + d * ux
    prof = image[np.rint(ys).astype(int), np.rint(xs).astype(int)]
    # sample the trail at the exact pixel centres: distance of each centre from the line
    yy, xx = np.mgrid[150:250, 150:250]
    dist = ((yy - dep.y[0]) * ux - (xx - dep.x[0]) * uy).ravel()
    val = image[150:250, 150:250].ravel()
    half = val.max() / 2
    width = 2 * np.abs(dist[val >= half]).max()
    assert width == pytest.approx(cfg.fwhm_px, abs=0.35)
    assert prof.max() == pytest.approx(val.max(), rel=0.05)


def test_segment_outside_the_frame_has_no_part_inside() -> None:
    """Clipping returns None for a segment that misses the frame and the visible part otherwise."""
    assert clip_segment(-50, -50, -10, 300, (100, 100)) is None
    assert clip_segment(-10, 50, 200, 50, (100, 100)) == pytest.approx((-0.5, 50, 99.5, 50))


def test_streak_truth_in_a_frame(small_frame) -> None:
    """With streak_probability 1 a frame holds one streak row with its end points on the frame's border."""
    streaks = small_frame.truth[small_frame.truth["label"] == "streak"]
    assert len(streaks) == 1
    s = streaks[0]
    assert s["size_px"] > 50
    on_border = [abs(v + 0.5) < 1e-6 or abs(v - 511.5) < 1e-6 for v in (s["x0"], s["y0"], s["x1"], s["y1"])]
    short_debris = s["size_px"] < 0.6 * 512
    assert sum(on_border) >= 2 or short_debris
    assert s["fwhm_px"] > 0 and s["snr_expected"] > 0


@pytest.mark.parametrize(("x0", "y0", "x1", "y1"), [(10.0, -40.0, 60.0, 300.0), (250.0, 10.0, 30.0, 180.0)])
def test_steep_and_short_streaks_keep_their_flux(x0: float, y0: float, x1: float, y1: float) -> None:
    """Steep trails and trails ending inside the frame carry flux per pixel times their in-frame length."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(256, 256)))
    image = np.zeros((256, 256), np.float32)
    dep = add_streak(image, cfg, x0, y0, x1, y1, flux_per_px_e=100.0)
    assert image.sum() == pytest.approx(dep.flux_e[0], rel=1e-4)
    assert dep.flux_e[0] == pytest.approx(100.0 * dep.length_px[0], rel=0.03)
    ex0, ey0, ex1, ey1 = (float(e[0]) for e in dep.ends)
    assert min(ey0, ey1) >= -0.5 and max(ey0, ey1) <= 255.5
