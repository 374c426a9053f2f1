"""The triage policy: which detections go down, for which reasons, in which order.

A detection is sent when at least one reason applies:

- ``uncertain``: confidence below ``confidence_min`` or epistemic part above ``epistemic_max_nats``;
- ``unknown``: anomaly p-value at or below ``alpha`` (so about a fraction ``alpha`` of ordinary
  detections is flagged, the split-conformal guarantee of ``engines.scoring``);
- ``unusual``: the label is one of ``classes_of_interest``;
- ``new``: no counterpart in the reference catalog (when ``send_new``);
- ``blend``: the multiplicity fit (``edge.blend``) finds two point sources, likelihood ratio at
  least ``blend_lr_min`` (when ``send_blends``; off by default: blends are measured on every sent
  record, not sent for being blends);
- ``audit``: none of the above, drawn at random with probability ``audit_rate`` so that the
  ground can measure what the filter suppresses.

Priority (higher goes down first) is ``-log10(anomaly_pvalue) + epistemic_weight_per_nat *
epistemic``: lowest p-value and highest epistemic part first. Pure numpy: no clock, no I/O; the
random generator is passed in and consumed identically whatever the data says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.records import REASONS

__all__ = ["TriagePolicy", "TriageResult", "priority", "triage"]

# p-values are >= 1/(M+1) from conformal scoring; the floor only guards log10 against 0
_P_FLOOR = 1e-300


@dataclass(frozen=True)
class TriagePolicy:
    """The ``[triage]`` config section; ``version`` is echoed in every record as ``policy_version``."""

    version: int = 1
    # defaults measured for the shipped engine on twin frames (docs/node.md): each flags about
    # 0.5 % of ordinary detections, so that all reasons together stay near 2 %
    confidence_min: float = 0.45
    epistemic_max_nats: float = 0.05
    alpha: float = 0.01
    classes_of_interest: tuple[str, ...] = ("streak", "lens_arc", "comet", "lobster_psf", "ghost")
    # a call of a class of interest is sent as unusual only at this confidence or more (0: every
    # call); an engine's model card gives the value of its budget operating point
    unusual_confidence_min: float = 0.0
    send_new: bool = True
    send_blends: bool = False
    blend_lr_min: float = 20.0
    audit_rate: float = 0.002
    epistemic_weight_per_nat: float = 10.0
    # at most this many records leave one frame, the highest priorities first; the rest are
    # counted as capped in the frame's summary. A broken frame (wrong byte order, a flood of
    # artefacts) then costs the downlink a bounded amount, and its summary says it was capped
    max_records_per_frame: int = 500

    def __post_init__(self) -> None:
        if (isinstance(self.max_records_per_frame, bool) or not isinstance(self.max_records_per_frame, int)
                or self.max_records_per_frame < 1):
            raise ValueError(f"max_records_per_frame must be an integer >= 1, not {self.max_records_per_frame!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"version must be an integer >= 1, not {self.version!r}")
        if not 0.0 <= self.confidence_min <= 1.0:
            raise ValueError(f"confidence_min must be in [0, 1], not {self.confidence_min}")
        if not 0.0 <= self.unusual_confidence_min <= 1.0:
            raise ValueError(f"unusual_confidence_min must be in [0, 1], not {self.unusual_confidence_min}")
        if not self.epistemic_max_nats >= 0.0:
            raise ValueError(f"epistemic_max_nats must be >= 0, not {self.epistemic_max_nats}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), not {self.alpha}")
        if not (math.isfinite(self.blend_lr_min) and self.blend_lr_min >= 0):
            raise ValueError(f"blend_lr_min must be finite and >= 0, not {self.blend_lr_min}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError(f"audit_rate must be in [0, 1], not {self.audit_rate}")
        if not (math.isfinite(self.epistemic_weight_per_nat) and self.epistemic_weight_per_nat >= 0):
            raise ValueError(f"epistemic_weight_per_nat must be finite and >= 0, not "
                             f"{self.epistemic_weight_per_nat}")
        object.__setattr__(self, "classes_of_interest", tuple(self.classes_of_interest))


@dataclass(frozen=True, eq=False)
class TriageResult:
    """Per detection: the reasons that applied (empty: suppressed), whether it is sent, its priority."""

    reasons: tuple[tuple[str, ...], ...]
    send: NDArray[np.bool_]
    priority: NDArray[np.float64]
    #: detections a reason applied to that the per-frame cap kept back (counted as suppressed)
    capped: int = 0

    def __len__(self) -> int:
        return len(self.reasons)

    @property
    def sent(self) -> int:
        """How many detections are sent."""
        return int(self.send.sum())

    @property
    def suppressed(self) -> int:
        """How many detections are counted but not sent."""
        return len(self) - self.sent

    def counts_by_reason(self) -> dict[str, int]:
        """Sent detections per reason (a detection with two reasons counts under both)."""
        out = dict.fromkeys(REASONS, 0)
        for rs in self.reasons:
            for r in rs:
                out[r] += 1
        return out


def priority(anomaly_pvalue: NDArray[Any], epistemic_nats: NDArray[Any],
             epistemic_weight_per_nat: float) -> NDArray[np.float64]:
    """Downlink priority (higher first): ``-log10(p) + weight * epistemic``."""
    p = np.clip(np.asarray(anomaly_pvalue, dtype=np.float64), _P_FLOOR, 1.0)
    return -np.log10(p) + epistemic_weight_per_nat * np.asarray(epistemic_nats, dtype=np.float64)


def triage(policy: TriagePolicy, *, labels: Sequence[str], confidence: NDArray[Any],
           epistemic_nats: NDArray[Any], anomaly_pvalue: NDArray[Any], new: NDArray[Any],
           rng: np.random.Generator, blend_lr: NDArray[Any] | None = None) -> TriageResult:
    """Apply ``policy`` to N detections; ``rng`` draws N uniforms for the audit sample every call.

    ``blend_lr`` is each detection's multiplicity likelihood ratio (NaN: not measured); only
    read when the policy sends blends.
    """
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    n = conf.shape[0]
    epi = np.asarray(epistemic_nats, dtype=np.float64).reshape(-1)
    pval = np.asarray(anomaly_pvalue, dtype=np.float64).reshape(-1)
    is_new = np.asarray(new, dtype=bool).reshape(-1)
    lab = np.asarray(labels, dtype=object).reshape(-1)
    for name, arr in (("labels", lab), ("epistemic_nats", epi), ("anomaly_pvalue", pval), ("new", is_new)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries, confidence has {n}")
    # non-finite scores are not trusted to be ordinary: they count as uncertain
    uncertain = ~(conf >= policy.confidence_min) | ~(epi <= policy.epistemic_max_nats)
    unknown = ~(pval > policy.alpha)
    unusual = np.isin(lab, np.asarray(policy.classes_of_interest, dtype=object)) & (conf >= policy.unusual_confidence_min)
    is_new = is_new & policy.send_new
    blend = np.zeros(n, bool)
    if policy.send_blends and blend_lr is not None:
        lr = np.asarray(blend_lr, dtype=np.float64).reshape(-1)
        if lr.shape[0] != n:
            raise ValueError(f"blend_lr has {lr.shape[0]} entries, confidence has {n}")
        blend = np.nan_to_num(lr, nan=-np.inf) >= policy.blend_lr_min
    draws = rng.random(n)
    ordinary = ~(uncertain | unknown | unusual | is_new | blend)
    audit = ordinary & (draws < policy.audit_rate)
    flags = np.stack([uncertain, unknown, unusual, is_new, blend, audit], axis=1)
    reasons = tuple(tuple(r for r, f in zip(REASONS, row, strict=True) if f) for row in flags.tolist())
    prio = priority(np.where(np.isfinite(pval), pval, _P_FLOOR),
                    np.where(np.isfinite(epi), epi, 0.0), policy.epistemic_weight_per_nat)
    send = np.asarray(flags.any(axis=1))
    flagged = np.flatnonzero(send)
    capped = max(0, flagged.size - policy.max_records_per_frame)
    if capped:
        # keep the highest priorities (ties: the earlier detection); the rest leave no record
        order = flagged[np.lexsort((flagged, -prio[flagged]))]
        held = order[policy.max_records_per_frame:]
        send[held] = False
        kept_back = set(held.tolist())
        reasons = tuple(() if i in kept_back else r for i, r in enumerate(reasons))
    return TriageResult(reasons=reasons, send=send, priority=prio, capped=capped)
