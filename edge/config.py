"""The node config: one TOML file becomes one frozen config tree at start-up.

Each section is a frozen dataclass; each component receives its own section. The loader checks
every key against the dataclass fields (unknown keys, wrong types, values the section's own
validator refuses) and reports *every* problem in one ``ConfigError``, so an operator fixes a
bad file in one pass. No environment lookups, no globals: what the file says is what runs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.detect import DetectSettings
from edge.errors import ConfigError
from edge.triage import TriagePolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

QUEUE_POLICIES = ("drop_oldest", "block")


@dataclass(frozen=True)
class NodeSection:
    """Who this node is."""

    id: str = "node-1"
    #: seeds the audit sample; with it, the same frame always gives the same records
    seed: int = 0
    #: pipeline worker processes (frames overlap across cores; sep holds the GIL)
    workers: int = 2
    #: the node's processes map every C block of at least this many KiB and give it back on free
    #: (glibc; see edge/node/allocator.py); 0 keeps the C library's moving threshold
    mmap_threshold_kib: int = 4096
    #: a worker that has taken this many frames is replaced by a fresh process (started beside it,
    #: switched in between two frames), so that the slow growth of a long-lived native heap stays
    #: bounded however long the node runs; 0 keeps workers for the node's lifetime
    worker_max_frames: int = 20000
    #: a worker that holds one frame longer than this is killed and replaced, and the frame is
    #: rejected as ``frame_timeout`` (a hung native call, a pathological frame)
    frame_deadline_s: float = 120.0

    def __post_init__(self) -> None:
        if self.frame_deadline_s <= 0:
            raise ValueError("frame_deadline_s must be > 0")
        if not self.id:
            raise ValueError("id must not be empty")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.worker_max_frames < 0:
            raise ValueError("worker_max_frames must be >= 0 (0: never replace a worker)")
        if not 0 <= self.mmap_threshold_kib <= 32768:
            raise ValueError("mmap_threshold_kib must be 0 (the C library's default) to 32768 (32 MiB)")


@dataclass(frozen=True)
class ReceiveSection:
    """Where frames come from and how the ingest queue behaves when the node falls behind."""

    address: str = "tcp://127.0.0.1:5555"
    bind: bool = True
    queue_frames: int = 4
    queue_policy: str = "drop_oldest"
    timeout_ms: int = 200
    #: the largest frame accepted, in bytes of pixels (default 256 MiB: 8192 x 8192 of 32-bit
    #: pixels); a larger declared shape is refused from its header, and libzmq drops a peer that
    #: sends a message part larger than twice this (ZMQ_MAXMSGSIZE)
    max_frame_bytes: int = 256 << 20
    #: a compressed frame of more than 1 MiB of pixels may declare at most this many pixel bytes
    #: per payload byte (real frames: 1.1-3x); more is refused before it is inflated
    max_compression_ratio: float = 64.0
    #: the DAQ's heartbeat period: in the middle of a series, no message for three of them puts
    #: the node's "daq" part in the degraded state (silence), until the next message
    daq_heartbeat_s: float = 5.0
    #: CURVE on the frame feed: this node's NAME.key_secret, and the NAME.key files of the DAQs
    #: allowed to send (empty: no CURVE; any peer that reaches the port may send frames)
    curve_server_secret_key: str = ""
    allowed_daq_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.curve_server_secret_key) != bool(self.allowed_daq_keys):
            raise ValueError("CURVE on the frame feed needs both curve_server_secret_key and allowed_daq_keys")
        if self.daq_heartbeat_s <= 0:
            raise ValueError("daq_heartbeat_s must be > 0")
        if not 1 << 16 <= self.max_frame_bytes <= 2 << 30:
            raise ValueError("max_frame_bytes must be from 65536 (64 KiB) to 2147483648 (2 GiB)")
        if self.max_compression_ratio < 4:
            raise ValueError("max_compression_ratio must be >= 4: real frames compress up to about 3x")
        if self.queue_policy not in QUEUE_POLICIES:
            raise ValueError(f"queue_policy must be one of {QUEUE_POLICIES}, not {self.queue_policy!r}")
        if self.queue_frames < 1:
            raise ValueError("queue_frames must be >= 1")


@dataclass(frozen=True)
class CalibrationSection:
    """The calibration bundle (empty: header GAIN/RDNOISE, else noise estimated from the image)."""

    bundle: str = ""
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("threads must be >= 1")


@dataclass(frozen=True)
class EngineSection:
    """Which engine runs and how (empty path: the shipped default engine)."""

    path: str = ""
    backend: str = "auto"
    precision: str = "auto"
    threads: int = 1
    #: stamps per engine call; 0: the batch `engines build` measured best on this device (its build
    #: record), else 32 on ONNX Runtime's CPU provider and 256 on a GPU (edge.node.assemble)
    batch_size: int = 0
    #: the only folder engines may be loaded from at run time (``ctl engine load / shadow``); empty:
    #: the folder that holds the engine the node starts with (the shipped models for the default)
    root: str = ""
    #: NAME.verify_key files (astro-edge keys new --signing); when any is given, the node loads only
    #: engines whose manifest.json.sig is a signature by one of them (at start and at run time)
    trusted_keys: tuple[str, ...] = ()
    #: ONNX Runtime execution providers to use (empty: every one the installed onnxruntime offers,
    #: TensorRT EP, CUDA EP, CPU EP in that order); each one named must be there at start-up
    providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        unknown = [p for p in self.providers if p not in known]
        if unknown:
            raise ValueError(f"providers {unknown} are not among {list(known)}")
        if self.backend == "tensorrt" and self.providers:
            raise ValueError("providers choose ONNX Runtime's execution providers; with backend "
                             "\"tensorrt\" leave them empty")
        if self.backend not in ("auto", "onnxruntime", "tensorrt"):
            raise ValueError(f"backend must be auto, onnxruntime or tensorrt, not {self.backend!r}")
        if self.precision not in ("auto", "fp32", "fp16", "int8"):
            raise ValueError(f"precision must be auto, fp32, fp16 or int8, not {self.precision!r}")
        if self.threads < 1 or self.batch_size < 0:
            raise ValueError("threads must be >= 1 and batch_size >= 0 (0: the batch engines build measured)")


@dataclass(frozen=True)
class CatalogSection:
    """The field's reference catalog (edge.sky.ReferenceCatalog: ra/dec in degrees, x_px/y_px in the
    reference frame's pixels, or both); empty: none. Pixel catalogs match in pixels, others on the sky."""

    reference: str = ""
    min_match_radius_arcsec: float = 1.0
    #: false: the frame's WCS is ignored (records carry null ra/dec); "new" then needs a pixel catalog
    use_header_wcs: bool = True
    min_match_radius_px: float = 2.0
    #: a detection below this S/N is never "new" (noise peaks at the threshold have no counterpart either)
    min_new_snr: float = 0.0
    #: the largest frame-to-catalog shift registration searches (pixel catalogs)
    register_max_shift_px: float = 50.0

    def __post_init__(self) -> None:
        for name in ("min_match_radius_arcsec", "min_match_radius_px", "register_max_shift_px"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if not 0 <= self.min_new_snr < math.inf:
            raise ValueError(f"min_new_snr must be >= 0 (0: any S/N may be new), not {self.min_new_snr}")


@dataclass(frozen=True)
class SpoolSection:
    """The store-and-forward spool file and its bound."""

    path: str = "spool.sqlite"
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise ValueError("max_bytes must be >= 1024")


@dataclass(frozen=True)
class DownlinkSection:
    """Where records go and how many bytes may leave."""

    address: str = "tcp://127.0.0.1:5556"
    budget_bytes_per_s: int = 1_000_000
    contact_window_bytes: int = 0
    ack_timeout_s: float = 5.0
    curve_client_secret_key: str = ""   # this node's NAME.key_secret
    curve_server_public_key: str = ""   # the ground's NAME.key
    compression: str = "zstd-dict-1"    # "none" or a dictionary of edge.link.zdict
    #: sends without an ack, while the ground acknowledged other messages, before a message is
    #: moved to the spool's dead letters (the ground cannot take it)
    max_tries: int = 8

    def __post_init__(self) -> None:
        from edge.link.zdict import COMPRESSIONS

        if self.max_tries < 1:
            raise ValueError("max_tries must be >= 1")

        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, not {self.compression!r}")
        if bool(self.curve_client_secret_key) != bool(self.curve_server_public_key):
            raise ValueError("CURVE on the downlink needs both curve_client_secret_key and curve_server_public_key")
        if self.budget_bytes_per_s <= 0:
            raise ValueError("budget_bytes_per_s must be > 0")
        if self.contact_window_bytes < 0:
            raise ValueError("contact_window_bytes must be >= 0 (0: no window limit)")
        if self.ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be > 0")


@dataclass(frozen=True)
class ControlSection:
    """The operators' control channel (docs/operations.md); empty address: no control channel."""

    address: str = ""
    curve: bool = True
    server_secret_key: str = ""          # NAME.key_secret of this node
    allowed_client_keys: tuple[str, ...] = ()   # NAME.key files of the operators allowed in

    def __post_init__(self) -> None:
        if self.address and self.curve and not self.server_secret_key:
            raise ValueError("with curve on, server_secret_key must name this node's NAME.key_secret file")
        if self.address and self.curve and not self.allowed_client_keys:
            raise ValueError("with curve on, allowed_client_keys must list at least one operator key file")


@dataclass(frozen=True)
class HousekeepingSection:
    """The housekeeping PUB socket and the Prometheus endpoint; empty: off."""

    address: str = ""
    interval_s: float = 5.0
    prometheus_address: str = ""     # host:port, e.g. "127.0.0.1:9108"

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError("interval_s must be > 0")
        if self.prometheus_address and not self.prometheus_address.rpartition(":")[2].isdigit():
            raise ValueError(f"prometheus_address must be host:port, not {self.prometheus_address!r}")


@dataclass(frozen=True)
class LogSection:
    """Logging: JSON lines in production."""

    json: bool = True
    level: str = "info"

    def __post_init__(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"level must be debug, info, warning or error, not {self.level!r}")


def _section_types() -> dict[str, type]:
    # the detect and triage sections are owned by their stages
    return {
        "node": NodeSection,
        "receive": ReceiveSection,
        "calibration": CalibrationSection,
        "detect": DetectSettings,
        "engine": EngineSection,
        "triage": TriagePolicy,
        "catalog": CatalogSection,
        "spool": SpoolSection,
        "downlink": DownlinkSection,
        "control": ControlSection,
        "housekeeping": HousekeepingSection,
        "log": LogSection,
    }


@dataclass(frozen=True)
class NodeConfig:
    """The whole node config tree; each component gets its own section."""

    node: NodeSection = field(default_factory=NodeSection)
    receive: ReceiveSection = field(default_factory=ReceiveSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    detect: DetectSettings = field(default_factory=DetectSettings)
    engine: EngineSection = field(default_factory=EngineSection)
    triage: TriagePolicy = field(default_factory=TriagePolicy)
    catalog: CatalogSection = field(default_factory=CatalogSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    downlink: DownlinkSection = field(default_factory=DownlinkSection)
    control: ControlSection = field(default_factory=ControlSection)
    housekeeping: HousekeepingSection = field(default_factory=HousekeepingSection)
    log: LogSection = field(default_factory=LogSection)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_type_ok(v, inner) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _convert(value: Any, annotation: Any) -> Any:
    if typing.get_origin(annotation) is tuple and isinstance(value, list):
        return tuple(value)
    if annotation is float and isinstance(value, int):
        return float(value)
    return value


def build_section(cls: type, table: Any, name: str, problems: list[str]) -> Any:
    """Build one section dataclass from a TOML table, appending every problem to ``problems``."""
    if not isinstance(table, Mapping):
        problems.append(f"[{name}] must be a table, not {type(table).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    ok = True
    for key, value in table.items():
        if key not in fields:
            problems.append(f"{name}.{key}: unknown key (known: {', '.join(sorted(fields))})")
            ok = False
            continue
        if not _type_ok(value, hints[key]):
            problems.append(f"{name}.{key}: expected {_type_name(hints[key])}, got {type(value).__name__} {value!r}")
            ok = False
            continue
        values[key] = _convert(value, hints[key])
    # the well-typed values are still checked by the section's validator, so one pass names
    # every problem, not only the unknown keys
    try:
        section = cls(**values)
    except (ValueError, TypeError) as exc:
        problems.append(f"[{name}]: {exc}")
        return cls()
    return section if ok else cls()


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def config_from_mapping(data: Mapping[str, Any], *, where: str = "config") -> NodeConfig:
    """Turn a parsed TOML document into the frozen config tree, or raise one ConfigError listing every problem."""
    sections = _section_types()
    problems: list[str] = []
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name not in sections:
            problems.append(f"[{name}]: unknown section (known: {', '.join(sections)})")
            continue
        built[name] = build_section(sections[name], table, name, problems)
    if problems:
        raise ConfigError(
            f"{len(problems)} problem(s); fix them and start again:\n  " + "\n  ".join(problems),
            where=where,
        )
    for name, cls in sections.items():
        built.setdefault(name, cls())
    return NodeConfig(**built)


def load_config(path: str | Path | None) -> NodeConfig:
    """Read ``path`` (TOML) into the config tree; ``None`` gives the defaults."""
    if path is None:
        return config_from_mapping({})
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", where=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(path)) from exc
    return config_from_mapping(data, where=str(path))
