"""Training loop, scoring fit and evaluation figures, and the whole engine made small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.manifest import load_manifest
from engines.training.dataset import CLASSES, UNKNOWN, StampSet, outlier_stamps
from engines.training.export import run_onnx
from engines.training.model import ModelSpec
from engines.training.train import (
    ENTROPY_WEIGHTS,
    TrainSettings,
    evaluate,
    fit_model,
    fit_scoring,
    train_engine,
)

C = len(CLASSES)


def _outputs(rng: np.random.Generator, labels: np.ndarray, spread: float = 0.3,
             centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic engine outputs: confident member logits for ``labels`` and clustered embeddings."""
    n = labels.size
    centres = np.eye(C, 8) * 5.0 if centres is None else centres
    embedding = centres[labels] + rng.normal(0, spread, (n, 8))
    logits = rng.normal(0, 0.3, (n, 4, C))
    logits[np.arange(n), :, labels] += 6.0
    return logits.astype(np.float32), embedding.astype(np.float32)


def test_fit_scoring_gives_honest_conformal_pvalues(rng: np.random.Generator) -> None:
    """On fresh ordinary detections about alpha of them get p <= alpha, and the weight is one of the measured ones."""
    y_train, y_cal, y_new = (rng.integers(0, C, n) for n in (3000, 4000, 4000))
    oe_logits = rng.normal(0, 0.3, (500, 4, C)).astype(np.float32)
    oe_embedding = rng.normal(0, 3.0, (500, 8)).astype(np.float32)
    constants, choice = fit_scoring(_outputs(rng, y_train), y_train, _outputs(rng, y_cal), y_cal,
                                    (oe_logits, oe_embedding), seed=1)
    assert constants.entropy_weight in ENTROPY_WEIGHTS
    assert np.all(np.diff(constants.conformal_scores) >= 0)
    assert choice["n_conformal"] == constants.conformal_scores.size == 2000
    figures = evaluate(_outputs(rng, y_new), StampSet(np.zeros((4000, 2, 32, 32), np.float32), y_new,
                                                       np.array([CLASSES[i] for i in y_new]),
                                                       np.full(4000, 50.0), np.zeros(4000, np.int64)),
                       constants, alpha=0.05)
    assert 0.03 <= figures["flagged_ordinary_at_alpha"] <= 0.07


def test_the_budget_point_sends_only_confident_unusual_calls_when_every_call_would_break_it(
        rng: np.random.Generator) -> None:
    """When 3 % of ordinary candidates are called an unusual class with middling probability, no
    alpha keeps the joint budget; the fit then picks the least call probability that does, the
    confident calls of the taught unusual class are still sent, and the evaluation's budget block
    uses that point."""
    from engines.training.train import BUDGET, BUDGET_UNUSUAL_MIN

    n_classes = C + 1
    centres = np.eye(n_classes, 8) * 5.0

    def outputs(labels: np.ndarray, muddled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = labels.size
        embedding = (centres[labels] + rng.normal(0, 0.3, (n, 8))).astype(np.float32)
        logits = rng.normal(0, 0.3, (n, 4, n_classes))
        logits[np.arange(n), :, labels] += 6.0
        # muddled ordinary candidates: the unusual class just ahead of their own (p about 0.55)
        rows = np.flatnonzero(muddled)
        logits[rows, :, C] = logits[rows, :, labels[rows]] + 0.3
        return logits.astype(np.float32), embedding

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.where(rng.random(n) < 0.1, C, rng.integers(0, C, n))
        return labels, (labels < C) & (rng.random(n) < 0.03)

    y_train, m_train = draw(3000)
    y_cal, m_cal = draw(6000)
    oe = (rng.normal(0, 0.3, (300, 4, n_classes)).astype(np.float32), rng.normal(0, 3.0, (300, 8)).astype(np.float32))
    constants, choice = fit_scoring(outputs(y_train, m_train), y_train, outputs(y_cal, m_cal), y_cal, oe, seed=3,
                                    n_classes=n_classes, unknown_distance="ordinary")
    assert choice["budget_unusual_min"] in BUDGET_UNUSUAL_MIN and choice["budget_unusual_min"] > 0.5
    assert choice["budget_joint_heldout"][f"{choice['budget_alpha']} 0.0"] > BUDGET
    y_new, m_new = draw(6000)
    data = StampSet(np.zeros((6000, 2, 32, 32), np.float32), np.where(y_new < C, y_new, UNKNOWN),
                    np.array([CLASSES[i] if i < C else "lens_arc" for i in y_new]), np.full(6000, 50.0),
                    np.zeros(6000, np.int64))
    figures = evaluate(outputs(y_new, m_new), data, constants, classes=CLASSES + ("lens_arc",),
                       budget_alpha=choice["budget_alpha"], budget_unusual_min=choice["budget_unusual_min"])
    assert figures["ordinary_as_unusual"] > 0.02
    assert figures["budget"]["ordinary_flagged"] <= BUDGET
    assert figures["budget"]["families"]["lens_arc"]["recall"] >= 0.95

def test_evaluate_separates_a_far_anomaly_family(rng: np.random.Generator) -> None:
    """A family whose embeddings lie far from every class scores AUROC near 1 and is recalled at S/N >= 20."""
    y = rng.integers(0, C, 3000)
    constants, _ = fit_scoring(_outputs(rng, y), y, _outputs(rng, y), y,
                               (rng.normal(0, 0.3, (200, 4, C)).astype(np.float32),
                                rng.normal(0, 3.0, (200, 8)).astype(np.float32)), seed=2)
    y_test = np.concatenate([rng.integers(0, C, 1000), np.full(150, UNKNOWN)])
    logits, embedding = _outputs(rng, np.where(y_test < 0, 0, y_test))
    embedding[y_test < 0] += 20.0
    family = np.array([CLASSES[i] if i >= 0 else "ghost" for i in y_test], dtype="<U24")
    family[1100:] = "near_ghost"   # near the ghost, not made of its light: on neither side
    embedding[1100:] -= 40.0
    data = StampSet(np.zeros((1150, 2, 32, 32), np.float32), y_test, family, np.full(1150, 30.0),
                    np.zeros(1150, np.int64))
    figures = evaluate((logits, embedding), data, constants)
    assert figures["accuracy_snr10"] == 1.0
    assert set(figures["families"]) == {"ghost"}
    assert figures["families"]["ghost"]["n"] == 100
    assert figures["families"]["ghost"]["auroc"] > 0.99
    assert figures["families"]["ghost"]["recall_snr20_at_alpha"] > 0.95
    assert figures["near_anomaly"]["n"] == 50 and figures["near_anomaly"]["flagged_at_alpha"] == 1.0
    assert figures["flagged_ordinary_at_alpha"] < 0.05


def test_training_is_reproducible_with_a_fixed_seed() -> None:
    """Two runs with the same seed and data give the same weights."""
    rng = np.random.default_rng(8)
    stamps = outlier_stamps(200, rng)
    labels = rng.integers(0, C, 200)
    settings = TrainSettings(epochs=1, batch_size=50, threads=1,
                             spec=ModelSpec(widths=(4, 8, 8), head_hidden=8, views=2))
    a = fit_model(stamps, labels, stamps[:40], settings).state_dict()
    b = fit_model(stamps, labels, stamps[:40], settings).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


TINY = TrainSettings(frame_size_px=512, n_train_frames=12, n_calib_frames=6, n_eval_frames=4,
                     epochs=1, threads=1, unmasked_every=3,
                     spec=ModelSpec(n_classes=10, widths=(8, 16, 32), head_hidden=16, views=2))


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small engine trained end to end once for this module (tests that change it copy it)."""
    out = tmp_path_factory.mktemp("tiny") / "engine"
    train_engine(out, TINY, name="tiny", version="0", command="test")
    return out


@pytest.mark.slow
def test_train_engine_writes_a_verified_engine_folder(tiny_engine: Path) -> None:
    """A small end-to-end run writes every file, a manifest that verifies, golden outputs and a model card."""
    settings = TINY
    m = load_manifest(tiny_engine)
    assert m.name == "tiny"
    assert {"model_fp32.onnx", "model_fp16.onnx", "model_int8.onnx", "golden.npz", "MODEL_CARD.md"} <= set(m.files)
    golden = np.load(m.path("golden.npz"))
    logits, embedding = run_onnx(m.path("model_fp32.onnx"), golden["stamps"])
    np.testing.assert_allclose(logits, golden["logits"], atol=1e-4)
    assert m.training["settings"]["seed"] == settings.seed
    assert tuple(m.classes[6:]) == settings.unusual and tuple(m.input.shape) == (-1, 4, 32, 32)
    for precision in ("fp32", "fp16", "int8"):
        assert 0.0 <= m.evaluation[precision]["accuracy_snr10"] <= 1.0
    card = m.path("MODEL_CARD.md").read_text()
    assert f"{m.evaluation['fp32']['accuracy_snr10']:.4f}" in card
    with np.load(tiny_engine / "exemplars.npz") as ex:   # training examples for explanations
        assert "star" in set(ex["label"]) and set(ex["label"]) <= set(m.classes)
        assert ex["stamps"].shape[1:] == (4, 32, 32) and ex["stamps"].dtype == np.float16


def test_train_command_refuses_bad_sizes_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astro-edge engines train` with a frame too small for stamps stops with exit code 2 and says why."""
    from edge.cli import main

    assert main(["engines", "train", "--out", str(tmp_path / "e"), "--frame-size", "64"]) == 2
    assert "--frame-size" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_fitted_instrument_replaces_the_training_mixs_optics_and_noise_but_not_its_counts() -> None:
    """TrainSettings.instrument (what commissioning fits) sets the twin's PSF, sky, exposure and
    detector noise in every training frame; the mix keeps its densities and rare-class rates."""
    from engines.training.train import TrainSettings, training_twin_config

    fitted = {"pixel_scale_arcsec": 0.98, "psf_fwhm_arcsec": 1.47, "psf_beta": 3.5, "exposure_s": 300.0,
              "sky_e_per_s": 21.0, "n_stars": 3, "cosmic_ray_rate_per_s": 0.01,
              "detector": {"gain_e_per_adu": 3.9, "read_noise_e": 4.6, "full_well_e": 200000.0, "bias_adu": 1600.0}}
    plain, cfg = training_twin_config(512), training_twin_config(512, instrument=fitted)
    assert cfg.fwhm_px == pytest.approx(1.5) and cfg.exposure_s == 300.0 and cfg.sky_e_per_s == 21.0
    assert cfg.detector.gain_e_per_adu == 3.9 and cfg.detector.shape_px == (512, 512)
    assert (cfg.n_stars, cfg.cosmic_ray_rate_per_s) == (plain.n_stars, plain.cosmic_ray_rate_per_s)
    settings = TrainSettings(instrument=fitted)
    assert TrainSettings.from_dict(settings.to_dict()).instrument == fitted


@pytest.mark.slow
def test_requantize_writes_an_int8_file_every_cpu_computes_alike(tiny_engine: Path, tmp_path: Path) -> None:
    """Quantized again, the INT8 file holds 7-bit weights, its integer kernels give what a float
    emulation of its graph gives (x86 CPUs without VNNI overflowed full-range weights), the manifest
    verifies and records the run, and the FP32 file is untouched."""
    import shutil

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from engines.training.requantize import requantize

    folder = tmp_path / "engine"
    shutil.copytree(tiny_engine, folder)
    before = load_manifest(folder)
    m = requantize(folder, command="test")
    assert m.files["model_fp32.onnx"].sha256 == before.files["model_fp32.onnx"].sha256
    assert [r["weights"] for r in m.training["requantized"]] == [7]
    graph = onnx.load(str(m.path("model_int8.onnx"))).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    stamps = np.load(m.path("golden.npz"))["stamps"]
    outputs = []
    for emulate in (False, True):
        options = ort.SessionOptions()
        if emulate:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        session = ort.InferenceSession(str(m.path("model_int8.onnx")), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(["logits"], {"stamps": stamps})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=0.05)
    assert 0.0 <= m.evaluation["int8"]["top1_agreement_vs_fp32"] <= 1.0
