"""Any valid small configuration simulates without error into a well-formed, reproducible frame."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin import ANOMALY_FAMILIES, ORDINARY_LABELS, DetectorModel, TwinConfig, simulate_frame

configs = st.builds(
    lambda ny, nx, n_stars, n_gal, families, n_tr, fwhm, defocus, rot, exposure, seed: (TwinConfig(
        detector=DetectorModel(shape_px=(ny, nx), n_bad_columns=1, seed=seed % 7),
        n_stars=n_stars, n_galaxies=n_gal, anomalies=families, n_anomalies_per_family=2, n_transients=n_tr,
        psf_fwhm_arcsec=fwhm, defocus_px=defocus, rotation_deg=rot, exposure_s=exposure,
        streak_probability=1.0, cosmic_ray_rate_per_s=20.0, star_mag_range=(10.0, 22.0)), seed),
    st.integers(16, 96), st.integers(16, 96), st.integers(0, 40), st.integers(0, 10),
    st.lists(st.sampled_from(ANOMALY_FAMILIES), unique=True, max_size=5).map(tuple), st.integers(0, 3),
    st.floats(0.5, 4.0), st.sampled_from([0.0, 4.0]), st.floats(0.0, 360.0), st.floats(0.1, 300.0),
    st.integers(0, 2 ** 31))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_small_configuration_gives_a_well_formed_frame(case: tuple[TwinConfig, int]) -> None:
    """Frames of random sizes, PSFs, exposures and injections are uint16, finite and reproducible."""
    config, seed = case
    frame = simulate_frame(config, 1, seed)
    assert frame.raw_adu.dtype == np.uint16 and frame.raw_adu.shape == config.detector.shape_px
    assert np.all(np.isfinite(frame.expected_e)) and frame.expected_e.min() >= 0
    t = frame.truth
    assert set(t["label"]) <= {*ORDINARY_LABELS, "anomaly", "transient"}
    for name in ("x", "y", "flux_e", "snr_expected", "ra_deg", "dec_deg"):
        assert np.all(np.isfinite(t[name])), name
    assert set(t["family"][t["label"] == "anomaly"]) <= set(config.anomalies)
    assert simulate_frame(config, 1, seed).raw_adu.tobytes() == frame.raw_adu.tobytes()
