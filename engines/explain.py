"""Why an engine called a stamp what it did: per-member votes, class prototypes, nearest training
examples and an occlusion saliency map, for one stamp at a time.

:class:`Explainer` opens one engine folder read-only (its manifest verified, its fp32 ONNX file by
default, always on ONNX Runtime's CPU provider) and :meth:`Explainer.explain` returns an
:class:`Explanation`:

- the members' temperature-scaled probabilities, their votes, the share that agree with the
  ensemble and the mutual information between them (the epistemic part of the entropy);
- the distance of the stamp's embedding to each class Gaussian of the scoring constants, on the
  scale of the scores' ``distance`` (Mahalanobis squared over the embedding size);
- the nearest training examples in embedding space, from the folder's ``exemplars.npz``
  (written by ``engines.training.exemplars``; none when the folder has no such file);
- occlusion saliency (:func:`occlusion_saliency`): how much the predicted class's probability
  drops when a square of the image (and the context view's bins over the same frame pixels) is
  set to the sky level, per pixel.

:func:`find_engine` finds the folder and model file a record's ``engine_id`` names. This module
reads files and runs ONNX Runtime (through ``engines.runtime``) but never imports the node
(``edge``, except its error tree and logging), torch or the twin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineCompatibilityError, EngineError, EngineIntegrityError
from edge.log import get_logger
from engines.manifest import MANIFEST_NAME, EngineManifest, load_manifest, read_manifest
from engines.runtime.ort import CPU_EP, OnnxRuntimeEngine
from engines.scoring import mahalanobis_distance, member_probabilities, score
from engines.stamps import CONTEXT_BIN, STAMP_SIZE

__all__ = ["EXEMPLARS_FILE", "SALIENCY_CONTEXT", "SALIENCY_STRIDE_PX", "SALIENCY_WINDOW_PX", "Exemplar",
           "Explainer", "Explanation", "explainer_for", "find_engine", "occlusion_saliency", "read_exemplars"]

log = get_logger(__name__)

#: training examples of an engine folder: 'stamps' (n, C, 32, 32) float16, 'label' (n,) class
#: names, optional 'source' (n,) where each came from
EXEMPLARS_FILE = "exemplars.npz"
#: side of the occluding square (px), the step between squares, and whether the context view's
#: bins over the same frame pixels are occluded too; chosen on bench/saliency.py (docs/engines.md)
SALIENCY_WINDOW_PX = 6
SALIENCY_STRIDE_PX = 2
SALIENCY_CONTEXT = True
_ONNX_FORMATS = ("onnx", "onnx-qdq")
_MODEL_FORMATS = (*_ONNX_FORMATS, "tensorrt-plan")


@dataclass(frozen=True, eq=False)
class Exemplar:
    """One training example near the explained stamp."""

    label: str                    # its class
    distance: float               # Euclidean distance in the engine's embedding space
    stamp: NDArray[np.float32]    # (C, 32, 32), as the engine saw it
    source: str = ""              # where it came from (twin seed and frame, or a labels file)


@dataclass(frozen=True, eq=False)
class Explanation:
    """Everything :meth:`Explainer.explain` says about one stamp."""

    engine_id: str
    classes: tuple[str, ...]
    predicted: str                          # argmax of the ensemble-mean probability
    member_probs: NDArray[np.float64]       # (members, classes), softmax(logits / T) per member
    member_votes: tuple[str, ...]           # each member's top class
    agreement: float                        # share of members whose top class is `predicted`
    disagreement_nats: float                # mutual information: entropy of mean - mean entropy
    prototypes: tuple[tuple[str, float], ...]  # (class, Mahalanobis^2 / D to its Gaussian), nearest first
    exemplars: tuple[Exemplar, ...]         # nearest training examples, nearest first
    saliency: NDArray[np.float32]           # (32, 32) drop of `predicted`'s probability when occluded

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, floats and strings for JSON; stamps and saliency rounded."""
        return {
            "engine_id": self.engine_id,
            "classes": list(self.classes),
            "predicted": self.predicted,
            "member_probs": np.round(self.member_probs, 6).tolist(),
            "member_votes": list(self.member_votes),
            "agreement": float(self.agreement),
            "disagreement_nats": float(self.disagreement_nats),
            "prototypes": [{"label": c, "distance": float(d)} for c, d in self.prototypes],
            "exemplars": [{"label": e.label, "distance": float(e.distance), "source": e.source,
                           "stamp": np.round(e.stamp.astype(np.float64), 3).tolist()} for e in self.exemplars],
            "saliency": np.round(self.saliency.astype(np.float64), 5).tolist(),
        }


def _context_bins(lo_px: int, hi_px: int, size: int, factor: int) -> tuple[int, int]:
    """The context bins [first, last + 1) whose pixels hold stamp pixels [lo_px, hi_px)."""
    # stamp pixel r is frame row cy - size//2 + r; context bin b starts at frame row cy - reach + factor*b
    reach = factor * (size // 2) + factor // 2
    offset = reach - size // 2
    return (lo_px + offset) // factor, (hi_px - 1 + offset) // factor + 1


def occlusion_saliency(run: Callable[[NDArray[np.float32]], NDArray[np.float64]], stamp: NDArray[Any],
                       cls: int, *, window_px: int = SALIENCY_WINDOW_PX, stride_px: int = SALIENCY_STRIDE_PX,
                       context: bool = SALIENCY_CONTEXT) -> NDArray[np.float32]:
    """Occlusion saliency (32, 32) of class ``cls`` for one (C, 32, 32) stamp; pure.

    ``run`` maps (N, C, 32, 32) stamps to ensemble-mean probabilities (N, classes). Squares of
    ``window_px`` (every ``stride_px``, overhanging the edges so every pixel is covered equally)
    set the image plane (channel 0) to 0, the sky level of the S/N stamps; with ``context`` and a
    4-channel stamp, the context image's bins (channel 2) over the same frame pixels too. All
    occluded stamps and the original run in one call; each pixel gets the mean drop of ``cls``'s
    probability over the squares that cover it (positive: the pixel speaks for ``cls``).
    """
    arr = np.asarray(stamp, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1:] != (STAMP_SIZE, STAMP_SIZE):
        raise EngineError(f"a stamp must have shape (C, {STAMP_SIZE}, {STAMP_SIZE}), got {arr.shape}",
                          where="saliency")
    if not (1 <= stride_px <= window_px <= STAMP_SIZE):
        raise EngineError(f"need 1 <= stride_px <= window_px <= {STAMP_SIZE}, got {stride_px} and {window_px}",
                          where="saliency")
    size = STAMP_SIZE
    starts = list(range(stride_px - window_px, size, stride_px))
    boxes = [(max(r, 0), min(r + window_px, size), max(c, 0), min(c + window_px, size))
             for r in starts for c in starts]
    batch = np.repeat(arr[None], len(boxes) + 1, axis=0)
    with_context = context and arr.shape[0] == 4
    for i, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        batch[i, 0, r0:r1, c0:c1] = 0.0
        if with_context:
            b0, b1 = _context_bins(r0, r1, size, CONTEXT_BIN)
            d0, d1 = _context_bins(c0, c1, size, CONTEXT_BIN)
            batch[i, 2, b0:b1, d0:d1] = 0.0
    probs = np.asarray(run(batch), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != batch.shape[0] or not 0 <= cls < probs.shape[1]:
        raise EngineError(f"run gave probabilities of shape {probs.shape} for {batch.shape[0]} stamps "
                          f"and class {cls}", where="saliency")
    drop = probs[0, cls] - probs[1:, cls]
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for d, (r0, r1, c0, c1) in zip(drop, boxes, strict=True):
        total[r0:r1, c0:c1] += d
        count[r0:r1, c0:c1] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def read_exemplars(folder: Path, classes: Sequence[str], channels: int) -> tuple[
        NDArray[np.float32], NDArray[np.str_], NDArray[np.str_]]:
    """Stamps (float32), class names and sources of ``folder``'s exemplars file; empty when there
    is none; EngineIntegrityError when it does not fit the engine."""
    path = Path(folder) / EXEMPLARS_FILE
    empty = (np.zeros((0, channels, STAMP_SIZE, STAMP_SIZE), np.float32), np.zeros(0, "<U1"), np.zeros(0, "<U1"))
    if not path.is_file():
        return empty
    try:
        with np.load(path, allow_pickle=False) as data:
            stamps = np.asarray(data["stamps"], np.float32)
            labels = np.asarray(data["label"]).astype(str)
            source = np.asarray(data["source"]).astype(str) if "source" in data.files else np.full(len(labels), "")
    except (OSError, ValueError, KeyError) as exc:
        raise EngineIntegrityError(f"cannot read the exemplars ({exc}); write them again with "
                                   "`python -m engines.training.exemplars`", where=str(path)) from exc
    n = stamps.shape[0] if stamps.ndim else 0
    problems = []
    if stamps.shape[1:] != (channels, STAMP_SIZE, STAMP_SIZE):
        problems.append(f"stamps have shape {stamps.shape}, the engine reads (n, {channels}, 32, 32)")
    if labels.shape != (n,) or source.shape != (n,):
        problems.append(f"label {labels.shape} and source {source.shape} must hold one entry per stamp ({n})")
    unknown = sorted(set(labels.tolist()) - set(classes))
    if unknown:
        problems.append(f"labels {unknown} are not classes of the engine")
    if not np.isfinite(stamps).all():
        problems.append("stamps hold NaN or inf")
    if problems:
        raise EngineIntegrityError("; ".join(problems) + "; write the exemplars again", where=str(path))
    return stamps, labels, source


class Explainer:
    """Loads one engine folder read-only and explains stamps with it."""

    def __init__(self, folder: Path, file: str | None = None, *, k: int = 6, threads: int = 1) -> None:
        self.folder = Path(folder)
        self.manifest: EngineManifest = load_manifest(self.folder)
        m = self.manifest
        if file is None:
            onnx = m.model_files("fp32", "onnx")
            if not onnx:
                raise EngineCompatibilityError(f"engine {m.name} {m.version} has no fp32 ONNX file to explain "
                                               "with; name another with `file`", where=str(self.folder))
            file = onnx[0]
        entry = m.files.get(file)
        if entry is None or entry.format not in _ONNX_FORMATS:
            have = [rel for rel, e in m.files.items() if e.format in _ONNX_FORMATS]
            raise EngineCompatibilityError(f"{file!r} is not an ONNX file of this engine; explanations run on "
                                           f"ONNX Runtime's CPU provider, from one of {have}", where=str(self.folder))
        if int(k) != k or k < 0:
            raise EngineError(f"k must be a non-negative integer, got {k!r}", where="explain")
        self.file = file
        self.k = int(k)
        self.engine_id = m.engine_id(file)
        self._engine = OnnxRuntimeEngine(m, file, entry.precision, threads=threads, providers=[CPU_EP])
        self._engine.activate()
        try:
            stamps, labels, source = read_exemplars(self.folder, m.classes, int(m.input.shape[1]))
            self._ex_stamps, self._ex_labels, self._ex_source = stamps, labels, source
            self._ex_embedding = self._engine.infer(stamps)[1].astype(np.float64)
        except BaseException:
            self._engine.deactivate()
            raise
        log.info("explain.opened", engine_id=self.engine_id, exemplars=len(labels))

    def probabilities(self, stamps: NDArray[Any]) -> NDArray[np.float64]:
        """Ensemble-mean temperature-scaled probabilities (N, classes) of (N, C, 32, 32) stamps."""
        logits, _ = self._engine.infer(stamps)
        return member_probabilities(logits, self.manifest.scoring.temperature).mean(axis=1)

    def explain(self, stamp: NDArray[Any]) -> Explanation:
        """Explain one (C, 32, 32) stamp."""
        m = self.manifest
        arr = np.asarray(stamp, dtype=np.float32)
        expected = tuple(m.input.shape[1:])
        if arr.shape != expected:
            raise EngineError(f"a stamp for {m.name} {m.version} must have shape {expected}, got {arr.shape}",
                              where="explain")
        logits, embedding = self._engine.infer(arr[None])
        constants = m.scoring
        scores = score(logits, embedding, constants)
        member = member_probabilities(logits, constants.temperature)[0]
        predicted = int(scores.label_index[0])
        votes = member.argmax(axis=1)
        means = constants.class_means[:constants.distance_classes]
        distances = [float(mahalanobis_distance(embedding, means[c:c + 1], constants.precision)[0])
                     for c in range(means.shape[0])]
        order = np.argsort(distances, kind="stable")
        prototypes = tuple((m.classes[int(c)], distances[int(c)]) for c in order)
        return Explanation(
            engine_id=self.engine_id,
            classes=tuple(m.classes),
            predicted=m.classes[predicted],
            member_probs=member,
            member_votes=tuple(m.classes[int(v)] for v in votes),
            agreement=float(np.mean(votes == predicted)),
            disagreement_nats=float(scores.epistemic[0]),
            prototypes=prototypes,
            exemplars=self._nearest(embedding[0].astype(np.float64)),
            saliency=occlusion_saliency(self.probabilities, arr, predicted),
        )

    def _nearest(self, embedding: NDArray[np.float64]) -> tuple[Exemplar, ...]:
        if not len(self._ex_labels) or not self.k:
            return ()
        dist = np.linalg.norm(self._ex_embedding - embedding[None], axis=1)
        nearest = np.argsort(dist, kind="stable")[:self.k]
        return tuple(Exemplar(label=str(self._ex_labels[i]), distance=float(dist[i]),
                              stamp=self._ex_stamps[i].copy(), source=str(self._ex_source[i])) for i in nearest)

    def close(self) -> None:
        """Release the ONNX Runtime session; idempotent."""
        self._engine.deactivate()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def find_engine(engine_id: str, search: Sequence[Path]) -> tuple[Path, str]:
    """The engine folder and model file whose ``engine_id`` (``name:version:sha256[:12]``) is
    ``engine_id``, looking in each folder of ``search`` and its immediate sub-folders that hold a
    manifest.json; EngineError naming the id and the folders searched when none matches."""
    searched: list[str] = []
    for root in map(Path, search):
        searched.append(str(root))
        folders = [root] if (root / MANIFEST_NAME).is_file() else []
        if root.is_dir():
            folders += sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
        for folder in folders:
            try:
                manifest = read_manifest(folder)
            except EngineError as exc:
                log.warning("explain.manifest_unreadable", folder=str(folder), error=str(exc))
                continue
            for rel, entry in manifest.files.items():
                if entry.format in _MODEL_FORMATS and manifest.engine_id(rel) == engine_id:
                    return folder, rel
    raise EngineError(f"no engine folder holds a model file with id {engine_id!r}; searched {searched} and "
                      "their sub-folders; copy the engine folder there or name its folder", where=engine_id)


def explainer_for(engine_id: str, search: Sequence[Path], *, threads: int = 1) -> Explainer:
    """An Explainer of the engine a record names (:func:`find_engine`): its very ONNX file, or the
    same engine's fp32 ONNX file when the record came from a TensorRT plan, which runs only on
    the GPU it was built for."""
    folder, file = find_engine(engine_id, search)
    entry = read_manifest(folder).files[file]
    if entry.format not in _ONNX_FORMATS:
        log.info("explain.plan_replaced", engine_id=engine_id, plan=file, reason="a TensorRT plan runs only on "
                 "its GPU; the same engine's fp32 ONNX file explains it")
        return Explainer(folder, None, threads=threads)
    return Explainer(folder, file, threads=threads)
