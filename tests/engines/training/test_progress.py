"""Training reports its progress to a callback that only observes: same weights, same stamps."""

from __future__ import annotations

import numpy as np
import torch

from engines.training.dataset import CLASSES, outlier_stamps, twin_stamp_set
from engines.training.model import ModelSpec
from engines.training.train import TrainSettings, fit_model, training_twin_config


class Recorder:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, advance: int, total: int) -> None:
        self.calls.append((stage, advance, total))


def test_fit_model_reports_every_step_and_trains_the_same_weights() -> None:
    """With a callback the loop reports epochs x steps per epoch optimiser steps, and the weights
    are bit for bit those of a run without one: the callback only observes."""
    rng = np.random.default_rng(8)
    stamps = outlier_stamps(200, rng)
    labels = rng.integers(0, len(CLASSES), 200)
    settings = TrainSettings(epochs=2, batch_size=50, threads=1, unusual=(),
                             spec=ModelSpec(widths=(4, 8, 8), head_hidden=8, views=2))
    progress, epochs = Recorder(), []
    watched = fit_model(stamps, labels, stamps[:40], settings, progress=progress,
                        on_epoch=lambda **kw: epochs.append(kw)).state_dict()
    plain = fit_model(stamps, labels, stamps[:40], settings).state_dict()
    assert all(torch.equal(watched[k], plain[k]) for k in plain)
    steps = 2 * (200 // 50)
    assert progress.calls[0] == ("training", 0, steps)
    assert sum(advance for _, advance, _ in progress.calls) == steps
    assert [e["epoch"] for e in epochs] == [1, 2]


def test_twin_stamp_set_reports_each_frame_under_the_stage_it_is_given() -> None:
    """Each simulated frame is one unit of the named stage, and the stamps are those of a silent run."""
    config = training_twin_config(256)
    progress = Recorder()
    watched = twin_stamp_set(config, 2, seed=11, progress=progress, stage="simulating evaluation frames")
    assert progress.calls == [("simulating evaluation frames", 0, 2)] + [("simulating evaluation frames", 1, 2)] * 2
    assert np.array_equal(watched.stamps, twin_stamp_set(config, 2, seed=11).stamps)
