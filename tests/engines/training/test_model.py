"""The stamp ensemble: output contract of both designs and its spec round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.training.model import ModelSpec, StampEnsemble, count_parameters


@pytest.mark.parametrize("design", ["shared", "independent"])
def test_forward_returns_member_logits_and_embedding(design: str, rng: np.random.Generator) -> None:
    """Both designs map (N, 2, 32, 32) stamps to (N, K, C) member logits and an (N, D) embedding."""
    spec = ModelSpec(n_members=4, design=design)
    model = StampEnsemble(spec).eval()
    stamps = torch.from_numpy(rng.normal(size=(5, 2, 32, 32)).astype(np.float32))
    logits, embedding = model(stamps)
    assert logits.shape == (5, 4, 6)
    assert embedding.shape == (5, spec.embedding_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(embedding).all()


def test_members_start_different(rng: np.random.Generator) -> None:
    """Ensemble members are initialised independently, so their logits disagree before training."""
    torch.manual_seed(0)
    model = StampEnsemble(ModelSpec(design="shared")).eval()
    logits, _ = model(torch.from_numpy(rng.normal(size=(8, 2, 32, 32)).astype(np.float32)))
    assert (logits[:, 0] - logits[:, 1]).abs().max() > 1e-3


def test_independent_members_cost_about_k_trunks() -> None:
    """Independent members carry K trunks, so they hold more than twice the shared design's parameters."""
    shared = count_parameters(StampEnsemble(ModelSpec(design="shared")))
    independent = count_parameters(StampEnsemble(ModelSpec(design="independent")))
    assert independent > 2 * shared


def test_spec_round_trips_through_a_dict() -> None:
    """The spec stored in a manifest rebuilds the same architecture."""
    spec = ModelSpec(n_members=5, design="independent", widths=(8, 16, 32), head_hidden=16)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_unknown_design_is_refused() -> None:
    """A design name outside the two measured ones is a clear error."""
    with pytest.raises(ValueError, match="design"):
        ModelSpec(design="mixture")


@pytest.mark.parametrize("design", ["shared", "independent"])
def test_two_views_read_the_stamp_and_its_context(design: str, rng: np.random.Generator) -> None:
    """With views = 2 the model reads four channels; changing only the context channels changes
    its outputs; a four-channel stamp is refused by a one-view model and vice versa."""
    torch.manual_seed(1)
    spec = ModelSpec(n_classes=10, n_members=3, design=design, widths=(4, 8, 8), head_hidden=8, views=2)
    model = StampEnsemble(spec).eval()
    stamps = torch.from_numpy(rng.normal(size=(5, 4, 32, 32)).astype(np.float32))
    logits, embedding = model(stamps)
    assert logits.shape == (5, 3, 10) and embedding.shape == (5, spec.embedding_dim) == (5, 2 * 20)
    other = stamps.clone()
    other[:, 2:] = 0.0
    assert (model(other)[0] - logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="2 view"):
        model(stamps[:, :2])
    with pytest.raises(ValueError, match="1 view"):
        StampEnsemble(ModelSpec(widths=(4, 8, 8), head_hidden=8)).eval()(stamps)
