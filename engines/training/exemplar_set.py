"""An engine folder's ``exemplars.npz`` written from stamps in memory, and the choice of them.

The file holds ``stamps`` (n, C, 32, 32) float16, ``label`` (n class names) and ``source`` (where
each came from); :mod:`engines.explain` reads it. :func:`exemplars_from_set` is what ``engines
train`` writes from the training set it drew; :mod:`engines.training.exemplars` renders an
engine's training frames again for engines made before, and extends a base engine's file for a
fine-tune. This module imports nothing of training, so training can call it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.explain import EXEMPLARS_FILE

__all__ = ["EXEMPLAR_SNR_MIN", "PER_CLASS", "PER_FRAME", "exemplars_from_set", "save_exemplars", "spread"]

#: examples of each class an engine folder keeps
PER_CLASS = 20
#: candidates fainter than this are not shown as examples
EXEMPLAR_SNR_MIN = 10.0
#: examples of one class taken from one frame at most
PER_FRAME = 2


def save_exemplars(folder: Path, stamps: NDArray[Any], labels: NDArray[Any], sources: NDArray[Any]) -> Path:
    """Write ``folder/exemplars.npz`` atomically (stamps stored as float16)."""
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".exemplars-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, stamps=np.asarray(stamps, np.float16), label=np.asarray(labels).astype(str),
                                source=np.asarray(sources).astype(str))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the folder's other files are world-readable
        os.replace(tmp, folder / EXEMPLARS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / EXEMPLARS_FILE


def spread(frames: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``n`` of the items, in random order, taking one of each frame before a second."""
    order = rng.permutation(len(frames))
    seen: dict[int, int] = {}
    rank = np.empty(len(frames), np.int64)
    for i in order:
        rank[i] = seen.get(frames[i], 0)
        seen[frames[i]] = rank[i] + 1
    position = np.empty(len(frames), np.int64)
    position[order] = np.arange(len(frames))
    return sorted(range(len(frames)), key=lambda i: (rank[i], position[i]))[:n]


def exemplars_from_set(folder: Path, data: Any, classes: tuple[str, ...], per_class: int = PER_CLASS,
                       seed: int = 0) -> Path:
    """Write ``folder/exemplars.npz`` from a training set in memory (what ``engines train`` drew):
    ``per_class`` stamps of each class at S/N >= EXEMPLAR_SNR_MIN, spread over the frames."""
    from engines.training.dataset import class_labels

    rng = np.random.default_rng(seed)
    labels = class_labels(data, classes)
    stamps, names, sources = [], [], []
    for c, name in enumerate(classes):
        mine = np.flatnonzero((labels == c) & (data.family == name) & (data.snr >= EXEMPLAR_SNR_MIN))
        chosen = mine[spread([int(f) for f in data.frame[mine]], per_class, rng)] if mine.size else mine
        stamps += [data.stamps[k] for k in chosen]
        names += [name] * len(chosen)
        sources += [f"training set, frame {int(data.frame[k])}" for k in chosen]
    channels = int(data.stamps.shape[1])
    return save_exemplars(folder, np.stack(stamps) if stamps else np.zeros((0, channels, 32, 32)),
                          np.array(names), np.array(sources))
