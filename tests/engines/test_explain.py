"""Explanations of an engine's decision: member votes, prototypes, exemplars, occlusion saliency,
and finding an engine folder by a record's engine id."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from edge.errors import EngineCompatibilityError, EngineError
from edge.node.assemble import MODELS_DIR
from engines.explain import EXEMPLARS_FILE, Explainer, find_engine, occlusion_saliency
from engines.manifest import load_manifest
from engines.scoring import member_probabilities

CONTEXT_MODEL_DIR = MODELS_DIR / "stampnet-v3"


@pytest.fixture(scope="module")
def explainer() -> Iterator[Explainer]:
    with Explainer(CONTEXT_MODEL_DIR, threads=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def golden() -> dict[str, NDArray[np.generic]]:
    with np.load(CONTEXT_MODEL_DIR / "golden.npz") as data:
        return {k: data[k] for k in data.files}


def _entropy(p: NDArray[np.float64]) -> NDArray[np.float64]:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def test_explanation_of_golden_stamps_agrees_with_their_golden_logits(
        explainer: Explainer, golden: dict[str, NDArray[np.generic]]) -> None:
    """Member probabilities are the softmax of the golden logits over the temperature, and the
    prediction, votes, agreement, disagreement and prototypes follow from them."""
    m = explainer.manifest
    t = m.scoring.temperature
    n_near = m.scoring.distance_classes or len(m.classes)
    confident = 0
    for i in range(0, len(golden["stamps"]), 6):
        e = explainer.explain(golden["stamps"][i])
        expected = member_probabilities(golden["logits"][i:i + 1], t)[0]
        np.testing.assert_allclose(e.member_probs, expected, atol=1e-4)
        mean = expected.mean(axis=0)
        assert e.predicted == m.classes[int(mean.argmax())]
        assert e.member_votes == tuple(m.classes[int(c)] for c in expected.argmax(axis=1))
        assert e.agreement == pytest.approx(np.mean([v == e.predicted for v in e.member_votes]))
        assert e.disagreement_nats == pytest.approx(max(_entropy(mean) - _entropy(expected).mean(), 0.0), abs=1e-4)
        assert e.disagreement_nats >= 0.0
        distances = [d for _, d in e.prototypes]
        assert len(e.prototypes) == n_near and distances == sorted(distances)
        assert {c for c, _ in e.prototypes} == set(m.classes[:n_near])
        if mean.max() > 0.9 and m.classes.index(e.predicted) < n_near:
            confident += 1
            assert e.predicted in [c for c, _ in e.prototypes[:2]]
    assert confident >= 5


def test_exemplars_come_from_the_shipped_file_nearest_first(
        explainer: Explainer, golden: dict[str, NDArray[np.generic]]) -> None:
    """The k nearest exemplars are stamps of the folder's exemplars.npz, with its labels, sorted by
    embedding distance; the explanation serialises to JSON with the stamps rounded."""
    with np.load(CONTEXT_MODEL_DIR / EXEMPLARS_FILE) as data:
        stamps = data["stamps"].astype(np.float32)
        labels = data["label"].astype(str)
    e = explainer.explain(golden["stamps"][0])
    assert len(e.exemplars) == 6
    distances = [x.distance for x in e.exemplars]
    assert distances == sorted(distances) and distances[0] >= 0.0
    for x in e.exemplars:
        match = np.flatnonzero((stamps == x.stamp[None]).all(axis=(1, 2, 3)))
        assert match.size and x.label in labels[match]
        assert x.stamp.dtype == np.float32 and x.stamp.shape == (4, 32, 32)
    data = json.loads(json.dumps(e.to_dict()))
    assert data["engine_id"] == explainer.engine_id and data["predicted"] == e.predicted
    assert len(data["exemplars"]) == 6 and np.shape(data["exemplars"][0]["stamp"]) == (4, 32, 32)
    assert np.shape(data["saliency"]) == (32, 32)
    flat = np.asarray(data["exemplars"][0]["stamp"]).ravel()
    assert np.allclose(flat, np.round(flat, 3))


def test_occlusion_saliency_points_at_the_only_region_the_class_depends_on() -> None:
    """With a class whose probability depends on one 4 x 4 region of the image alone, the saliency's
    top pixels are in that region and pixels no window over the region covers get none."""
    stamp = np.zeros((2, 32, 32), np.float32)
    stamp[0, 10:14, 20:24] = 3.0

    def run(batch: NDArray[np.float32]) -> NDArray[np.float64]:
        p = 1.0 / (1.0 + np.exp(-(batch[:, 0, 10:14, 20:24].sum(axis=(1, 2)) / 8.0 - 3.0)))
        return np.stack([1.0 - p, p], axis=1)

    sal = occlusion_saliency(run, stamp, 1, window_px=6, stride_px=1)
    assert sal.shape == (32, 32) and sal.dtype == np.float32
    region = np.zeros((32, 32), bool)
    region[10:14, 20:24] = True
    top = np.argsort(-sal.ravel())[:16]
    assert region.ravel()[top].all()
    far = np.ones((32, 32), bool)
    far[10 - 5:14 + 5, 20 - 5:24 + 5] = False
    assert np.all(sal[far] == 0.0) and sal.max() > 0.0


def test_context_occlusion_covers_the_context_bins_of_the_same_frame_pixels() -> None:
    """A class read from one context bin alone gets saliency only when the context is occluded,
    and then on the stamp pixels whose frame pixels that bin holds."""
    stamp = np.zeros((4, 32, 32), np.float32)
    # context bin 16 holds the stamp's centre rows/columns 15-17
    stamp[2, 16, 16] = 5.0

    def run(batch: NDArray[np.float32]) -> NDArray[np.float64]:
        p = np.clip(batch[:, 2, 16, 16] / 5.0, 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)

    assert not occlusion_saliency(run, stamp, 1, window_px=1, stride_px=1, context=False).any()
    sal = occlusion_saliency(run, stamp, 1, window_px=1, stride_px=1, context=True)
    rows, cols = np.nonzero(sal > 0)
    assert set(rows) == set(cols) == {15, 16, 17}


def test_saliency_of_golden_streaks_and_cosmic_rays_peaks_on_their_bright_pixels(
        explainer: Explainer, golden: dict[str, NDArray[np.generic]]) -> None:
    """On the golden streak and cosmic-ray stamps the engine gets right, the saliency maximum lies
    within 2 px of the stamp's bright pixels (its 3 x 3-smoothed image at >= 70 % of the maximum;
    the golden streaks are faint, S/N 4-5 a pixel)."""
    checked = 0
    for i in np.flatnonzero(np.isin(golden["family"], ["streak", "cosmic_ray"])):
        e = explainer.explain(golden["stamps"][i])
        if e.predicted != golden["family"][i]:
            continue
        checked += 1
        image = np.pad(golden["stamps"][i][0].astype(np.float64), 1)
        smooth = sum(image[dy:dy + 32, dx:dx + 32] for dy in range(3) for dx in range(3)) / 9.0
        bright = np.argwhere(smooth >= 0.7 * smooth.max())
        peak = np.unravel_index(int(np.argmax(e.saliency)), e.saliency.shape)
        assert np.hypot(*(bright - np.array(peak)).T).min() <= 2.0, (golden["family"][i], i)
    assert checked >= 8


def test_find_engine_finds_the_shipped_engine_by_its_model_files_ids() -> None:
    """The ids of the shipped engine's fp32 and int8 files lead to its folder and file, searching the
    models folder or the engine folder itself; an unknown id is a typed error naming it."""
    m = load_manifest(CONTEXT_MODEL_DIR)
    for rel in ("model_fp32.onnx", "model_int8.onnx"):
        assert find_engine(m.engine_id(rel), [MODELS_DIR]) == (CONTEXT_MODEL_DIR, rel)
        assert find_engine(m.engine_id(rel), [CONTEXT_MODEL_DIR]) == (CONTEXT_MODEL_DIR, rel)
    with pytest.raises(EngineError, match="stampnet:99:0123456789ab") as info:
        find_engine("stampnet:99:0123456789ab", [MODELS_DIR, Path("/nonexistent")])
    assert str(MODELS_DIR) in str(info.value) and "/nonexistent" in str(info.value)


def test_explainer_without_exemplars_explains_with_none(tmp_path: Path,
                                                         golden: dict[str, NDArray[np.generic]]) -> None:
    """An engine folder without exemplars.npz explains as well, with no exemplars; an int8 file runs
    too, and a file that is no ONNX model or a stamp of the wrong shape is a typed error."""
    folder = tmp_path / "engine"
    shutil.copytree(CONTEXT_MODEL_DIR, folder, ignore=shutil.ignore_patterns(EXEMPLARS_FILE))
    with Explainer(folder, "model_int8.onnx") as ex:
        e = ex.explain(golden["stamps"][0])
        assert e.exemplars == () and e.engine_id == ex.manifest.engine_id("model_int8.onnx")
        assert e.saliency.shape == (32, 32)
        with pytest.raises(EngineError, match="shape"):
            ex.explain(golden["stamps"][0][:2])
    with pytest.raises(EngineCompatibilityError, match="ONNX"):
        Explainer(folder, "weights_fp32.npz")


def test_a_record_from_a_tensorrt_plan_is_explained_with_the_same_engines_onnx_file(tmp_path: Path) -> None:
    """A plan's engine id leads to its folder, and the explanation runs that engine's fp32 ONNX file
    (a plan runs only on the GPU it was built for); an ONNX file's id runs that very file."""
    from engines.explain import explainer_for
    from engines.testing import write_tiny_engine

    folder = write_tiny_engine(tmp_path / "tiny", plans={"model_fp16.plan": {
        "precision": "fp16", "tensorrt_version": "10.3.0", "compute_capability": "8.7", "batch_profile": (1, 64, 256),
        "cpu_arch": "aarch64", "os": "Linux", "gpu_name": "Orin", "integrated": True, "cuda_version": "12.6"}})
    m = load_manifest(folder)
    with explainer_for(m.engine_id("model_fp16.plan"), [tmp_path]) as ex:
        assert ex.file == "model_fp32.onnx"
        stamp = np.zeros(tuple(m.input.shape[1:]), np.float32)
        assert ex.explain(stamp).saliency.shape == (32, 32)
    shipped = load_manifest(CONTEXT_MODEL_DIR)
    with explainer_for(shipped.engine_id("model_int8.onnx"), [MODELS_DIR]) as ex:
        assert ex.file == "model_int8.onnx"
