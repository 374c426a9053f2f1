"""Tests for engines.stamps: centring, S/N normalisation, mask channel and edge padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.detect import DetectSettings, detect, subtract_background
from edge.errors import DetectionError
from engines.stamps import SNR_CLIP_HIGH, SNR_CLIP_LOW, STAMP_SIZE, cut_stamps, normalise_snr

HALF = STAMP_SIZE // 2


def test_centre_pixel_is_the_rounded_candidate_position() -> None:
    """A single bright pixel at (row 40, col 70) lands on the stamp centre for positions rounding to it."""
    sub = np.zeros((100, 120), np.float32)
    sub[40, 70] = 500.0
    var = np.full(sub.shape, 4.0, np.float32)
    stamps = cut_stamps(sub, var, None, np.array([70.0, 70.49, 69.5]), np.array([40.0, 39.6, 40.2]))
    for stamp in stamps:
        peak = np.unravel_index(np.argmax(stamp[0]), stamp[0].shape)
        assert peak == (HALF, HALF)
        assert stamp[0, HALF, HALF] == pytest.approx(np.arcsinh(250.0), rel=1e-6)


def test_image_channel_is_clipped_asinh_of_snr(rng: np.random.Generator) -> None:
    """The image channel equals arcsinh of the S/N clipped to [-10, 1000], for every pixel."""
    sub = (rng.normal(size=(64, 64)) * 30).astype(np.float32)
    sub[32, 32] = 1e7
    sub[10, 10] = -1e5
    var = rng.uniform(1.0, 9.0, size=sub.shape).astype(np.float32)
    stamp = cut_stamps(sub, var, None, np.array([32.0]), np.array([32.0]))[0, 0]
    expected = np.arcsinh(np.clip(sub / np.sqrt(var), SNR_CLIP_LOW, SNR_CLIP_HIGH))[16:48, 16:48]
    np.testing.assert_allclose(stamp, expected, rtol=1e-5, atol=1e-6)
    assert stamp.max() == pytest.approx(np.arcsinh(SNR_CLIP_HIGH), rel=1e-6)


def test_stamp_at_the_corner_is_padded_with_zero_and_masked() -> None:
    """Pixels outside the frame are 0 in the image channel and 1 in the mask channel."""
    sub = np.ones((50, 50), np.float32) * 3.0
    var = np.ones_like(sub)
    stamp = cut_stamps(sub, var, None, np.array([0.0]), np.array([0.0]))[0]
    assert stamp.shape == (2, STAMP_SIZE, STAMP_SIZE)
    assert np.all(stamp[1, :HALF, :] == 1.0) and np.all(stamp[1, :, :HALF] == 1.0)
    assert np.all(stamp[0, :HALF, :] == 0.0)
    assert np.all(stamp[1, HALF:, HALF:] == 0.0)
    assert np.allclose(stamp[0, HALF:, HALF:], np.arcsinh(3.0))


def test_masked_non_finite_and_bad_variance_pixels_are_zero_and_flagged() -> None:
    """Masked, NaN, inf and non-positive-variance pixels give 0 in the image and 1 in the mask."""
    sub = np.full((40, 40), 2.0, np.float32)
    var = np.ones_like(sub)
    mask = np.zeros(sub.shape, bool)
    mask[20, 21] = True
    sub[19, 20] = np.nan
    sub[21, 20] = np.inf
    var[20, 19] = 0.0
    var[20, 18] = np.nan
    stamp = cut_stamps(sub, var, mask, np.array([20.0]), np.array([20.0]))[0]
    bad = [(HALF, HALF + 1), (HALF - 1, HALF), (HALF + 1, HALF), (HALF, HALF - 1), (HALF, HALF - 2)]
    for r, c in bad:
        assert stamp[0, r, c] == 0.0 and stamp[1, r, c] == 1.0
    assert stamp[1].sum() == len(bad)
    assert np.isfinite(stamp).all()


def test_no_candidates_give_an_empty_batch_of_the_right_shape() -> None:
    """An empty candidate list yields a (0, 2, 32, 32) float32 array the engine can take."""
    stamps = cut_stamps(np.zeros((10, 10), np.float32), np.ones((10, 10), np.float32), None,
                        np.zeros(0), np.zeros(0))
    assert stamps.shape == (0, 2, STAMP_SIZE, STAMP_SIZE) and stamps.dtype == np.float32


def test_bad_positions_and_shapes_are_refused() -> None:
    """NaN positions, unequal x/y lengths and a mismatched variance map raise DetectionError."""
    sub = np.zeros((10, 10), np.float32)
    var = np.ones((10, 10), np.float32)
    with pytest.raises(DetectionError, match="finite"):
        cut_stamps(sub, var, None, np.array([np.nan]), np.array([1.0]))
    with pytest.raises(DetectionError, match="x has"):
        cut_stamps(sub, var, None, np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(DetectionError, match="variance_e2"):
        cut_stamps(sub, np.ones((9, 10), np.float32), None, np.array([1.0]), np.array([1.0]))


def test_normalise_snr_is_monotonic_and_bounded() -> None:
    """The transform keeps order within the clip range and maps NaN and inf to 0."""
    snr = np.array([-1e9, -10, -1, 0, 1, 10, 100, 1000, 1e9, np.nan, np.inf], np.float32)
    out = normalise_snr(snr)
    assert np.all(np.diff(out[1:8]) > 0)
    assert out[0] == out[1] and out[7] == out[8]
    assert out[9] == 0.0 and out[10] == 0.0


def test_stamps_of_real_detections_peak_at_the_centre(ntt: dict[str, np.ndarray]) -> None:
    """On the NTT frame, each bright detection's stamp peaks within a pixel of its centre (neighbours may be brighter further out)."""
    image, variance = ntt["image"], ntt["variance"]
    settings = DetectSettings()
    sub = subtract_background(image, None, settings).sub_e
    cands = detect(sub, variance, None, settings)
    bright = cands.select((cands.snr > 30) & (cands.flags == 0))
    stamps = cut_stamps(sub, variance, None, bright.x, bright.y)
    assert len(bright) >= 5
    for stamp in stamps:
        core = stamp[0, HALF - 4:HALF + 5, HALF - 4:HALF + 5]
        r, c = np.unravel_index(np.argmax(core), core.shape)
        assert abs(r - 4) <= 1 and abs(c - 4) <= 1
        assert stamp[1].sum() == 0


_FRAME = np.random.default_rng(5).normal(size=(48, 40)).astype(np.float32) * 5
_VAR = np.random.default_rng(6).uniform(0.5, 4.0, size=(48, 40)).astype(np.float32)
_MASK = np.random.default_rng(7).uniform(size=(48, 40)) < 0.05


@settings(max_examples=60, deadline=None)
@given(x=st.floats(-20, 60), y=st.floats(-20, 70))
def test_edge_stamps_equal_interior_stamps_of_a_nan_padded_frame(x: float, y: float) -> None:
    """Cutting near or past the border gives what cutting from the frame padded with NaN gives, anywhere."""
    pad = 40
    sub = np.pad(_FRAME, pad, constant_values=np.nan)
    var = np.pad(_VAR, pad, constant_values=1.0)
    mask = np.pad(_MASK, pad, constant_values=False)
    direct = cut_stamps(_FRAME, _VAR, _MASK, np.array([x]), np.array([y]))
    padded = cut_stamps(sub, var, mask, np.array([x + pad]), np.array([y + pad]))
    np.testing.assert_array_equal(direct, padded)


def test_context_view_bins_the_96_px_around_the_candidate_with_the_centre_in_the_middle_bin() -> None:
    """The context view's bin (16, 16) holds the candidate's pixel in its middle; each bin's S/N is its
    pixels' sum over the root of their variances' sum; a source 40 px away is inside the view."""
    from engines.stamps import CONTEXT_BIN, cut_context

    sub = np.zeros((200, 200), np.float32)
    var = np.full(sub.shape, 4.0, np.float32)
    sub[100, 100] = 900.0
    sub[100, 140] = 900.0          # 40 px to the right: outside the 32 px stamp, inside the context
    view = cut_context(sub, var, None, np.array([100.0]), np.array([100.0]))[0]
    assert view.shape == (2, STAMP_SIZE, STAMP_SIZE) and CONTEXT_BIN == 3
    expected = np.arcsinh(900.0 / np.sqrt(9 * 4.0))
    assert view[0, HALF, HALF] == pytest.approx(expected, rel=1e-6)
    # 40 px = 13 bins and 1 px: the pixel at offset +40 lies in bin 16 + 13 = 29 (bins cover -1..+1 around 3k)
    assert view[0, HALF, HALF + 13] == pytest.approx(expected, rel=1e-6)
    assert np.count_nonzero(view[0]) == 2
    assert not view[1].any()
    sharp = cut_stamps(sub, var, None, np.array([100.0]), np.array([100.0]))[0]
    assert np.count_nonzero(sharp[0]) == 1


def test_context_bins_mostly_masked_or_outside_the_frame_are_masked() -> None:
    """Near the frame's edge the outside bins are masked and zero; a bin with 5 of 9 good pixels is kept."""
    from engines.stamps import cut_context

    sub = np.ones((120, 120), np.float32)
    var = np.ones(sub.shape, np.float32)
    mask = np.zeros(sub.shape, bool)
    # candidate at (60, 10): columns 10 - 49 .. 10 + 46 = -39 .. 56; bins 0..12 lie wholly outside
    mask[59:62, 10 + 3 * 5 - 1:10 + 3 * 5 + 2] = True        # bin (16, 21) wholly masked
    mask[59:61, 10 + 3 * 8 - 1:10 + 3 * 8 + 1] = True        # bin (16, 24): 4 of 9 masked, kept
    view = cut_context(sub, var, mask, np.array([10.0]), np.array([60.0]))[0]
    assert view[1, :, :13].all() and not view[0, :, :13].any()
    assert view[1, HALF, HALF + 5] == 1.0 and view[0, HALF, HALF + 5] == 0.0
    assert view[1, HALF, HALF + 8] == 0.0
    assert view[0, HALF, HALF + 8] == pytest.approx(np.arcsinh(5.0 / np.sqrt(5.0)), rel=1e-6)


def test_cut_for_makes_each_recipes_channels_and_refuses_an_unknown_one() -> None:
    """The sharp recipe gives 2 channels, the context recipe 4 (its first two are the sharp stamp)."""
    from engines.stamps import CONTEXT_NORMALISATION, NORMALISATION, cut_for

    rng = np.random.default_rng(3)
    sub = rng.normal(size=(150, 150)).astype(np.float32)
    var = np.ones(sub.shape, np.float32)
    x, y = np.array([20.0, 75.0]), np.array([75.0, 140.0])
    plain = cut_for(NORMALISATION, sub, var, None, x, y)
    wide = cut_for(CONTEXT_NORMALISATION, sub, var, None, x, y)
    assert plain.shape == (2, 2, 32, 32) and wide.shape == (2, 4, 32, 32)
    np.testing.assert_array_equal(wide[:, :2], plain)
    with pytest.raises(DetectionError, match="unknown stamp recipe"):
        cut_for("snr-v0", sub, var, None, x, y)


def test_context_views_equal_binning_the_96_px_squares_cut_from_a_padded_frame(rng: np.random.Generator) -> None:
    """The compiled binning reads the frame directly; it must give what cutting each 96 px square
    from a NaN-padded frame and binning it with numpy gives, at edges, masked, non-finite and
    zero-variance pixels included."""
    from engines.stamps import CONTEXT_BIN, CONTEXT_MIN_GOOD, cut_context, normalise_snr

    h, w = 300, 260
    sub = rng.normal(0.0, 10.0, (h, w)).astype(np.float32)
    var = rng.uniform(50.0, 150.0, (h, w)).astype(np.float32)
    sub[rng.random((h, w)) < 0.01] = np.nan
    var[rng.random((h, w)) < 0.01] = 0.0
    var[rng.random((h, w)) < 0.01] = np.inf
    mask = rng.random((h, w)) < 0.05
    x = np.concatenate([rng.uniform(-3, w + 3, 60), [0.0, w - 1.0, 5.49, 5.5]])
    y = np.concatenate([rng.uniform(-3, h + 3, 60), [h - 1.0, 0.0, 7.5, 7.49]])
    got = cut_context(sub, var, mask, x, y)

    pad = 3 * 32
    good = np.pad(~mask & np.isfinite(sub) & np.isfinite(var) & (var > 0), pad, constant_values=False)
    psub, pvar = np.pad(sub, pad), np.pad(var, pad)
    reach = CONTEXT_BIN * 16 + CONTEXT_BIN // 2
    for i in range(x.size):
        top = int(np.floor(y[i] + 0.5)) - reach + pad
        left = int(np.floor(x[i] + 0.5)) - reach + pad
        square = np.s_[top:top + 96, left:left + 96]
        g = good[square]
        p = np.where(g, psub[square], 0).reshape(32, 3, 32, 3).sum(axis=(1, 3))
        v = np.where(g, pvar[square], 0).reshape(32, 3, 32, 3).sum(axis=(1, 3))
        masked = g.reshape(32, 3, 32, 3).sum(axis=(1, 3)) < CONTEXT_MIN_GOOD
        want = np.where(masked, 0.0, normalise_snr(np.where(masked, 0.0, p / np.sqrt(np.where(masked, 1.0, v)))))
        np.testing.assert_array_equal(got[i, 1], masked.astype(np.float32))
        np.testing.assert_allclose(got[i, 0], want, atol=1e-5)
