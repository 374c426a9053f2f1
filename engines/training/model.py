"""The stamp classifier: a small CNN ensemble of K members in one graph (``train`` extra only).

One forward pass returns per-member logits ``(N, K, C)`` and an embedding ``(N, D)``, which is
exactly what the exported ONNX graph outputs and what :mod:`engines.scoring` consumes. Two
designs are built from the same blocks so that they can be compared on cost and on uncertainty:

- ``"shared"``: one convolutional trunk, K heads (each a hidden layer and a classifier);
- ``"independent"``: K complete members (trunk and head each).

With ``views = 2`` the input holds two 2-channel views of each candidate (the sharp stamp and the
binned context of :func:`engines.stamps.cut_context`, channels 0-1 and 2-3) and each view has its
own trunk (per member, in the independent design); the features of both views are concatenated.

The heads read the globally pooled last block (of every view). The embedding (what the anomaly
distance sees) is ``"multiscale"`` by default: the global average of every block's feature maps,
concatenated (16 + 32 + 64 = 112 values per view), because early blocks keep the shape information
that a classifier's last layer is free to discard, and a shape the training set never held shows
there first; ``"last"`` is the last block alone. With independent members the embedding is the
members' mean.

This module imports torch and is imported only by training, export and fine-tuning code; the node
and the runtime backends must never import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["ModelSpec", "StampEnsemble", "count_parameters"]

DESIGNS = ("shared", "independent")
EMBEDDINGS = ("multiscale", "last")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the ensemble; stored in the engine manifest so fine-tuning can rebuild it."""

    n_classes: int = 6
    n_members: int = 4
    design: str = "shared"
    widths: tuple[int, int, int] = (16, 32, 64)
    head_hidden: int = 64
    in_channels: int = 2
    stamp_size_px: int = 32
    embedding: str = "multiscale"
    #: 1: the sharp stamp alone; 2: the stamp and its context view, each with its own trunk
    views: int = 1

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.n_members < 1 or self.n_classes < 2:
            raise ValueError("need at least one member and two classes")
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {self.views!r}")

    @property
    def embedding_dim(self) -> int:
        return self.views * (sum(self.widths) if self.embedding == "multiscale" else self.widths[-1])

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelSpec:
        values = dict(data)
        values["widths"] = tuple(values["widths"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


class _Trunk(nn.Module):
    """Three conv-BN-ReLU-pool blocks, 32 -> 16 -> 8 -> 4 px; returns each block's pooled features."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        blocks = []
        c_in = in_channels
        for c_out in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                                        nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pooled = []
        for block in self.blocks:
            x = block(x)
            pooled.append(x.mean(dim=(2, 3)))
        return pooled


def _head(width: int, hidden: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_classes))


class StampEnsemble(nn.Module):
    """K-member stamp classifier; ``forward(stamps) -> (logits (N, K, C), embedding (N, D))``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        k, w, v = spec.n_members, spec.widths, spec.views
        n_trunks = v if spec.design == "shared" else k * v
        self.trunks = nn.ModuleList(_Trunk(spec.in_channels, w) for _ in range(n_trunks))
        self.heads = nn.ModuleList(_head(v * w[-1], spec.head_hidden, spec.n_classes) for _ in range(k))

    def _embed(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pooled, dim=1) if self.spec.embedding == "multiscale" else pooled[-1]

    def _features(self, trunks: list[nn.Module], stamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last block of every view, embedding) of one member's trunks."""
        c = self.spec.in_channels
        pooled = [trunk(stamps[:, i * c:(i + 1) * c]) for i, trunk in enumerate(trunks)]
        last = torch.cat([p[-1] for p in pooled], dim=1)
        return last, torch.cat([self._embed(p) for p in pooled], dim=1)

    def forward(self, stamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.spec.views
        if not torch.jit.is_tracing() and stamps.shape[1] != v * self.spec.in_channels:
            raise ValueError(f"the model reads {v} view(s) of {self.spec.in_channels} channels, "
                             f"got stamps with {stamps.shape[1]} channels")
        trunks = list(self.trunks)
        if len(trunks) == v:
            last, embedding = self._features(trunks, stamps)
            logits = torch.stack([head(last) for head in self.heads], dim=1)
            return logits, embedding
        members = [self._features(trunks[m * v:(m + 1) * v], stamps) for m in range(self.spec.n_members)]
        logits = torch.stack([head(f[0]) for head, f in zip(self.heads, members, strict=True)], dim=1)
        return logits, torch.stack([f[1] for f in members], dim=1).mean(dim=1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
