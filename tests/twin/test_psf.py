"""The optics: star FWHM as configured across the field, galaxies as GalSim draws them."""

from __future__ import annotations

import numpy as np
import pytest

from twin import DetectorModel, TwinConfig, simulate_frame
from twin.sky import Sources, render_galaxies


@pytest.fixture(scope="module")
def sparse_field() -> tuple[TwinConfig, object]:
    """A 1024x1024 frame of 300 moderately bright stars and nothing else but sky."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(1024, 1024)), n_stars=300, n_galaxies=0,
                     cosmic_ray_rate_per_s=0.0, streak_probability=0.0, star_mag_range=(15.0, 18.0),
                     sky_gradient=0.0)
    return cfg, simulate_frame(cfg, 0, 3)


def _isolated_stars(frame, shape, min_sep_px: float = 20.0, margin_px: int = 20):
    t = frame.truth[frame.truth["label"] == "star"]
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    ny, nx = shape
    ok = (d.min(axis=1) > min_sep_px) & (x > margin_px) & (x < nx - margin_px) & (y > margin_px) & (y < ny - margin_px)
    r = np.hypot((x - (nx - 1) / 2) / ((nx - 1) / 2), (y - (ny - 1) / 2) / ((ny - 1) / 2)) / np.sqrt(2)
    return t, x, y, ok, r


def test_star_fwhm_near_the_centre_is_the_configured_fwhm_within_5_percent(sparse_field, calibrate, fwhm_of) -> None:
    """Moffat fits to calibrated, noisy stars near the field centre give the configured FWHM within 5 %."""
    cfg, frame = sparse_field
    image = calibrate(frame, cfg) - cfg.sky_e_per_s * cfg.exposure_s
    t, x, y, ok, r = _isolated_stars(frame, cfg.detector.shape_px)
    sel = ok & (r < 0.3)
    assert sel.sum() >= 10
    fwhm = np.median([fwhm_of(image, a, b) for a, b in zip(x[sel], y[sel], strict=True)])
    assert fwhm == pytest.approx(cfg.fwhm_px, rel=0.05)


def test_psf_broadens_towards_the_corners_as_configured(sparse_field, calibrate, fwhm_of) -> None:
    """Stars near the corners are wider than central ones by about psf_fwhm_variation, as the truth says."""
    cfg, frame = sparse_field
    image = frame.expected_e.astype(float) - cfg.sky_e_per_s * cfg.exposure_s
    t, x, y, ok, r = _isolated_stars(frame, cfg.detector.shape_px)
    centre = ok & (r < 0.3)
    corner = ok & (r > 0.8)
    assert corner.sum() >= 3
    fw_centre = np.median([fwhm_of(image, a, b) for a, b in zip(x[centre], y[centre], strict=True)])
    fw_corner = np.median([fwhm_of(image, a, b) for a, b in zip(x[corner], y[corner], strict=True)])
    assert fw_corner / fw_centre == pytest.approx(np.median(t["fwhm_px"][corner]) / np.median(t["fwhm_px"][centre]), rel=0.02)
    assert fw_corner > fw_centre * (1 + 0.5 * cfg.psf_fwhm_variation)


@pytest.mark.parametrize(("sersic_n", "r_eff_px", "axis_ratio", "max_l1"),
                         [(1.0, 4.0, 0.6, 0.02), (0.7, 6.0, 0.4, 0.02), (2.5, 1.5, 1.0, 0.04), (4.0, 2.0, 0.8, 0.08)])
def test_galaxy_stamps_agree_with_galsim(sersic_n: float, r_eff_px: float, axis_ratio: float, max_l1: float) -> None:
    """A Sersic galaxy convolved with the PSF on its stamp matches GalSim's drawing of the same profile."""
    import galsim  # the twin extra, installed with the dev set-up (build.sh)

    cfg = TwinConfig(detector=DetectorModel(shape_px=(256, 256)), psf_fwhm_variation=0.0, psf_ellipticity=0.0)
    x, y, angle = np.array([128.3]), np.array([127.6]), np.array([0.5])
    gal = Sources(x, y, np.array([18.0]), np.array([r_eff_px]), np.array([sersic_n]), np.array([axis_ratio]), angle)
    ours = render_galaxies(cfg, gal, np.array([1.0]))[0].stamps[0].astype(float)
    profile = galsim.Sersic(n=sersic_n, half_light_radius=r_eff_px).shear(q=axis_ratio, beta=angle[0] * galsim.radians)
    obj = galsim.Convolve(profile, galsim.Moffat(beta=cfg.psf_beta, fwhm=cfg.fwhm_px))
    ref = obj.shift(x[0] - round(x[0]), y[0] - round(y[0])).drawImage(
        nx=ours.shape[1], ny=ours.shape[0], scale=1.0).array.astype(float)
    ours /= ours.sum()
    ref /= ref.sum()
    assert np.abs(ours - ref).sum() < max_l1


def _moments(stamp: np.ndarray) -> tuple[float, float]:
    """Ellipticity and position angle (rad) of a stamp's second moments."""
    yy, xx = np.mgrid[: stamp.shape[0], : stamp.shape[1]]
    w = stamp / stamp.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    cxx, cyy, cxy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum(), (w * (xx - mx) * (yy - my)).sum()
    lam_small, lam_big = np.linalg.eigvalsh([[cxx, cxy], [cxy, cyy]])
    return 1 - np.sqrt(lam_small / lam_big), 0.5 * np.arctan2(2 * cxy, cxx - cyy)


def test_corner_stars_are_elongated_tangentially() -> None:
    """Astigmatism stretches corner stars perpendicular to the line from the field centre."""
    from twin.psf import moffat_stamps, psf_at

    cfg = TwinConfig(detector=DetectorModel(shape_px=(1024, 1024)), psf_ellipticity=0.2)
    x, y = np.array([1000.0, 20.0, 511.5]), np.array([1000.0, 1000.0, 511.5])
    stamps = moffat_stamps(x, y, psf_at(cfg, x, y), 12)
    for k in range(2):
        ell, angle = _moments(stamps[k].astype(float))
        radial = np.arctan2(y[k] - 511.5, x[k] - 511.5)
        assert ell > 0.05
        assert abs(np.cos(angle - radial)) < 0.1  # major axis perpendicular to the radius
    assert _moments(stamps[2].astype(float))[0] < 0.01


def test_defocus_turns_stars_into_donuts() -> None:
    """With defocus_px set, a star's centre is darker than its ring at that radius."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(128, 128)), defocus_px=6.0, n_stars=1,
                     star_mag_range=(15.0, 15.01), n_galaxies=0, sky_e_per_s=0.0, cosmic_ray_rate_per_s=0.0,
                     streak_probability=0.0, psf_fwhm_variation=0.0, psf_ellipticity=0.0)
    frame = simulate_frame(cfg, 0, 1)
    star = frame.truth[frame.truth["label"] == "star"][0]
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(xx - star["x"], yy - star["y"])
    img = frame.expected_e
    assert img[r < 1.0].mean() < 0.5 * img[(r > 5.0) & (r < 7.0)].mean()
    assert img.sum() == pytest.approx(star["flux_e"], rel=1e-3)
