"""The node's downlink messages, version 1: one record per sent detection, one summary per frame.

:class:`DownlinkRecord` and :class:`FrameSummary` are frozen dataclasses validated on
construction; the stamp travels compressed (:class:`CompressedStamp`). How they become msgpack
and JSON lines and back is :mod:`edge.codec`. ``docs/downlink.md`` is the spec; a later version
bumps :data:`RECORD_VERSION` and keeps the version 1 reader.

Pure: no sockets, files, SQLite or clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zstandard
from numpy.typing import NDArray

from edge.errors import RecordDecodeError, RecordFieldError, RecordVersionError

__all__ = [
    "GROUND_FIELDS",
    "NOISE_MODELS",
    "OPTIONAL_FIELDS",
    "REASONS",
    "RECORD_VERSION",
    "CompressedStamp",
    "DownlinkRecord",
    "FrameSummary",
    "Message",
    "compress_stamp",
    "record_id",
    "summary_id",
]

RECORD_VERSION = 1
#: the triage reasons a record may carry, in the order triage reports them
REASONS: tuple[str, ...] = ("uncertain", "unknown", "unusual", "new", "blend", "audit")
#: record fields added within version 1: a record written before them reads with None
OPTIONAL_FIELDS: tuple[str, ...] = ("blend_lr", "blend_sep_px", "blend_flux_ratio", "capped")
NOISE_MODELS: tuple[str, ...] = ("bundle", "header", "estimated")
#: keys the ground adds to a record when it writes it; a reader accepts and ignores them
GROUND_FIELDS: tuple[str, ...] = ("received_time",)
#: the codec new stamps use, for (2m, H, W) stamps of m (image, mask) channel pairs: the image
#: channels (0, 2, ...; v = arcsinh S/N) as int8 codes round(8 asinh(sinh(v) / 4)), steps of half
#: the noise near the sky and 1/8 in log flux on bright pixels, then the mask channels (1, 3, ...)
#: as packed bits, one zstd frame (docs/downlink.md); 3/4 of the bytes of the asinh8 codec
STAMP_CODEC = "zstd-int8-asinh8soft4-maskbits"
#: the second codec, still read: the image channels' v itself in int8 steps of 1/8 (steps of 1/8 of
#: the noise near the sky: the noise took most of the bytes)
STAMP_CODEC_ASINH8 = "zstd-int8-asinh8-maskbits"
#: the first codec, still read: every value as little-endian float16
STAMP_CODEC_FLOAT16 = "zstd-float16-le"
STAMP_CODECS: tuple[str, ...] = (STAMP_CODEC, STAMP_CODEC_ASINH8, STAMP_CODEC_FLOAT16)
_INT8_CODECS: tuple[str, ...] = (STAMP_CODEC, STAMP_CODEC_ASINH8)
_ASINH_STEP = 8.0
#: the S/N softening of STAMP_CODEC's second stretch: near the sky a code step is _SOFTENING / 8 in S/N
_SOFTENING = 4.0
_ZSTD_LEVEL = 3
# integers travel as int64 (msgpack, SQLite, FITS columns)
_INT_MAX = 2**63 - 1
# a stamp larger than this is not a stamp: refuse it before decompressing
_MAX_STAMP_VALUES = 1 << 20


def record_id(node_id: str, series_id: str, frame: int, index: int) -> str:
    """The stable record id ``node:series:frame:index``; the same detection always gets the same id."""
    return f"{node_id}:{series_id}:{frame}:{index}"


def summary_id(node_id: str, series_id: str, frame: int) -> str:
    """The stable id of a frame's summary, ``node:series:frame:summary``."""
    return f"{node_id}:{series_id}:{frame}:summary"


@dataclass(frozen=True)
class CompressedStamp:
    """A stamp as sent down, compressed with one of ``STAMP_CODECS`` (see docs/downlink.md)."""

    shape: tuple[int, ...]
    data: bytes
    codec: str = STAMP_CODEC

    def __post_init__(self) -> None:
        if self.codec not in STAMP_CODECS:
            raise RecordFieldError(f"stamp codec {self.codec!r} is not one of {STAMP_CODECS}", where="stamp")
        shape = tuple(self.shape)
        if self.codec in _INT8_CODECS and (len(shape) != 3 or shape[0] < 2 or shape[0] % 2):
            raise RecordFieldError(f"codec {self.codec} needs shape (2m, height, width), got {shape}",
                                   where="stamp")
        if not shape or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in shape):
            raise RecordFieldError(f"stamp shape {self.shape!r} must be positive integers", where="stamp")
        if math.prod(shape) > _MAX_STAMP_VALUES:
            raise RecordFieldError(f"stamp shape {shape} holds more than {_MAX_STAMP_VALUES} values",
                                   where="stamp")
        if not isinstance(self.data, bytes):
            raise RecordFieldError("stamp data must be bytes", where="stamp")
        object.__setattr__(self, "shape", shape)

    def decompress(self) -> NDArray[np.float32]:
        """The stamp as float32 (int8 codecs: arcsinh S/N to the codec's step and an exact mask;
        float16: ~3 digits)."""
        n = math.prod(self.shape)
        if self.codec in _INT8_CODECS:
            plane = n // 2
            expected = plane + (plane + 7) // 8
        else:
            expected = 2 * n
        try:
            raw = zstandard.ZstdDecompressor().decompress(self.data, max_output_size=expected)
        except zstandard.ZstdError as exc:
            raise RecordDecodeError(f"stamp does not decompress: {exc}", where="stamp") from exc
        if len(raw) != expected:
            raise RecordDecodeError(f"stamp holds {len(raw)} bytes, shape {self.shape} needs {expected}",
                                    where="stamp")
        if self.codec == STAMP_CODEC_FLOAT16:
            return np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(self.shape)
        pairs, height, width = self.shape[0] // 2, self.shape[1], self.shape[2]
        image = np.frombuffer(raw[:plane], dtype=np.int8).astype(np.float32) / _ASINH_STEP
        if self.codec == STAMP_CODEC:
            image = np.arcsinh(_SOFTENING * np.sinh(image.astype(np.float64))).astype(np.float32)
        mask = np.unpackbits(np.frombuffer(raw[plane:], dtype=np.uint8), count=plane).astype(np.float32)
        out = np.empty(self.shape, np.float32)
        out[0::2] = image.reshape(pairs, height, width)
        out[1::2] = mask.reshape(pairs, height, width)
        return out


def compress_stamp(stamp: NDArray[Any]) -> CompressedStamp:
    """Compress a (2m, H, W) node stamp (codec ``STAMP_CODEC``): the image channels' arcsinh S/N
    ``v`` to int8 codes ``round(8 asinh(sinh(v) / 4))``, masks to bits, zstd.

    A code step is half the noise near the sky (quantization noise 0.14 of the pixel noise, 2 % of
    its variance) and 1/8 in log flux on bright pixels, like the older asinh8 codec there. Any
    other shape is kept as float16 (codec ``zstd-float16-le``).
    """
    arr = np.asarray(stamp)
    shape = tuple(int(n) for n in arr.shape)
    if arr.ndim == 3 and shape[0] >= 2 and shape[0] % 2 == 0:
        v = np.nan_to_num(np.asarray(arr[0::2], np.float64))
        codes = np.arcsinh(np.sinh(np.clip(v, -20.0, 20.0)) / _SOFTENING) * _ASINH_STEP
        image = np.clip(np.rint(codes), -128, 127).astype(np.int8)
        bits = np.packbits(np.asarray(arr[1::2]) > 0.5, axis=None)
        data = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(image.tobytes() + bits.tobytes())
        return CompressedStamp(shape=shape, data=data)
    half = np.ascontiguousarray(arr, dtype="<f2")
    data = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(half.tobytes())
    return CompressedStamp(shape=shape, data=data, codec=STAMP_CODEC_FLOAT16)


def _check_finite(obj: Any, names: tuple[str, ...], where: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordFieldError(f"{name} must be a finite number, got {value!r}", where=where)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT_MAX


def _check_int(obj: Any, names: tuple[str, ...], where: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not _is_count(value):
            raise RecordFieldError(f"{name} must be an integer in [0, 2**63), got {value!r}", where=where)


def _check_str(obj: Any, names: tuple[str, ...], where: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, str):
            raise RecordFieldError(f"{name} must be a string, got {type(value).__name__}", where=where)


@dataclass(frozen=True)
class DownlinkRecord:
    """One detection sent down, version 1. Units: pixels 0-based (x the column), deg ICRS, nats, e-."""

    record_id: str
    node_id: str
    detector_id: str
    series_id: str
    frame: int                      # frame sequence number within the series
    index: int                      # detection index within the frame
    frame_time: str                 # UTC ISO 8601, acquisition
    processed_time: str             # UTC ISO 8601, when the node scored it
    x: float                        # px, 0-based column
    y: float                        # px, 0-based row
    x_err: float                    # px
    y_err: float                    # px
    ra: float | None                # deg ICRS; None when the frame has no WCS
    dec: float | None               # deg ICRS; None when the frame has no WCS
    label: str
    confidence: float               # probability of ``label``
    probs: Mapping[str, float]      # class -> probability, in the engine's class order
    entropy: float                  # nats
    aleatoric: float                # nats
    epistemic: float                # nats
    anomaly_score: float
    anomaly_pvalue: float
    snr: float
    flux_e: float                   # electrons
    flux_err_e: float               # electrons
    a_px: float                     # semi-major axis, px
    b_px: float                     # semi-minor axis, px
    theta_rad: float                # position angle, rad, counter-clockwise from +x
    flags: int                      # detection flag bits (edge.detect)
    new: bool                       # no counterpart in the reference catalog
    reasons: tuple[str, ...]
    priority: float                 # higher goes down first
    policy_version: int
    engine_id: str
    calibration_id: str
    stamp: CompressedStamp | None = None
    # multiplicity (edge.blend): None together when not measured
    blend_lr: float | None = None               # chi2 of one PSF minus chi2 of two, >= 0
    blend_sep_px: float | None = None           # px between the two fitted components
    blend_flux_ratio: float | None = None       # fainter / brighter component, in [0, 1]
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        where = f"record {self.record_id!r}"
        _check_str(self, ("record_id", "node_id", "detector_id", "series_id", "frame_time",
                          "processed_time", "label", "engine_id", "calibration_id"), where)
        _check_int(self, ("frame", "index", "flags", "policy_version"), where)
        _check_finite(self, ("x", "y", "x_err", "y_err", "confidence", "entropy", "aleatoric",
                             "epistemic", "anomaly_score", "anomaly_pvalue", "snr", "flux_e",
                             "flux_err_e", "a_px", "b_px", "theta_rad", "priority"), where)
        if (self.ra is None) != (self.dec is None):
            raise RecordFieldError("ra and dec are both set or both None", where=where)
        if self.ra is not None:
            _check_finite(self, ("ra", "dec"), where)
        if not isinstance(self.new, bool):
            raise RecordFieldError(f"new must be a bool, got {self.new!r}", where=where)
        if not isinstance(self.probs, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) for k, v in self.probs.items()):
            raise RecordFieldError("probs must map class names to finite probabilities", where=where)
        reasons = tuple(self.reasons)
        bad = [r for r in reasons if r not in REASONS]
        if bad:
            raise RecordFieldError(f"unknown reasons {bad}; known: {list(REASONS)}", where=where)
        blend = ("blend_lr", "blend_sep_px", "blend_flux_ratio")
        measured = [getattr(self, name) is not None for name in blend]
        if any(measured) and not all(measured):
            raise RecordFieldError("blend_lr, blend_sep_px and blend_flux_ratio are all set or all None",
                                   where=where)
        if self.blend_lr is not None and self.blend_sep_px is not None and self.blend_flux_ratio is not None:
            _check_finite(self, blend, where)
            if self.blend_lr < 0 or self.blend_sep_px < 0 or not 0 <= self.blend_flux_ratio <= 1:
                raise RecordFieldError("blend_lr and blend_sep_px must be >= 0 and blend_flux_ratio in [0, 1]",
                                       where=where)
        if self.stamp is not None and not isinstance(self.stamp, CompressedStamp):
            raise RecordFieldError("stamp must be a CompressedStamp or None", where=where)
        if self.version != RECORD_VERSION:
            raise RecordVersionError(f"this class is record version {RECORD_VERSION}, not {self.version}",
                                     where=where)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "probs", {k: float(v) for k, v in self.probs.items()})

    @property
    def id(self) -> str:
        """The id the spool and the ground key on."""
        return self.record_id

    def __hash__(self) -> int:
        # probs is a dict, so the generated hash would fail; equal records share their id
        return hash(self.record_id)


@dataclass(frozen=True)
class FrameSummary:
    """What happened to one frame, version 1: counts of everything, sent or not."""

    node_id: str
    detector_id: str
    series_id: str
    frame: int
    frame_time: str                                  # UTC ISO 8601
    detections: int
    by_class: Mapping[str, int]                      # label -> detections
    sent_by_reason: Mapping[str, int]                # reason -> sent records carrying it
    sent: int                                        # records spooled for the ground
    suppressed: int                                  # detections counted, not sent
    dropped_frames: tuple[int, ...]                  # sequence numbers lost since the last summary
    noise_model: str                                 # "bundle" | "header" | "estimated"
    timings_ms: Mapping[str, float]                  # stage -> ms
    engine_id: str
    policy_version: int
    version: int = field(default=RECORD_VERSION)
    #: of the suppressed, detections a triage reason applied to that the per-frame record cap
    #: kept back ([triage] max_records_per_frame); summaries written before it read 0
    capped: int = 0

    def __post_init__(self) -> None:
        where = f"summary of frame {self.frame!r}"
        _check_str(self, ("node_id", "detector_id", "series_id", "frame_time", "engine_id"), where)
        _check_int(self, ("frame", "detections", "sent", "suppressed", "policy_version", "capped"), where)
        if self.capped > self.suppressed:
            raise RecordFieldError(f"capped {self.capped} > suppressed {self.suppressed}", where=where)
        if self.noise_model not in NOISE_MODELS:
            raise RecordFieldError(f"noise_model {self.noise_model!r} is not one of {NOISE_MODELS}",
                                   where=where)
        if self.sent + self.suppressed != self.detections:
            raise RecordFieldError(f"sent {self.sent} + suppressed {self.suppressed} != detections "
                                   f"{self.detections}", where=where)
        for name in ("by_class", "sent_by_reason"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and _is_count(v) for k, v in value.items()):
                raise RecordFieldError(f"{name} must map names to counts >= 0", where=where)
            object.__setattr__(self, name, dict(value))
        if not isinstance(self.timings_ms, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) for k, v in self.timings_ms.items()):
            raise RecordFieldError("timings_ms must map stage names to finite ms", where=where)
        dropped = tuple(self.dropped_frames)
        if not all(_is_count(s) for s in dropped):
            raise RecordFieldError("dropped_frames must be sequence numbers >= 0", where=where)
        if self.version != RECORD_VERSION:
            raise RecordVersionError(f"this class is summary version {RECORD_VERSION}, not {self.version}",
                                     where=where)
        object.__setattr__(self, "dropped_frames", dropped)
        object.__setattr__(self, "timings_ms", {k: float(v) for k, v in self.timings_ms.items()})

    @property
    def id(self) -> str:
        """The id the spool and the ground key on."""
        return summary_id(self.node_id, self.series_id, self.frame)

    def __hash__(self) -> int:
        # the count maps are dicts, so the generated hash would fail; equal summaries share their id
        return hash(self.id)


#: either message the node sends down
Message = DownlinkRecord | FrameSummary
