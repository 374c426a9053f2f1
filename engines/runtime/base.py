"""The small ``Engine`` interface every runtime backend implements (activate, infer, deactivate).

The base class owns what all backends share: input checks, chunking a batch larger than the
backend's maximum, output shape checks against the manifest, and the context-manager protocol.
A backend only opens and closes its runtime and runs one chunk. This module imports no runtime
library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineError
from engines.manifest import EngineManifest

__all__ = ["Engine"]


class Engine(ABC):
    """One loaded model on one backend; use as ``with engine: logits, emb = engine.infer(stamps)``."""

    #: backend name, as ``load_engine(backend=...)`` spells it
    backend: str = "base"

    def __init__(self, manifest: EngineManifest, file: str, precision: str,
                 max_batch: int | None = None) -> None:
        if file not in manifest.files:
            raise EngineError(f"{file!r} is not listed in the manifest of {manifest.name}", where=file)
        self.manifest = manifest
        self.file = file
        self.precision = precision
        #: largest batch one backend call takes; larger batches are split (None: no limit)
        self.max_batch = max_batch
        self._active = False

    @property
    def engine_id(self) -> str:
        """``name:version:sha256[:12]`` of the model file this engine runs."""
        return self.manifest.engine_id(self.file)

    @property
    def model_path(self) -> Path:
        return self.manifest.path(self.file)

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Open the runtime (session, CUDA context, buffers); idempotent."""
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        """Release everything activate() took; idempotent."""
        if self._active:
            self._active = False
            self._deactivate()

    def __enter__(self) -> Engine:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()

    def infer(self, stamps: NDArray[Any]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Run (N, 2, 32, 32) float32 stamps; return logits (N, K, C) and embedding (N, D), float32."""
        if not self._active:
            raise EngineError(f"engine {self.engine_id} is not active; call activate() or use `with`",
                              where=self.file)
        expected = tuple(self.manifest.input.shape[1:])
        arr = np.asarray(stamps)
        if arr.ndim != 4 or tuple(arr.shape[1:]) != expected:
            raise EngineError(f"stamps must have shape (N, {', '.join(map(str, expected))}), got {arr.shape}",
                              where=self.file)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        n = arr.shape[0]
        k, c = self.manifest.ensemble_size, len(self.manifest.classes)
        d = self.manifest.embedding_dim
        if n == 0:
            return np.zeros((0, k, c), np.float32), np.zeros((0, d), np.float32)
        step = self.max_batch or n
        logits_parts, emb_parts = [], []
        for start in range(0, n, step):
            chunk = arr[start:start + step]
            logits, emb = self._infer(chunk)
            logits = np.asarray(logits, dtype=np.float32)
            emb = np.asarray(emb, dtype=np.float32)
            if logits.shape != (chunk.shape[0], k, c) or emb.shape != (chunk.shape[0], d):
                raise EngineError(f"backend returned logits {logits.shape} and embedding {emb.shape}; "
                                  f"the manifest promises ({chunk.shape[0]}, {k}, {c}) and "
                                  f"({chunk.shape[0]}, {d})", where=self.file)
            logits_parts.append(logits)
            emb_parts.append(emb)
        if len(logits_parts) == 1:
            return logits_parts[0], emb_parts[0]
        return np.concatenate(logits_parts), np.concatenate(emb_parts)

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, stamps: NDArray[np.float32]) -> tuple[NDArray[Any], NDArray[Any]]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine_id!r}, precision={self.precision!r})"
