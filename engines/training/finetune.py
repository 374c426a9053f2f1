"""Continue training an engine on labelled stamps and emit a new engine (``astro-edge engines finetune``).

The labels file is an ``.npz`` with ``stamps`` (n, channels, 32, 32) float32, cut by the engine's own
stamp recipe (:func:`engines.stamps.cut_for`, or the ``stamp`` of downlinked records), and
``label`` (n class names). New class names are lowercase words (letters, digits, underscores).

A name the engine does not have is a **new class**: every member's classifier layer grows one
output per new class, imprinted (the mean hidden activation of the class's labelled stamps,
scaled to the trained rows, with their mean bias), and then only the new outputs are fitted, on
the hidden activations of the frozen network for the labelled stamps (in all eight flips and
rotations) against a replay set of twin frames (:func:`fit_new_outputs`). The trunks and every
trained output stay as they were, so an ordinary class can lose only what a new class takes
from it, and each new class's bias is then lowered until it claims at most
``NEW_CLASS_CLAIM_MAX`` of held-out replay candidates (:func:`settle_new_classes`). Labels of
classes the engine already has instead continue training the whole network for ``epochs`` on
the labelled stamps mixed with the replay set and outlier-exposure stamps.

The engine's own weights (``weights_fp32.npz`` in its folder) are the starting point. A fixed-seed
fifth of the labelled stamps (at least two) is held out for evaluation. The new engine gets fresh
scoring constants (the new class's Gaussian from its labelled stamps), the full twin evaluation,
the held-out figures and its own manifest (training provenance names the engine it came from).
:func:`finetune_model` is the core that the command and bench/leave_one_out.py share. Needs the
``train`` extra.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import ConfigError, EngineIntegrityError
from edge.log import get_logger

if TYPE_CHECKING:
    from engines.training.train import TrainSettings, TwinSets
    from twin.instrument import Progress

__all__ = ["NEW_CLASS_CLAIM_MAX", "finetune_engine", "finetune_model", "fit_new_outputs", "grow_heads",
           "head_imprints", "member_hidden", "read_labels", "settle_new_classes"]

log = get_logger(__name__)

HELDOUT_FRACTION = 0.2
#: optimiser steps that fit a new class's outputs on the frozen network (fit_new_outputs)
NEW_CLASS_STEPS = 300
#: the share of that fit's loss the new classes' labelled stamps carry between them
NEW_CLASS_SHARE = 0.2
#: the bias a new class's outputs start with, below every trained class
_NEW_BIAS_MARGIN = 2.0
#: the largest share of held-out replay candidates (none of them of a new class) that a new class
#: may be the top class of (settle_new_classes)
NEW_CLASS_CLAIM_MAX = 0.002
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def read_labels(path: Path, classes: tuple[str, ...], channels: int = 2, *,
                allow_new: bool = False) -> tuple[NDArray[np.float32], NDArray[np.str_]]:
    """Stamps and class names from a labels file; every problem is a ConfigError naming the file.

    With ``allow_new`` a name that is not one of ``classes`` is a new class (it must be a lowercase
    word); without it, such a name is refused.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if "stamps" not in data.files or "label" not in data.files:
                raise ConfigError(f"needs arrays 'stamps' and 'label', has {sorted(data.files)}", where=str(path))
            stamps = np.asarray(data["stamps"], np.float32)
            names = np.asarray(data["label"]).astype(str)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot read the labels file as .npz: {exc}", where=str(path)) from exc
    if stamps.ndim != 4 or stamps.shape[1:] != (channels, 32, 32):
        raise ConfigError(f"stamps must have shape (n, {channels}, 32, 32) for this engine's stamp recipe, "
                          f"got {stamps.shape}", where=str(path))
    if names.shape != (stamps.shape[0],):
        raise ConfigError(f"label must hold one name per stamp ({stamps.shape[0]}), got shape {names.shape}",
                          where=str(path))
    if not np.isfinite(stamps).all():
        raise ConfigError("stamps hold NaN or inf; cut them with engines.stamps.cut_for", where=str(path))
    unknown = sorted(set(names.tolist()) - set(classes))
    if unknown and not allow_new:
        raise ConfigError(f"labels {unknown} are not classes of this engine {list(classes)}", where=str(path))
    bad = [n for n in unknown if not _CLASS_NAME.match(n)]
    if bad:
        raise ConfigError(f"new class names {bad} must be lowercase words (letters, digits, underscores)",
                          where=str(path))
    if stamps.shape[0] < 10:
        raise ConfigError(f"only {stamps.shape[0]} labelled stamps; fine-tuning needs at least 10", where=str(path))
    return stamps, names


def grow_heads(state: dict[str, Any], n_new: int, imprints: list[Any] | None = None) -> dict[str, Any]:
    """A model state with ``n_new`` more outputs in every member's classifier layer; everything else
    as it was. Without ``imprints`` the new rows start at zero weight and a bias
    ``_NEW_BIAS_MARGIN`` below the lowest trained one. With them (per member, an (n_new, hidden)
    tensor: the mean hidden activation of each new class's labelled stamps) each new row is that
    mean scaled to the trained rows' mean norm, with their mean bias: weight imprinting, so the
    new class starts where its examples are rather than many optimiser steps away."""
    import torch

    if n_new == 0:
        return state
    out = dict(state)
    keys = sorted((k for k in state if k.startswith("heads.") and k.endswith(".2.weight")),
                  key=lambda k: int(k.split(".")[1]))
    for m, key in enumerate(keys):
        weight, bias = state[key], state[key[:-len("weight")] + "bias"]
        if imprints is None:
            rows = torch.zeros((n_new, weight.shape[1]), dtype=weight.dtype)
            new_bias = torch.full((n_new,), float(bias.min()) - _NEW_BIAS_MARGIN, dtype=bias.dtype)
        else:
            direction = imprints[m] / imprints[m].norm(dim=1, keepdim=True).clamp(min=1e-12)
            rows = (direction * weight.norm(dim=1).mean()).to(weight.dtype)
            new_bias = torch.full((n_new,), float(bias.mean()), dtype=bias.dtype)
        out[key] = torch.cat([weight, rows])
        out[key[:-len("weight")] + "bias"] = torch.cat([bias, new_bias])
    return out


def member_hidden(model: Any, stamps: NDArray[np.float32], batch: int = 1024) -> list[Any]:
    """Per member, the hidden activations (after the first layer of its head and the ReLU) of
    ``stamps``: an (n, hidden) tensor each, the trunks and heads as they are (eval mode)."""
    import torch

    v = model.spec.views
    trunks = list(model.trunks)
    out: list[list[Any]] = [[] for _ in model.heads]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(stamps), batch):
            x = torch.from_numpy(np.ascontiguousarray(stamps[i:i + batch], np.float32))
            shared = model._features(trunks, x)[0] if len(trunks) == v else None
            for m, head in enumerate(model.heads):
                last = shared if shared is not None else model._features(trunks[m * v:(m + 1) * v], x)[0]
                out[m].append(head[1](head[0](last)))
    return [torch.cat(parts) for parts in out]


def head_imprints(spec: Any, state: dict[str, Any], stamps: NDArray[np.float32],
                  labels: NDArray[np.int64], classes: list[int]) -> list[Any]:
    """Per member, the mean hidden activation (after the first layer of its head) of the stamps
    of each class in ``classes``: an (len(classes), hidden) tensor each."""
    import torch

    from engines.training.model import StampEnsemble

    model = StampEnsemble(spec)
    model.load_state_dict(state)
    hidden = member_hidden(model, stamps)
    return [torch.stack([h[torch.from_numpy(labels == c)].mean(dim=0) for c in classes]) for h in hidden]


def fit_new_outputs(model: Any, stamps: NDArray[np.float32], labels: NDArray[np.int64], new: list[int], *,
                    seed: int, steps: int = NEW_CLASS_STEPS, share: float = NEW_CLASS_SHARE) -> None:
    """Fit the rows of the ``new`` classes in every member's classifier layer, and nothing else, on
    ``stamps`` (the new classes' labelled stamps and the replay set's, labels indexing the model's
    classes; the new ones also in their seven other flips and rotations): softmax cross-entropy over
    every class with the trained rows fixed, the new classes weighing ``share`` of the loss
    between them. The trunks and the trained outputs do not move, so no trained class can get
    worse except where a new class wins (which :func:`settle_new_classes` bounds)."""
    import torch
    from torch.nn import functional as F  # noqa: N812 - torch's own convention

    from engines.training.train import _dihedral

    torch.manual_seed(seed)
    is_new = np.isin(labels, new)
    turned = np.concatenate([_dihedral(torch.from_numpy(np.ascontiguousarray(stamps[is_new])), code).numpy()
                             for code in range(1, 8)]) if is_new.any() else stamps[:0]
    x = np.concatenate([stamps, turned])
    y = torch.from_numpy(np.concatenate([labels, np.tile(labels[is_new], 7)]).astype(np.int64))
    positive = torch.from_numpy(np.isin(y.numpy(), new))
    weight = torch.where(positive, share / max(1, int(positive.sum())),
                         (1.0 - share) / max(1, int((~positive).sum()))).float()
    first = min(new)
    for head, hidden in zip(model.heads, member_hidden(model, x), strict=True):
        layer = head[2]
        with torch.no_grad():
            fixed = hidden @ layer.weight[:first].T + layer.bias[:first]
        w = layer.weight[first:].detach().clone().requires_grad_(True)
        b = layer.bias[first:].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([w, b], lr=0.01)
        for _ in range(steps):
            logits = torch.cat([fixed, hidden @ w.T + b], dim=1)
            loss = (F.cross_entropy(logits, y, reduction="none") * weight).sum() + 1e-3 * (w * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            layer.weight[first:] = w
            layer.bias[first:] = b


def finetune_model(base: TrainSettings, init_state: dict[str, Any], replay: TwinSets,
                   user_stamps: NDArray[np.float32], user_names: NDArray[np.str_], *, seed: int, epochs: int,
                   learning_rate: float, threads: int, progress: Progress | None = None) -> tuple[Any, TrainSettings]:
    """Fine-tune from ``init_state`` (an engine of ``base`` settings) on the user's labelled stamps
    and the replay set; returns the model (eval mode) and its settings (new classes added).

    Labels of classes the engine has: ``epochs`` of training of the whole network at
    ``learning_rate``. Labels of a new class: only the new outputs are fitted, on the frozen
    network's hidden activations (:func:`fit_new_outputs`), then settled on the replay set's
    calibration candidates (:func:`settle_new_classes`); ``epochs`` and ``learning_rate`` are
    not used. Measured (bench/leave_one_out.py, docs/engines.md): three epochs of the whole
    network on 24 replay frames cost the ordinary classes 6 points of accuracy."""
    import torch

    from engines.training.dataset import StampSet, concat
    from engines.training.model import StampEnsemble
    from engines.training.train import fit_model, training_copies

    new = tuple(dict.fromkeys(n for n in user_names.tolist() if n not in base.classes))
    settings = replace(base, seed=seed, epochs=epochs, learning_rate=learning_rate, threads=threads,
                       labelled=base.labelled + new,
                       spec=replace(base.spec, n_classes=base.spec.n_classes + len(new)))
    index = {c: i for i, c in enumerate(settings.classes)}
    labels = np.array([index[n] for n in user_names.tolist()], np.int64)
    if new:
        torch.set_num_threads(threads)
        new_index = list(range(len(base.classes), len(settings.classes)))
        model = StampEnsemble(settings.spec)
        model.load_state_dict(grow_heads(init_state, len(new), head_imprints(base.spec, init_state, user_stamps,
                                                                             labels, new_index)))
        model.eval()
        fit_new_outputs(model, np.concatenate([replay.train.stamps, user_stamps]),
                        np.concatenate([replay.train.labels, labels]), new_index, seed=seed)
        shifts = settle_new_classes(model, replay.calib.stamps, new_index)
        log.info("engines.finetune.new_class_bias", classes=list(new), shifts=[round(x, 3) for x in shifts],
                 claim_max=NEW_CLASS_CLAIM_MAX)
        return model, settings
    user = StampSet(user_stamps, labels, np.asarray(user_names), np.full(len(labels), np.nan),
                    np.full(len(labels), -1, np.int64))
    train = concat([replay.train, user])
    # a stamp of no twin frame (the user's) counts as one of the crowded share: one copy
    rep = training_copies(settings, train)
    model = fit_model(np.repeat(train.stamps, rep, axis=0), np.repeat(train.labels, rep), replay.oe_train, settings,
                      init_state=init_state,
                      on_epoch=lambda **kw: log.info("engines.finetune.epoch", **kw), progress=progress)
    return model, settings


def settle_new_classes(model: Any, held_out: NDArray[np.float32], new: list[int],
                       claim_max: float | None = None) -> list[float]:
    """Lower the bias of each new class in every member until it is the top class of at most
    ``claim_max`` (default ``NEW_CLASS_CLAIM_MAX``) of ``held_out``: stamps the fine-tuning never
    saw, none of them of the new class (the replay set's calibration frames). Returns the shift of
    each new class (0 or negative; the model is changed in place).

    A few labelled stamps teach a class nothing of how rare it is on the sky; measured, a comet
    class learned from 10 labels (and 600 copies of them) claimed 11 % of the ordinary candidates.
    The shift is the prior correction, set where it is checked."""
    import torch

    from engines.scoring import member_probabilities
    from engines.training.train import predict

    claim_max = NEW_CLASS_CLAIM_MAX if claim_max is None else claim_max
    logits, _ = predict(model, held_out)
    logits = logits.astype(np.float64)
    shifts = []
    for c in new:
        def claimed(shift: float, c: int = c) -> float:
            z = logits.copy()
            z[:, :, c] += shift
            return float(np.mean(member_probabilities(z).mean(axis=1).argmax(axis=1) == c))

        shift = 0.0
        if claimed(0.0) > claim_max:
            # the largest shift < 0 that keeps the claim: claimed(lo) <= claim_max < claimed(hi)
            lo, hi = -40.0, 0.0
            for _ in range(30):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if claimed(mid) > claim_max else (mid, hi)
            # a hundredth of a nat more, so that float32 rounding in the exported graphs cannot tip a stamp back
            shift = lo - 0.01
        with torch.no_grad():
            for head in model.heads:
                head[2].bias[c] += shift  # the head is Linear, ReLU, Linear
        shifts.append(float(shift))
    return shifts


def trainable(from_dir: Path) -> tuple[Any, Any]:
    """An engine folder's manifest and training settings, when it can be trained further (made by
    ``engines train``, its weights shipped); EngineIntegrityError otherwise."""
    from engines.manifest import load_manifest
    from engines.training.train import WEIGHTS_FILE, TrainSettings

    old = load_manifest(from_dir)
    if WEIGHTS_FILE not in old.files or "settings" not in old.training:
        raise EngineIntegrityError(f"the engine has no {WEIGHTS_FILE} or training settings to start from; "
                                   "only engines made by `engines train` can be trained further", where=str(from_dir))
    return old, TrainSettings.from_dict(old.training["settings"])


def finetune_engine(from_dir: Path, labels_path: Path, out_dir: Path, *, version: str | None = None,
                    epochs: int = 3, learning_rate: float = 5e-4, seed: int = 20261128, threads: int = 2,
                    replay_frames: int = 24, eval_frames: int = 16, command: str = "",
                    progress: Progress | None = None) -> Any:
    """Fine-tune the engine in ``from_dir`` on ``labels_path``; write and return the new manifest.

    ``progress`` is told of every frame simulated, optimiser step and packaging step, stage by stage.
    The new folder's ``exemplars.npz`` holds the base engine's examples and up to 20 training
    stamps of each new class.
    """
    from engines.scoring import expected_calibration_error, score
    from engines.training.exemplars import extend_exemplars
    from engines.training.train import (
        WEIGHTS_FILE,
        load_weights,
        make_twin_sets,
        package_engine,
        predict,
        provenance,
        set_sizes,
    )

    old, base = trainable(from_dir)
    if tuple(old.classes) != base.classes:
        raise EngineIntegrityError(f"engine classes {old.classes} differ from its training settings' "
                                   f"{base.classes}", where=str(from_dir))
    stamps, names = read_labels(labels_path, base.classes, int(old.input.shape[1]), allow_new=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    n_held = max(2, int(round(HELDOUT_FRACTION * len(names))))
    held, fit = order[:n_held], order[n_held:]
    missing = sorted(set(names[held].tolist()) - set(names[fit].tolist()) - set(base.classes))
    if missing:
        raise ConfigError(f"new classes {missing} have no labelled stamp left for training after the "
                          "held-out fifth; label more of them", where=str(labels_path))

    replay_settings = replace(base, seed=seed, n_train_frames=replay_frames,
                              n_calib_frames=max(4, replay_frames // 3), n_eval_frames=eval_frames)
    sets = make_twin_sets(replay_settings, progress=progress)
    model, settings = finetune_model(replay_settings, load_weights(old.path(WEIGHTS_FILE)), sets, stamps[fit],
                                     names[fit], seed=seed, epochs=epochs, learning_rate=learning_rate,
                                     threads=threads, progress=progress)
    written_version = version or f"{old.version}-ft"
    new = list(settings.labelled[len(base.labelled):])
    training = {**provenance(command or "astro-edge engines finetune", seed),
                "finetuned_from": {"name": old.name, "version": old.version,
                                   "engine_id": old.engine_id(WEIGHTS_FILE), "labels": str(labels_path),
                                   "n_labelled": int(len(names)), "n_heldout": int(n_held), "new_classes": new},
                "twin_config": sets.configs, "dataset_sizes": set_sizes(sets, settings.classes)}
    # held-out figures need the final scoring constants: package first, then score the held-out part
    manifest = package_engine(out_dir, model, settings, sets, name=old.name, version=written_version,
                              training=training, progress=progress,
                              stage="exporting and evaluating (scoring constants for the held-out part)",
                              extra_train=(stamps[fit], names[fit]))
    logits, embedding = predict(model, stamps[held])
    s = score(logits, embedding, manifest.scoring)
    index = {c: i for i, c in enumerate(settings.classes)}
    truth = np.array([index[n] for n in names[held].tolist()], np.int64)
    heldout = {"from": f"{old.name} {old.version}", "labels": str(labels_path), "heldout_n": int(n_held),
               "new_classes": new,
               "heldout_accuracy": float((s.label_index == truth).mean()),
               "heldout_ece": expected_calibration_error(s.probs, truth)}
    written = package_engine(out_dir, model, settings, sets, name=old.name, version=written_version,
                             training=training, extra_evaluation={"finetune": heldout}, progress=progress,
                             stage="exporting and evaluating (the new engine)", extra_train=(stamps[fit], names[fit]))
    # the examples an explanation shows: the base engine's, and the new classes' own training stamps
    extend_exemplars(out_dir, from_dir, stamps[fit], names[fit], np.array([f"{labels_path.name} #{i}" for i in fit]),
                     new, seed=seed)
    return written
