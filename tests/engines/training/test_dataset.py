"""Training-set construction: calibration as the node does it, truth matching, outlier stamps."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from engines.training.dataset import (
    BOGUS,
    CLASSES,
    NEAR_PREFIX,
    UNKNOWN,
    UNKNOWN_LIGHT_SHARE,
    calibrate_twin_frame,
    candidates_from_frame,
    frame_seed,
    label_candidates,
    outlier_stamps,
    stamps_from_frame,
)
from engines.training.train import training_twin_config
from twin import ANOMALY_FAMILIES, simulate_frame


def _truth(rows: list[tuple[float, float, str, str, float, float, float, float, float]]) -> Table:
    names = ("x", "y", "label", "family", "x0", "y0", "x1", "y1", "size_px")
    return Table(rows=rows, names=names)


def test_candidates_take_the_label_of_the_nearest_true_object() -> None:
    """A candidate on a star is a star, one on a streak's track a streak, one far from everything bogus."""
    truth = _truth([
        (10.0, 40.0, "star", "star", 10.0, 40.0, 10.0, 40.0, 0.0),
        (50.0, 50.0, "streak", "streak", 0.0, 0.0, 100.0, 100.0, 141.0),
        (80.0, 20.0, "galaxy", "galaxy", 80.0, 20.0, 80.0, 20.0, 3.0),
    ])
    x = np.array([10.8, 30.5, 84.0, 200.0])
    y = np.array([40.3, 31.5, 20.0, 5.0])
    labels, family = label_candidates(x, y, truth)
    assert [CLASSES[i] for i in labels] == ["star", "streak", "galaxy", "bogus"]
    assert family.tolist() == ["star", "streak", "galaxy", "bogus"]


def test_anomaly_wins_over_a_nearer_ordinary_object() -> None:
    """A candidate on an extended anomaly is labelled with its family even when a star is nearer."""
    truth = _truth([
        (20.0, 20.0, "star", "star", 20.0, 20.0, 20.0, 20.0, 0.0),
        (28.0, 20.0, "anomaly", "ghost", 28.0, 20.0, 28.0, 20.0, 0.0),
    ])
    labels, family = label_candidates(np.array([21.0]), np.array([20.0]), truth)
    assert labels.tolist() == [UNKNOWN]
    assert family.tolist() == ["ghost"]


def test_with_light_known_an_anomaly_is_what_its_light_makes() -> None:
    """With each family's light known, a star lying on a ghost's donut is neither a star nor the
    ghost, a candidate made of the donut's light is the ghost's however far from its centre, and a
    star away from it is a star."""
    truth = _truth([
        (20.0, 20.0, "star", "star", 20.0, 20.0, 20.0, 20.0, 0.0),
        (90.0, 90.0, "star", "star", 90.0, 90.0, 90.0, 90.0, 0.0),
        (28.0, 20.0, "anomaly", "ghost", 28.0, 20.0, 28.0, 20.0, 0.0),
    ])
    yy, xx = np.mgrid[0:120, 0:120].astype(np.float32)
    star = 500.0 * (np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 4.0) + np.exp(-((xx - 90) ** 2 + (yy - 90) ** 2) / 4.0))
    r = np.hypot(xx - 28, yy - 20)
    ghost = np.where((r >= 8) & (r <= 45), 5.0, 0.0).astype(np.float32)
    light = {"sky": np.full((120, 120), 100.0, np.float32), "star": star.astype(np.float32), "ghost": ghost}
    x = np.array([20.3, 28.0, 66.0, 90.2])
    y = np.array([20.1, 32.0, 20.0, 89.8])
    labels, family = label_candidates(x, y, truth, light)
    assert labels.tolist() == [UNKNOWN, UNKNOWN, UNKNOWN, CLASSES.index("star")]
    assert family.tolist() == [NEAR_PREFIX + "ghost", "ghost", "ghost", "star"]
    # without light, distance decides: the star on the donut is the ghost's, the far donut bogus
    labels, family = label_candidates(x, y, truth)
    assert family.tolist() == ["ghost", "ghost", "bogus", "star"]


def test_no_truth_means_every_candidate_is_bogus() -> None:
    """With an empty truth table every candidate is bogus."""
    labels, _ = label_candidates(np.array([1.0, 2.0]), np.array([1.0, 2.0]), _truth([]))
    assert labels.tolist() == [BOGUS, BOGUS]


@pytest.fixture(scope="module")
def small_frame() -> tuple[object, object]:
    """A 256 x 256 twin frame of the training mix with every anomaly family switched on."""
    config = training_twin_config(256, anomalies=ANOMALY_FAMILIES)
    return config, simulate_frame(config, 0, frame_seed(99, 0), light_by_family=True)


def test_bundle_calibration_masks_hot_pixels_and_bare_calibration_keeps_them(small_frame: tuple[object, object]) -> None:
    """With the bundle hot pixels are masked; without it they stand out far above the noise."""
    config, frame = small_frame
    hot = config.detector.hot_pixel_mask()
    assert hot.any()
    image, variance, mask = calibrate_twin_frame(frame, config, bundle=True)
    assert mask[hot].all()
    bare, bare_var, bare_mask = calibrate_twin_frame(frame, config, bundle=False)
    assert not bare_mask[hot].any()
    assert np.median(bare[hot] / np.sqrt(bare_var[hot])) > 5.0
    assert np.isfinite(image).all() and (variance > 0).all()


def test_frame_stamps_are_labelled_and_mostly_real_sources(small_frame: tuple[object, object]) -> None:
    """Detection on a twin frame yields stamps of the contract shape, with few bogus and the anomalies found."""
    config, frame = small_frame
    data, cands = candidates_from_frame(frame, config)
    assert data.stamps.shape == (len(data), 4, 32, 32)   # the sharp stamp and its context
    assert len(data) > 20 and len(cands) == len(data)
    np.testing.assert_array_equal(data.snr, cands.snr)
    assert (data.labels == BOGUS).mean() < 0.1
    assert (data.labels == CLASSES.index("star")).sum() > 10
    members = (data.labels == UNKNOWN) & ~np.char.startswith(data.family.astype(str), NEAR_PREFIX)
    assert set(data.family[members]) <= set(ANOMALY_FAMILIES)
    assert set(data.family[(data.labels == UNKNOWN) & ~members]) <= {NEAR_PREFIX + f for f in ANOMALY_FAMILIES}
    assert members.sum() >= 3
    # every anomaly member is made mostly of its family's light (3x3 pixels at its centre pixel)
    light = frame.light_e
    sources = sum(v for k, v in light.items() if k != "sky")
    cands_x, cands_y = np.asarray(cands.x), np.asarray(cands.y)
    for k in np.flatnonzero(members):
        iy, ix = int(np.floor(cands_y[k] + 0.5)), int(np.floor(cands_x[k] + 0.5))
        box = np.s_[iy - 1:iy + 2, ix - 1:ix + 2]
        assert light[data.family[k]][box].sum() >= UNKNOWN_LIGHT_SHARE * sources[box].sum()


def test_a_probe_stamp_size_cuts_wider_stamps_around_the_same_candidates(small_frame: tuple[object, object]) -> None:
    """48 px stamps hold the 32 px stamps (the sharp channels) in their centre, with the same labels."""
    config, frame = small_frame
    small = stamps_from_frame(frame, config)
    wide = stamps_from_frame(frame, config, stamp_size=48)
    assert wide.stamps.shape == (len(small), 2, 48, 48)
    np.testing.assert_array_equal(wide.labels, small.labels)
    np.testing.assert_array_equal(wide.stamps[:, :, 8:40, 8:40], small.stamps[:, :2])


def test_frame_seeds_differ_between_frames_and_sets() -> None:
    """Each frame of a set, and each set, draws its own scene."""
    seeds = {frame_seed(s, i) for s in (1, 2, 3) for i in range(50)}
    assert len(seeds) == 150


def test_outlier_stamps_are_bright_finite_and_reproducible() -> None:
    """Outlier-exposure stamps are finite, centred on a source, and the same for the same seed."""
    a = outlier_stamps(20, np.random.default_rng(3))
    b = outlier_stamps(20, np.random.default_rng(3))
    assert a.shape == (20, 4, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    assert (a[:, 0, 14:18, 14:18].max(axis=(1, 2)) > np.arcsinh(5.0)).all()
    assert (a[:, 1] == 0).all() and (a[:, 3] == 0).all()   # the canvas holds the whole context view


def test_outliers_in_a_field_have_a_context_as_full_as_the_field_and_the_same_centres() -> None:
    """With ``field`` densities the outliers sit among field objects: the context view outside the
    centre holds bright pixels at the crowded density and few at the sparse one, the sharp view's
    centre is the same outlier as on empty sky, and a separate generator keeps the outliers' own
    draws unchanged."""
    def bright_outside(stamps: np.ndarray) -> float:
        ctx = stamps[:, 2].copy()
        ctx[:, 10:22, 10:22] = 0.0          # the outlier itself, binned
        return float((ctx > np.arcsinh(5.0)).mean())

    empty = outlier_stamps(40, np.random.default_rng(3))
    crowded = outlier_stamps(40, np.random.default_rng(3), field=(1.0,), field_rng=np.random.default_rng(9))
    sparse = outlier_stamps(40, np.random.default_rng(3), field=(0.05,), field_rng=np.random.default_rng(9))
    assert bright_outside(crowded) > 5 * bright_outside(sparse) and bright_outside(crowded) > 0.02
    assert bright_outside(sparse) < 3 * bright_outside(empty) + 0.002
    # same outlier blobs: the brightest centre pixel agrees within the field's contribution
    centre = (slice(None), 0, 15, 15)
    assert np.mean(np.abs(crowded[centre] - empty[centre]) < 0.5) > 0.8
    # a field needs the context view: the two-channel recipe ignores it
    from engines.stamps import NORMALISATION
    plain = outlier_stamps(5, np.random.default_rng(3), recipe=NORMALISATION, field=(1.0,))
    np.testing.assert_array_equal(plain, outlier_stamps(5, np.random.default_rng(3), recipe=NORMALISATION))


def test_unusual_objects_follow_the_field_density_when_asked() -> None:
    """A sparse training frame holds one object of each unusual family, not as many as a crowded
    one, when anomalies follow the density; without it the count is the crowded frame's."""
    from engines.training.train import training_twin_config

    crowded = training_twin_config(512, anomalies=("comet",), per_frame=6, density=1.0,
                                   anomalies_follow_density=True)
    sparse = training_twin_config(512, anomalies=("comet",), per_frame=6, density=0.05,
                                  anomalies_follow_density=True)
    fixed = training_twin_config(512, anomalies=("comet",), per_frame=6, density=0.05)
    assert (crowded.n_anomalies_per_family, sparse.n_anomalies_per_family, fixed.n_anomalies_per_family) == (6, 1, 6)
    assert sparse.n_stars == 19 and crowded.n_stars == 393
