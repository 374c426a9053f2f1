"""Tests for calibration.combine: the sigma-clipped combine of a stack."""

from __future__ import annotations

import numpy as np

from calibration.combine import sigma_clip_combine


def test_cosmic_ray_in_one_frame_does_not_reach_the_master(rng: np.random.Generator) -> None:
    """A 5000-ADU hit in one of five frames is rejected and the pixel's mean stays at the true level."""
    stack = rng.normal(100.0, 3.0, (5, 64, 64)).astype(np.float32)
    stack[2, 10, 20] += 5000.0
    c = sigma_clip_combine(stack)
    assert abs(c.mean[10, 20] - 100.0) < 10.0
    assert c.n_used[10, 20] <= 4
    assert (c.n_used >= 3).all()


def test_clean_stack_mean_is_unbiased_and_its_variance_is_right(rng: np.random.Generator) -> None:
    """On Gaussian frames the master's mean is unbiased and its variance is sigma^2 / n within 5 % (no good values clipped)."""
    sigma, n = 4.0, 10
    stack = rng.normal(500.0, sigma, (n, 128, 128)).astype(np.float32)
    c = sigma_clip_combine(stack, rows_per_block=32)
    assert abs(float(c.mean.mean()) - 500.0) < 0.05
    measured = float(c.mean.var())
    assert abs(measured / (sigma ** 2 / n) - 1.0) < 0.05
    assert abs(float(c.variance_of_mean.mean()) / (sigma ** 2 / n) - 1.0) < 0.1


def test_quantised_identical_values_keep_every_frame() -> None:
    """Where every frame has the same integer value (MAD 0), no frame is rejected."""
    stack = np.full((6, 8, 8), 214.0, np.float32)
    c = sigma_clip_combine(stack)
    assert (c.n_used == 6).all()
    assert (c.mean == 214.0).all()
