"""A real raw frame (m13-raw) and a twin frame of the dsi-m13 instrument look alike to sep.

The ranges are the ones docs/twin.md states for the configured instrument ``dsi-m13``.
"""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy.io import fits

from twin import dsi_m13_config, simulate_frame

# docs/twin.md, "Does it look real?"
RMS_RANGE_ADU = (21.7, 24.0)
DENSITY_RANGE_PER_MPX = {1.5: (10.0, 30.0), 2.0: (4.0, 15.0)}


def _sep_view(adu: np.ndarray) -> tuple[float, float, dict[float, float]]:
    d = np.ascontiguousarray(adu, dtype=np.float32)
    bkg = sep.Background(d)
    sub = d - bkg
    density = {th: len(sep.extract(sub, th, err=bkg.globalrms, minarea=5)) / d.size * 1e6 for th in DENSITY_RANGE_PER_MPX}
    return float(bkg.globalback), float(bkg.globalrms), density


@pytest.fixture(scope="module")
def real_view(real_data) -> tuple[float, float, dict[float, float]]:
    """sep's view of M13_blue_0001.fits."""
    return _sep_view(fits.getdata(real_data / "m13-raw" / "M13_blue_0001.fits"))


def test_real_frame_lies_in_the_documented_ranges(real_view) -> None:
    """The documented ranges contain the real frame itself."""
    _, rms, density = real_view
    assert RMS_RANGE_ADU[0] < rms < RMS_RANGE_ADU[1]
    for th, (lo, hi) in DENSITY_RANGE_PER_MPX.items():
        assert lo < density[th] < hi


@pytest.mark.parametrize("seed", [0, 1])
def test_twin_frame_looks_like_the_real_one_to_sep(real_view, seed: int) -> None:
    """A dsi-m13 twin frame has the real frame's shape, pedestal, background RMS and source density."""
    raw = simulate_frame(dsi_m13_config(), 0, seed).raw_adu
    assert raw.shape == (1040, 1392) and raw.dtype == np.uint16
    back, rms, density = _sep_view(raw)
    assert back == pytest.approx(real_view[0], abs=5.0)
    assert RMS_RANGE_ADU[0] < rms < RMS_RANGE_ADU[1]
    for th, (lo, hi) in DENSITY_RANGE_PER_MPX.items():
        assert lo < density[th] < hi
