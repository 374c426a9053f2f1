"""Labels not in doubt from the commissioning frames, injected unusual objects, and the refit
conformal set and triage thresholds, on the foreign twin camera."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.spatial import cKDTree

from edge import detect as detect_stage
from edge.commission.adapt import (
    CONFORMAL_TRIM,
    REASON_SHARE,
    UNION_SHARE,
    FrameDetections,
    RealLabels,
    label_real,
    operating_point,
    write_recalibrated,
)
from edge.commission.teach import MAX_GALAXY_COPIES, balance_galaxies, injected_examples
from engines.stamps import CONTEXT_NORMALISATION, cut_for
from twin import simulate_frame


@pytest.fixture(scope="module")
def field(foreign: Any) -> dict[str, Any]:
    """Four frames of one foreign-camera field (new noise and cosmic rays in each), their detections
    and stamps, and each frame's truth."""
    from engines.training.dataset import calibrate_twin_frame

    config = foreign.config.with_(cosmic_ray_rate_per_s=3.0)
    settings = detect_stage.DetectSettings()
    frames, truths, images = [], [], []
    for i in range(4):
        tf = simulate_frame(config, i, 31)
        image, var, mask = calibrate_twin_frame(tf, config)
        mask = mask.astype(np.uint8)
        bkg = detect_stage.subtract_background(image, mask, settings)
        cands = detect_stage.detect(bkg.sub_e, var, mask, settings)
        frames.append(FrameDetections(f"f{i}", cands, cut_for(CONTEXT_NORMALISATION, bkg.sub_e, var, mask, cands.x,
                                                               cands.y), (0.0, 0.0)))
        truths.append(tf.truth)
        images.append((image, var, mask))
    return {"frames": frames, "truths": truths, "images": images}


def _truth_label(frames: list[FrameDetections], truths: list[Any], k: int, index: int) -> str:
    t = truths[k]
    tree = cKDTree(np.c_[np.asarray(t["x"], float), np.asarray(t["y"], float)])
    c = frames[k].cands
    d, j = tree.query([c.x[index], c.y[index]])
    return str(t["label"][j]) if d < 2.0 else "none"


def test_labels_not_in_doubt_are_right(field: dict[str, Any]) -> None:
    """Persistent point sources labelled star are stars and single-frame sharp ones labelled
    cosmic_ray are cosmic rays, nearly always; most bright stars get a label."""
    frames, truths = field["frames"], field["truths"]
    labels = label_real(frames)
    counts = labels.counts()
    assert counts.get("star", 0) > 200 and counts.get("cosmic_ray", 0) > 20
    right = {"star": [], "cosmic_ray": []}
    for k, f in enumerate(frames):
        keep = labels.frame == k
        for stamp_name, stamp in zip(labels.names[keep], labels.stamps[keep], strict=True):
            i = int(np.flatnonzero(np.all(f.stamps == stamp, axis=(1, 2, 3)))[0])
            if stamp_name in right:
                right[stamp_name].append(_truth_label(frames, truths, k, i) == stamp_name)
    assert np.mean(right["star"]) >= 0.95
    assert np.mean(right["cosmic_ray"]) >= 0.9


def test_injected_unusual_objects_are_found_and_labelled_with_their_family(field: dict[str, Any]) -> None:
    """Every taught family is injected into the frames and most injections come back as stamps (some
    find no room clear of the field's sources, or are missed by the detector)."""
    examples = injected_examples(field["images"][:2], CONTEXT_NORMALISATION, detect_stage.DetectSettings(),
                                 rounds=2, per_frame=10, seed=4)
    counts = examples.counts()
    assert set(counts) <= {"lens_arc", "comet", "lobster_psf", "ghost", "streak"}
    assert len(counts) == 5 and sum(counts.values()) >= 0.5 * 2 * 2 * 10
    assert examples.stamps.shape[1:] == (4, 32, 32) and np.isfinite(examples.stamps).all()


def test_real_galaxies_are_repeated_to_weigh_as_much_as_one_taught_family(field: dict[str, Any]) -> None:
    """The field's galaxies, labelled from real frames, are repeated to about the count of one
    injected family (never more than MAX_GALAXY_COPIES times); stars and cosmic rays are left alone,
    and without galaxies or taught examples nothing changes."""
    real = label_real(field["frames"])
    n_galaxy = int((real.names == "galaxy").sum())
    assert n_galaxy > 0
    stamps = np.zeros((1, 4, 32, 32), np.float32)
    per_family = 3 * n_galaxy

    def taught(n: int) -> RealLabels:
        names = np.repeat(np.array(["comet", "ghost"]), n)
        return RealLabels(np.repeat(stamps, 2 * n, axis=0), names, np.zeros(2 * n, np.int64))

    balanced = balance_galaxies(real, taught(per_family))
    assert balanced.counts()["galaxy"] == 3 * n_galaxy
    assert {k: v for k, v in balanced.counts().items() if k != "galaxy"} == \
        {k: v for k, v in real.counts().items() if k != "galaxy"}
    galaxy_stamps = balanced.stamps[balanced.names == "galaxy"]
    assert {s.tobytes() for s in galaxy_stamps} == {s.tobytes() for s in real.stamps[real.names == "galaxy"]}
    assert balance_galaxies(real, taught(100 * n_galaxy)).counts()["galaxy"] == MAX_GALAXY_COPIES * n_galaxy
    empty = RealLabels(stamps[:0], np.zeros(0, str), np.zeros(0, np.int64))
    assert balance_galaxies(real, empty).counts() == real.counts()


def test_the_refit_conformal_set_and_thresholds_keep_each_reason_to_its_share(field: dict[str, Any],
                                                                              tmp_path: Any) -> None:
    """On the instrument's own detections, the refit set flags about alpha of them, low confidence and
    high epistemic uncertainty send at most their share, all the engine's reasons together at most
    theirs, and the engine folder written with it still verifies."""
    import shutil

    from edge.node.assemble import default_engine_dir, open_engine
    from edge.triage import TriagePolicy
    from engines.manifest import load_manifest

    stamps = np.concatenate([f.stamps for f in field["frames"]])
    engine = open_engine(default_engine_dir(), backend="onnxruntime", precision="fp32")
    logits, embedding = engine.infer(stamps)
    engine.deactivate()
    manifest = load_manifest(default_engine_dir())
    point = operating_point(logits, embedding, manifest.scoring, manifest.classes, TriagePolicy().classes_of_interest)
    assert point.trimmed == int(np.floor(CONFORMAL_TRIM * len(stamps)))
    assert point.conformal_scores.size == len(stamps) - point.trimmed
    assert 0.005 <= point.shares["unknown"] <= 0.015
    assert point.shares["any"] <= UNION_SHARE + 1 / len(stamps)
    # a quantile of n detections sends up to one more than its share
    assert point.shares["uncertain"] <= 2 * (REASON_SHARE + 1 / len(stamps))
    folder = tmp_path / "engine"
    shutil.copytree(default_engine_dir(), folder)
    write_recalibrated(manifest, point, folder)
    again = load_manifest(folder)
    np.testing.assert_array_equal(again.scoring.conformal_scores, point.conformal_scores)
    assert again.evaluation["commissioning"]["n_detections"] == len(stamps)
