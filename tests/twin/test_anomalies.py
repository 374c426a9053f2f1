"""Anomaly families: each switchable alone, never in the default mix, each with its own morphology."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import TwinError
from twin import ANOMALY_FAMILIES, DetectorModel, TwinConfig, simulate_frame
from twin.anomalies import IN_REFERENCE_CATALOG, half_px


def _alone(family: str) -> tuple[TwinConfig, object]:
    """A sky-free 384x384 frame holding only the family's objects."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(384, 384)), n_stars=0, n_galaxies=0, sky_e_per_s=0.0,
                     cosmic_ray_rate_per_s=0.0, streak_probability=0.0, anomalies=(family,), n_anomalies_per_family=3,
                     psf_fwhm_variation=0.0, psf_ellipticity=0.0)
    if family == "ghost":
        cfg = cfg.with_(n_stars=3, star_mag_range=(12.0, 12.5))
    return cfg, simulate_frame(cfg, 0, 9)


def _stamp(frame, row, half: int) -> np.ndarray:
    x, y = int(round(row["x"])), int(round(row["y"]))
    return frame.expected_e[y - half:y + half + 1, x - half:x + half + 1].astype(float)


def _radial(stamp: np.ndarray, row) -> tuple[np.ndarray, np.ndarray]:
    h = stamp.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    dx = xx - (row["x"] - round(row["x"]))
    dy = yy - (row["y"] - round(row["y"]))
    return np.hypot(dx, dy), np.arctan2(dy, dx)


def test_default_mix_has_no_anomalies_and_no_transients(small_frame) -> None:
    """The default configuration injects ordinary objects only: the classifier's training mix."""
    assert TwinConfig().anomalies == () and TwinConfig().n_transients == 0
    assert not np.isin(small_frame.truth["label"], ["anomaly", "transient"]).any()


@pytest.mark.parametrize("family", ANOMALY_FAMILIES)
def test_each_family_switches_on_alone(family: str) -> None:
    """Switching one family on injects that family only, labelled 'anomaly', with flux and S/N."""
    cfg, frame = _alone(family)
    rows = frame.truth[frame.truth["label"] == "anomaly"]
    assert len(rows) == 3 and set(rows["family"]) == {family}
    assert np.all(rows["snr_expected"] > 20) and np.all(rows["flux_e"] > 0)
    assert (rows["source_id"] >= 0).all() == (family in IN_REFERENCE_CATALOG)


def test_unknown_family_is_refused() -> None:
    """An unknown family name is a TwinError that lists the known ones."""
    with pytest.raises(TwinError, match="lens_arc"):
        TwinConfig(anomalies=("dragon",))


def test_lens_arc_puts_light_on_a_ring_around_a_central_galaxy() -> None:
    """Light peaks at the centre (the lens) and again at a radius of several FWHM (the arc), dark in between."""
    cfg, frame = _alone("lens_arc")
    for row in frame.truth[frame.truth["label"] == "anomaly"]:
        stamp = _stamp(frame, row, half_px("lens_arc", cfg))
        r, _ = _radial(stamp, row)
        ring = stamp[(r > 2.0 * cfg.fwhm_px) & (r < 3.5 * cfg.fwhm_px)].max()
        gap = np.median(stamp[(r > 1.2 * cfg.fwhm_px) & (r < 1.5 * cfg.fwhm_px)])
        assert stamp[r < 1].max() > gap and ring > 1.5 * np.median(stamp[(r > 1.9 * cfg.fwhm_px) & (r < 1.95 * cfg.fwhm_px + 1)])


def test_comet_is_lopsided_with_a_tail() -> None:
    """A comet's light beyond a few FWHM lies mostly on one side of its head."""
    cfg, frame = _alone("comet")
    for row in frame.truth[frame.truth["label"] == "anomaly"]:
        stamp = _stamp(frame, row, half_px("comet", cfg))
        r, phi = _radial(stamp, row)
        outer = r > 2 * cfg.fwhm_px
        vx = np.sum(stamp[outer] * np.cos(phi[outer]))
        vy = np.sum(stamp[outer] * np.sin(phi[outer]))
        assert np.hypot(vx, vy) > 0.5 * stamp[outer].sum()


def test_lobster_psf_is_a_cross() -> None:
    """Far from the core, a lobster-eye source's light lies along two perpendicular arms."""
    cfg, frame = _alone("lobster_psf")
    for row in frame.truth[frame.truth["label"] == "anomaly"]:
        stamp = _stamp(frame, row, half_px("lobster_psf", cfg))
        r, phi = _radial(stamp, row)
        ring = (r > 8) & (r < 16)
        angles = np.linspace(0, np.pi / 2, 90, endpoint=False)
        # light within 10 degrees of the best set of four perpendicular directions
        best = max(stamp[ring & (np.abs(np.angle(np.exp(4j * (phi - a)))) < 4 * np.deg2rad(10))].sum() for a in angles)
        assert best > 0.6 * stamp[ring].sum()  # a round PSF would put 2/9 there


def test_close_double_is_elongated() -> None:
    """A close double's second moments are elongated along the pair; a star's are round."""
    cfg, frame = _alone("close_double")
    for row in frame.truth[frame.truth["label"] == "anomaly"]:
        stamp = _stamp(frame, row, 8)
        h = 8
        yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
        w = stamp / stamp.sum()
        mx, my = (w * xx).sum(), (w * yy).sum()
        cxx, cyy, cxy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum(), (w * (xx - mx) * (yy - my)).sum()
        lam = np.linalg.eigvalsh([[cxx, cxy], [cxy, cyy]])
        assert lam[1] / lam[0] > 1.15


def test_ghost_is_a_donut_near_the_mirror_image_of_a_bright_star() -> None:
    """A ghost has a dark centre inside a bright annulus, opposite a bright star across the optical centre."""
    cfg, frame = _alone("ghost")
    ghosts = frame.truth[frame.truth["label"] == "anomaly"]
    stars = frame.truth[frame.truth["label"] == "star"]
    n = cfg.detector.shape_px[0]
    for row in ghosts:
        stamp = _stamp(frame, row, half_px("ghost", cfg))
        r, _ = _radial(stamp, row)
        radius = row["size_px"]
        assert stamp[r < 1.5].mean() < 0.5 * stamp[(r > 0.6 * radius) & (r < 0.9 * radius)].mean()
        mirror = np.hypot(stars["x"] - (n - 1 - row["x"]), stars["y"] - (n - 1 - row["y"])).min()
        assert mirror < 0.1 * n
