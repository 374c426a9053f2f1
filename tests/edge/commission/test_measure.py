"""The instrument measured from calibrated frames, and the twin fitted to it: on a twin-made foreign
instrument, where the truth is known."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from edge.commission.measure import counts_per_flux_bin, measure_frame, summary
from edge.commission.twinfit import Instrument, fit_twin, preset
from edge.detect import DetectSettings
from edge.errors import CalibrationInputError


def test_the_psf_sky_noise_and_shape_of_a_foreign_camera_are_measured(foreign_measured: list[Any], foreign: Any) -> None:
    """FWHM, Moffat beta and the sky's noise of a camera with another PSF, pixel scale and noise than
    the engine's twin come out as the camera's truth."""
    cam = foreign.config
    s = summary(foreign_measured)
    assert s["fwhm_px"] == pytest.approx(cam.fwhm_px, rel=0.06)
    assert s["beta"] == pytest.approx(cam.psf_beta, rel=0.25)
    sky_e = cam.sky_e_per_s * cam.exposure_s
    assert s["sky_e"] == pytest.approx(sky_e, rel=0.05)
    assert s["sky_noise_e"] == pytest.approx(math.sqrt(sky_e + cam.detector.read_noise_e ** 2), rel=0.08)
    assert s["ellipticity"] < 0.15
    edges, counts = counts_per_flux_bin(foreign_measured)
    assert counts.sum() > 100 and edges.size == counts.size + 1


def test_a_frame_without_stars_is_refused_with_the_reason(foreign: Any) -> None:
    """A frame of sky alone (a flat, a closed dome) names itself and says it holds no star field."""
    cam = foreign.config
    image, var, mask = foreign.calibrated(cam.with_(n_stars=0, n_galaxies=0, cosmic_ray_rate_per_s=0.0), 0, 1)
    with pytest.raises(CalibrationInputError, match="no star field") as err:
        measure_frame("empty.fits", image, var, mask, cam.exposure_s, DetectSettings())
    assert "empty.fits" in str(err.value)


def test_the_fitted_twin_of_a_foreign_camera_is_within_ten_percent_of_it(foreign_measured: list[Any], foreign: Any) -> None:
    """Fitted from two measured frames, the twin's PSF FWHM and sky noise come within 10 % of the
    camera's, and its counts in the well-populated flux bins within their Poisson error."""
    cam = foreign.config
    det = cam.detector
    inst = Instrument(gain_e_per_adu=det.gain_e_per_adu, read_noise_e=det.read_noise_e, bias_adu=det.bias_adu,
                      saturate_e=det.full_well_e, pixel_scale_arcsec=1.2, filter_name="V", vignetting=0.2,
                      cosmic_ray_rate_per_s=1.0)
    fitted = fit_twin(foreign_measured, inst, DetectSettings(), rounds=3, n_frames=2)
    d = fitted.distances
    assert abs(d["fwhm_px"]["distance"]) < 0.10 and abs(d["sky_noise_e"]["distance"]) < 0.10
    counted = [b for b in d["counts_per_flux_bin"] if b["real_per_frame"] >= 20]
    assert counted
    for b in counted:
        assert abs(b["distance"]) < max(0.10, 3 * b["error"])
    p = preset(fitted.config)
    assert p["pixel_scale_arcsec"] == 1.2 and p["detector"]["gain_e_per_adu"] == det.gain_e_per_adu
    assert p["psf_fwhm_arcsec"] / p["pixel_scale_arcsec"] == pytest.approx(cam.fwhm_px, rel=0.1)
    assert np.all(np.asarray(p["star_mag_weights"]) > 0)
