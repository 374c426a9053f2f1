"""Deformed-object outlier exposure: stars stretched, galaxies bent or swirled, inside twin frames."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError
from engines.training.deform import STRETCH, deformed_stamps, stretch_stars, warp_galaxies
from engines.training.train import TrainSettings, make_twin_sets, training_twin_config
from twin.sky import Sources, draw_scene, flux_e, render_point_sources


def _moments(image: np.ndarray) -> tuple[float, float]:
    """Axis ratio and total of an image from its second moments within 8 px of the light's centre."""
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(float)
    w = np.clip(image, 0, None)
    cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    w = w * (((xx - cx) ** 2 + (yy - cy) ** 2) <= 64)
    dx, dy = xx - cx, yy - cy
    cov = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / w.sum()
    low, high = np.linalg.eigvalsh(cov)
    return float(np.sqrt(high / low)), float(image.sum())


def test_a_stretched_star_keeps_its_flux_and_is_elongated() -> None:
    """A round PSF star at the frame centre becomes elongated by about the stretch factor; flux stays."""
    config = training_twin_config(256)
    star = Sources(np.array([127.5]), np.array([127.5]), np.array([18.0]))  # the PSF is round at the centre
    before = np.zeros((256, 256), np.float32)
    for group in render_point_sources(config, star.x, star.y, flux_e(config, star.mag)):
        group.add_to(before)
    after = before.copy()
    stretch_stars(config, star, np.array([0]), after, np.random.default_rng(1))
    ratio_before, total_before = _moments(before[100:156, 100:156])
    ratio_after, total_after = _moments(after[100:156, 100:156])
    assert ratio_before < 1.02
    assert STRETCH[0] * 0.85 < ratio_after < STRETCH[1] * 1.15
    assert total_after == pytest.approx(total_before, rel=2e-3)
    # the star is taken away exactly as the twin drew it: no negative ring where its box ended
    assert after.min() >= 0.0


def test_a_warped_galaxy_keeps_its_flux_and_changes_shape() -> None:
    """Bending or swirling a galaxy moves its light about without creating or losing any."""
    config = training_twin_config(256)
    scene = draw_scene(config, 5)
    g = scene.galaxies
    bright = np.argsort(g.mag)[:3]
    keep = bright[(g.x[bright] > 40) & (g.x[bright] < 216) & (g.y[bright] > 40) & (g.y[bright] < 216)]
    assert keep.size, "the scene should hold a bright galaxy away from the edge"
    image = np.zeros((256, 256), np.float32)
    warp_galaxies(config, g, keep[:1], image, np.random.default_rng(2))
    # the image now holds (warped - original): zero total, but not zero everywhere
    assert abs(float(image.sum())) < 1e-3 * float(flux_e(config, g.mag[keep[:1]])[0])
    assert float(np.abs(image).sum()) > 0.05 * float(flux_e(config, g.mag[keep[:1]])[0])


def test_deformed_stamps_are_bright_reproducible_and_as_many_as_asked() -> None:
    config = training_twin_config(256)
    a = deformed_stamps(config, 12, seed=11, per_frame=8)
    b = deformed_stamps(config, 12, seed=11, per_frame=8)
    c = deformed_stamps(config, 12, seed=12, per_frame=8)
    assert a.shape == (12, 4, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all()
    # every stamp is centred on a detected object: S/N of the central 7x7 px above 5 (sky alone: ~0 +- 1)
    snr = np.sinh(a[:, 0])
    assert (snr[:, 12:19, 12:19].sum(axis=(1, 2)) / 7.0 > 5.0).all()
    assert deformed_stamps(config, 0, seed=11).shape == (0, 4, 32, 32)


def test_frames_without_stars_or_galaxies_are_refused_with_a_reason() -> None:
    empty = dataclasses.replace(training_twin_config(128), n_stars=0, n_galaxies=0)
    with pytest.raises(ConfigError, match="too few bright stars and galaxies"):
        deformed_stamps(empty, 5, seed=1)


def test_a_deformed_share_replaces_that_share_of_the_blob_stamps_and_zero_changes_nothing() -> None:
    small = TrainSettings(frame_size_px=256, n_train_frames=3, n_calib_frames=2, n_eval_frames=1)
    plain = make_twin_sets(small)
    mixed = make_twin_sets(dataclasses.replace(small, oe_deformed_share=0.5))
    n_oe = int(len(plain.train) * small.oe_fraction)
    assert len(plain.oe_train) == len(mixed.oe_train) == n_oe
    n_blobs = n_oe - int(round(0.5 * n_oe))
    # the blob part comes from the same generator in the same order: share 0 is the old recipe
    np.testing.assert_array_equal(mixed.oe_train[:n_blobs], plain.oe_train[:n_blobs])
    assert not np.array_equal(mixed.oe_train[n_blobs:], plain.oe_train[n_blobs:])
    assert len(mixed.oe_val) == len(plain.oe_val) == 1000
    assert mixed.configs["seeds"]["deformed_outliers"] == small.seed + 4


def test_old_manifests_without_the_share_read_as_blob_only() -> None:
    data = TrainSettings().to_dict()
    del data["oe_deformed_share"]
    assert TrainSettings.from_dict(data).oe_deformed_share == 0.0


def test_train_command_refuses_a_share_outside_0_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    assert main(["engines", "train", "--out", str(tmp_path / "e"), "--deformed-oe", "1.5"]) == 2
    assert "--deformed-oe" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
