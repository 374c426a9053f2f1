"""The stamp classifier: a small CNN ensemble of K members in one graph (``train`` extra only).

One forward pass returns per-member logits ``(N, K, C)`` and an embedding ``(N, D)``, which is
exactly what the exported ONNX graph outputs and what :mod:`engines.scoring` consumes. Two
designs are built from the same blocks so that they can be compared on cost and on uncertainty:

- ``"shared"``: one convolutional trunk, K heads (each a hidden layer and a classifier);
- ``"independent"``: K complete members (trunk and head each).

The heads read the globally pooled last block. The embedding (what the anomaly distance sees) is
``"multiscale"`` by default: the global average of every block's feature maps, concatenated
(16 + 32 + 64 = 112 values), because early blocks keep the shape information that a classifier's
last layer is free to discard, and a shape the training set never held shows there first;
``"last"`` is the last block alone. With independent members the embedding is the members' mean.

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

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.n_members < 1 or self.n_classes < 2:
            raise ValueError("need at least one member and two classes")

    @property
    def embedding_dim(self) -> int:
        return sum(self.widths) if self.embedding == "multiscale" else self.widths[-1]

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
        k, w = spec.n_members, spec.widths
        n_trunks = 1 if spec.design == "shared" else k
        self.trunks = nn.ModuleList(_Trunk(spec.in_channels, w) for _ in range(n_trunks))
        self.heads = nn.ModuleList(_head(w[-1], spec.head_hidden, spec.n_classes) for _ in range(k))

    def _embed(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pooled, dim=1) if self.spec.embedding == "multiscale" else pooled[-1]

    def forward(self, stamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.trunks) == 1:
            pooled = self.trunks[0](stamps)
            logits = torch.stack([head(pooled[-1]) for head in self.heads], dim=1)
            return logits, self._embed(pooled)
        members = [trunk(stamps) for trunk in self.trunks]
        logits = torch.stack([head(p[-1]) for head, p in zip(self.heads, members, strict=True)], dim=1)
        return logits, torch.stack([self._embed(p) for p in members], dim=1).mean(dim=1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
