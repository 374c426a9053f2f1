"""Training examples to show beside an explanation: an engine folder's ``exemplars.npz``.

:func:`write_exemplars` renders the engine's own training frames again (its training seed, its
twin configuration at each of its densities, the frames calibrated as training calibrated them)
and keeps ``per_class`` stamps of each class, cut by the engine's own recipe: candidates at
S/N >= 10 whose truth family is the class itself, spread over as many frames as there are.
:func:`engines.training.exemplar_set.exemplars_from_set` is what ``engines train`` writes from the
set it drew. :func:`extend_exemplars` is what fine-tuning writes: the base engine's examples and some labelled
stamps of each new class. The file holds ``stamps`` (n, C, 32, 32) float16 (to keep the
repository small), ``label`` (n class names) and ``source`` (where each came from); it is not
listed in the manifest, so writing it changes no engine id. ``engines.explain`` reads it.

    python -m engines.training.exemplars engines/models/stampnet-v1 engines/models/stampnet-v3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineIntegrityError
from edge.log import get_logger
from engines.explain import read_exemplars
from engines.training.exemplar_set import (
    EXEMPLAR_SNR_MIN,
    PER_CLASS,
    PER_FRAME,
    save_exemplars,
    spread,
)

__all__ = ["extend_exemplars", "write_exemplars"]

log = get_logger(__name__)

#: frames rendered at most (all densities together) while looking for examples
MAX_FRAMES = 240


def write_exemplars(folder: Path, per_class: int = PER_CLASS, seed: int | None = None,
                    max_frames: int = MAX_FRAMES) -> Path:
    """Render the engine's training frames (``seed``: its training seed) and write ``per_class``
    examples of each class the twin renders into ``folder/exemplars.npz``; returns the path."""
    from engines.manifest import load_manifest
    from engines.training.dataset import candidates_from_frame, class_labels, frame_seed
    from engines.training.train import TrainSettings, training_twin_config
    from twin import simulate_frame

    folder = Path(folder)
    manifest = load_manifest(folder)
    if "settings" not in manifest.training:
        raise EngineIntegrityError("the manifest has no training settings to render its frames from; only "
                                   "engines made by `engines train` have them", where=str(folder))
    settings = TrainSettings.from_dict(manifest.training["settings"])
    recipe = manifest.normalisation
    if recipe != settings.recipe:
        raise EngineIntegrityError(f"the manifest's stamp recipe {recipe!r} differs from its training settings' "
                                   f"{settings.recipe!r}", where=str(folder))
    seed = int(manifest.training.get("seed", settings.seed)) if seed is None else int(seed)
    classes = tuple(manifest.classes)
    rendered = [c for c in classes if c not in settings.labelled]
    shares = list(enumerate(settings.densities))
    configs = [training_twin_config(settings.frame_size_px, anomalies=settings.unusual,
                                    per_frame=settings.anomalies_per_frame, density=density,
                                    anomalies_follow_density=settings.anomalies_follow_density,
                                    instrument=settings.instrument) for _, density in shares]
    # the j-th density share of a training set is drawn from its own seed (train.density_mix)
    seeds = [seed if len(shares) == 1 else int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
             for j, _ in shares]
    pool: dict[str, list[tuple[NDArray[np.float32], str, int]]] = {c: [] for c in rendered}
    frames = 0
    rng = np.random.default_rng(seed)
    for i in range(max_frames):
        j = i % len(shares)
        index = i // len(shares)
        config = configs[j]
        light = bool(config.anomalies) or config.n_transients > 0
        frame = simulate_frame(config, index, frame_seed(seeds[j], index), light_by_family=light)
        unmasked = bool(settings.unmasked_every) and index % settings.unmasked_every == 0
        data, cands = candidates_from_frame(frame, config, bundle=not unmasked, recipe=recipe)
        frames += 1
        labels = class_labels(data, classes)
        good = (labels >= 0) & (data.snr >= EXEMPLAR_SNR_MIN)
        for name in rendered:
            mine = np.flatnonzero(good & (labels == classes.index(name)) & (data.family == name))
            # at most two a frame: a dense frame's hundreds of stars would crowd out every other frame's
            for k in rng.permutation(mine)[:PER_FRAME]:
                source = (f"twin seed {seed}, density {shares[j][1]:g}, frame {index}, "
                          f"x {float(cands.x[k]):.1f}, y {float(cands.y[k]):.1f}")
                pool[name].append((data.stamps[k], source, i))
        if all(len(v) >= per_class for v in pool.values()):
            break
    stamps, names, sources = [], [], []
    for name in rendered:
        chosen = spread([f for _, _, f in pool[name]], per_class, rng)
        stamps += [pool[name][i][0] for i in chosen]
        sources += [pool[name][i][1] for i in chosen]
        names += [name] * len(chosen)
        if len(chosen) < per_class:
            log.warning("engines.exemplars.few", folder=str(folder), label=name, found=len(chosen),
                        wanted=per_class, frames=frames)
    channels = int(manifest.input.shape[1])
    path = save_exemplars(folder, np.stack(stamps) if stamps else np.zeros((0, channels, 32, 32)),
                          np.array(names), np.array(sources))
    log.info("engines.exemplars.written", folder=str(folder), frames=frames, stamps=len(names),
             size_bytes=path.stat().st_size)
    return path


def extend_exemplars(out_dir: Path, base_dir: Path, stamps: NDArray[Any], names: NDArray[Any],
                     sources: NDArray[Any], new_classes: list[str], *, per_class: int = PER_CLASS,
                     seed: int = 0) -> Path | None:
    """Write ``out_dir``'s exemplars: ``base_dir``'s (if any) and up to ``per_class`` of the
    labelled ``stamps`` (class ``names``, each from ``sources``) of each of ``new_classes``; the
    path, or None when there is nothing to write."""
    from engines.manifest import read_manifest

    out = read_manifest(out_dir)
    channels = int(out.input.shape[1])
    base_stamps, base_names, base_sources = read_exemplars(base_dir, out.classes, channels)
    rng = np.random.default_rng(seed)
    names = np.asarray(names).astype(str)
    picked = [int(i) for c in new_classes for i in sorted(rng.permutation(np.flatnonzero(names == c))[:per_class])]
    if not picked and not len(base_names):
        return None
    return save_exemplars(out_dir, np.concatenate([base_stamps, np.asarray(stamps, np.float32)[picked]]),
                          np.concatenate([base_names, names[picked]]).astype(str),
                          np.concatenate([base_sources, np.asarray(sources).astype(str)[picked]]).astype(str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.training.exemplars",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="engine folders to write exemplars.npz into")
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    parser.add_argument("--seed", type=int, default=None, help="twin seed (default: the engine's training seed)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        path = write_exemplars(folder, args.per_class, args.seed)
        with np.load(path) as data:
            labels, counts = np.unique(data["label"], return_counts=True)
        print(f"{path}: {path.stat().st_size} bytes, " + ", ".join(f"{c} {n}" for c, n in zip(labels, counts, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
