"""The diffuse pass of detection (edge.diffuse): faint rings and arcs on real sky, no doubles of what
the full-resolution pass found."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.detect import FLAG_DIFFUSE, DetectSettings, detect, subtract_background
from edge.errors import DetectionError


def _ring(shape: tuple[int, int], x0: float, y0: float, radius: float, width: float) -> np.ndarray:
    """A ghost's donut of peak 1: a Gaussian annulus."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-0.5 * ((np.hypot(xx - x0, yy - y0) - radius) / width) ** 2)


def _empty_spots(frame: dict[str, np.ndarray], settings: DetectSettings, n: int) -> list[tuple[float, float]]:
    """Centres of n places of the frame at least 20 px from any detection and 36 px from each other."""
    bkg = subtract_background(frame["image"], None, settings)
    cands = detect(bkg.sub_e, frame["variance"], None, settings)
    h, w = frame["image"].shape
    spots: list[tuple[float, float]] = []
    for y in range(20, h - 20, 4):
        for x in range(20, w - 20, 4):
            if (np.hypot(cands.x - x, cands.y - y).min() >= 20
                    and all(np.hypot(sx - x, sy - y) >= 36 for sx, sy in spots) and len(spots) < n):
                spots.append((x + 0.3, y - 0.2))
    assert len(spots) == n, "the real frame has too few empty places for the test"
    return spots


def test_faint_rings_on_real_sky_are_found_by_the_diffuse_pass_alone(ntt: dict[str, np.ndarray]) -> None:
    """Ghost-like rings of radius 7 px peaking at 3.5 sigma a pixel (S/N about 70 in all) put on empty
    places of the real NTT frame are missed at full resolution and found by the 2 x 2 pass, near
    their centres, flagged FLAG_DIFFUSE, with a positive flux measured at full resolution (sep's
    threshold is in sigma of the unfiltered pixel; the fast backend's, on the filtered S/N, finds
    pieces of these rings at full resolution already)."""
    plain = DetectSettings()
    spots = _empty_spots(ntt, plain, 6)
    sigma = np.sqrt(ntt["variance"])
    image = ntt["image"].copy()
    for x0, y0 in spots:
        image += (3.5 * sigma * _ring(image.shape, x0, y0, radius=7.0, width=2.5)).astype(np.float32)
    found = {}
    for k in (0, 2):
        settings = dataclasses.replace(plain, diffuse_bin=k)
        bkg = subtract_background(image, None, settings)
        cands = detect(bkg.sub_e, ntt["variance"], None, settings)
        d = np.array([np.hypot(cands.x - x0, cands.y - y0).min() if len(cands) else np.inf for x0, y0 in spots])
        found[k] = d <= 6.0
        if k:
            diffuse = (cands.flags & FLAG_DIFFUSE) != 0
            nearest = [int(np.argmin(np.hypot(cands.x - x0, cands.y - y0))) for x0, y0 in spots]
            assert all(diffuse[i] and cands.flux_e[i] > 0 for i, hit in zip(nearest, found[k], strict=True) if hit)
    assert found[0].sum() <= 1
    assert found[2].sum() >= 4


@pytest.mark.parametrize("backend", ["sep", "fast"])
def test_the_diffuse_pass_finds_nothing_twice_on_a_real_frame(ntt: dict[str, np.ndarray], backend: str) -> None:
    """On the real NTT frame the full-resolution candidates are the same with the pass on, and no
    diffuse candidate sits on one of them."""
    plain = DetectSettings(backend=backend)
    bkg = subtract_background(ntt["image"], None, plain)
    first = detect(bkg.sub_e, ntt["variance"], None, plain)
    both = detect(bkg.sub_e, ntt["variance"], None, dataclasses.replace(plain, diffuse_bin=2))
    diffuse = (both.flags & FLAG_DIFFUSE) != 0
    assert np.array_equal(both.x[~diffuse], first.x) and np.array_equal(both.flux_e[~diffuse], first.flux_e)
    assert diffuse.sum() < 0.2 * len(first)
    for x, y in zip(both.x[diffuse], both.y[diffuse], strict=True):
        assert np.hypot(first.x - x, first.y - y).min() > 3.0


@pytest.mark.parametrize("k", [1, -2, 17])
def test_a_binning_that_is_no_pass_is_refused(k: int) -> None:
    """diffuse_bin is 0 (off) or 2..16."""
    with pytest.raises(DetectionError, match="diffuse_bin"):
        DetectSettings(diffuse_bin=k)
