"""The engine manifest (``manifest.json``, format ``astro-edge-engine-1``): read, verify, write.

A manifest describes one engine folder: what the model takes and gives, the scoring constants,
every file with its sha256, how the engine was trained and evaluated, its golden stamps, and what
was built for which device. :func:`load_manifest` refuses a folder whose format is unknown
(:class:`~edge.errors.EngineCompatibilityError`) or whose content is missing, malformed or fails
its checksum (:class:`~edge.errors.EngineIntegrityError`). The full spec is docs/engines-runtime.md.

This module reads and writes JSON and hashes files; it never imports onnxruntime, tensorrt, torch
or the node (``edge``, except its error tree).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from edge.errors import EngineCompatibilityError, EngineIntegrityError
from engines.scoring import ScoringConstants

__all__ = [
    "FILE_FORMATS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "PLAN_PLATFORM_KEYS",
    "PRECISIONS",
    "BuildInfo",
    "EngineManifest",
    "FileEntry",
    "GoldenSpec",
    "InputSpec",
    "OutputSpec",
    "file_entry",
    "load_manifest",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]

MANIFEST_FORMAT = "astro-edge-engine-1"
MANIFEST_NAME = "manifest.json"
#: model precisions; "none" is for files that are not a model (golden stamps, model card)
PRECISIONS = ("fp32", "fp16", "int8", "none")
#: "onnx-qdq" is an INT8 ONNX graph in QuantizeLinear/DequantizeLinear form
FILE_FORMATS = ("onnx", "onnx-qdq", "tensorrt-plan", "npz", "markdown", "json")
_HARDWARE_COMPATIBILITY = (None, "ampere_plus")
#: the keys of a tensorrt-plan entry that say which platform built it (all optional when read)
PLAN_PLATFORM_KEYS = ("cpu_arch", "os", "gpu_name", "integrated", "cuda_version")


def _integrity(message: str, where: str) -> EngineIntegrityError:
    return EngineIntegrityError(message, where=where)


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict):
        raise _integrity(f"expected an object, got {type(data).__name__}", where)
    if key not in data:
        raise _integrity(f"missing key {key!r}; the manifest is incomplete, rebuild or re-export the engine", where)
    value = data[key]
    # bool is an int in Python, but never a valid count or size here
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _integrity(f"{key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}", where)
    return value


def _optional(data: dict[str, Any], key: str, kind: type[str] | type[bool], where: str) -> Any:
    """``data[key]`` when present (a non-empty string, or a JSON true/false), else None."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise _integrity(f"{key!r} must be a {'non-empty string' if kind is str else 'boolean'}, "
                         f"got {value!r}", where)
    return value


def _optional_cuda_version(data: dict[str, Any], where: str) -> str | None:
    version: str | None = _optional(data, "cuda_version", str, where)
    if version is not None and not re.fullmatch(r"\d+\.\d+", version):
        raise _integrity(f"cuda_version must be 'major.minor' (e.g. '12.6'), got {version!r}", where)
    return version


@dataclass(frozen=True)
class FileEntry:
    """One file of the engine folder, by its path relative to the folder."""

    sha256: str
    precision: str
    format: str
    size_bytes: int | None = None
    #: for tensorrt-plan files: the TensorRT version and GPU compute capability ("8.7") it was built with
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    #: for tensorrt-plan files: "ampere_plus" when built with that hardware-compatibility level
    hardware_compatibility: str | None = None
    #: for tensorrt-plan files: the optimisation profile's batch sizes [min, opt, max]
    batch_profile: tuple[int, int, int] | None = None
    #: for tensorrt-plan files, the platform it was built on (plans do not move across any of these):
    #: CPU architecture and OS as platform.machine() / platform.system() ("aarch64", "Linux"),
    #: the GPU's name, whether it is integrated (shares host memory, as on Jetson), and the CUDA
    #: driver API version "major.minor". None in entries written before they were recorded.
    cpu_arch: str | None = None
    os: str | None = None
    gpu_name: str | None = None
    integrated: bool | None = None
    cuda_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256, "precision": self.precision, "format": self.format}
        for key in ("size_bytes", "tensorrt_version", "compute_capability", "hardware_compatibility"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.batch_profile is not None:
            out["batch_profile"] = list(self.batch_profile)
        for key in PLAN_PLATFORM_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> FileEntry:
        sha = _require(data, "sha256", str, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _integrity(f"sha256 must be 64 lowercase hex digits, got {sha!r}", where)
        precision = _require(data, "precision", str, where)
        if precision not in PRECISIONS:
            raise _integrity(f"precision {precision!r} is not one of {PRECISIONS}", where)
        fmt = _require(data, "format", str, where)
        if fmt not in FILE_FORMATS:
            raise EngineCompatibilityError(f"file format {fmt!r} is not one of {FILE_FORMATS}; "
                                           "a newer astro-edge wrote this engine", where=where)
        size = data.get("size_bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise _integrity(f"size_bytes must be a non-negative integer, got {size!r}", where)
        hw = data.get("hardware_compatibility")
        if hw not in _HARDWARE_COMPATIBILITY:
            raise EngineCompatibilityError(f"hardware_compatibility {hw!r} is not one of "
                                           f"{_HARDWARE_COMPATIBILITY}", where=where)
        profile = data.get("batch_profile")
        if profile is not None:
            if (not isinstance(profile, list) or len(profile) != 3
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in profile)
                    or not profile[0] <= profile[1] <= profile[2]):
                raise _integrity(f"batch_profile must be [min, opt, max] with 1 <= min <= opt <= max, "
                                 f"got {profile!r}", where)
            profile = (profile[0], profile[1], profile[2])
        if fmt == "tensorrt-plan":
            for key in ("tensorrt_version", "compute_capability"):
                if not isinstance(data.get(key), str):
                    raise _integrity(f"a tensorrt-plan entry needs {key!r} (a string) so it can be "
                                     "checked before loading", where)
        return cls(sha256=sha, precision=precision, format=fmt, size_bytes=size,
                   tensorrt_version=data.get("tensorrt_version"),
                   compute_capability=data.get("compute_capability"),
                   hardware_compatibility=hw, batch_profile=profile,
                   cpu_arch=_optional(data, "cpu_arch", str, where),
                   os=_optional(data, "os", str, where),
                   gpu_name=_optional(data, "gpu_name", str, where),
                   integrated=_optional(data, "integrated", bool, where),
                   cuda_version=_optional_cuda_version(data, where))


@dataclass(frozen=True)
class InputSpec:
    """The model input: name, shape with -1 for the dynamic batch, dtype."""

    name: str = "stamps"
    shape: tuple[int, ...] = (-1, 2, 32, 32)
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OutputSpec:
    """The model outputs: per-member logits (N, K, C) and the embedding (N, D)."""

    logits: str = "logits"
    embedding: str = "embedding"

    def to_dict(self) -> dict[str, Any]:
        return {"logits": self.logits, "embedding": self.embedding}


@dataclass(frozen=True)
class GoldenSpec:
    """Golden stamps (an .npz with arrays stamps, logits, embedding: the FP32 outputs) and tolerances.

    ``tolerance`` maps a precision to named limits, e.g.
    ``{"int8": {"logits_max_abs": 0.5, "top1_agreement_min": 0.995}}``.
    """

    file: str
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tolerance": {k: dict(v) for k, v in self.tolerance.items()}}


@dataclass(frozen=True)
class BuildInfo:
    """What ``engines build`` chose for a device: backend, precision, the file it runs, figures."""

    backend: str
    precision: str
    file: str
    device: str
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    #: where the figures were measured: platform.machine() and platform.system() of the host, and,
    #: for TensorRT, the CUDA driver API version "major.minor"
    cpu_arch: str | None = None
    os: str | None = None
    cuda_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "precision": self.precision, "file": self.file,
                               "device": self.device, "figures": dict(self.figures)}
        for key in ("tensorrt_version", "compute_capability", "cpu_arch", "os", "cuda_version"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True, eq=False)
class EngineManifest:
    """A parsed manifest. ``directory`` is where it was read from (None when built in memory)."""

    name: str
    version: str
    classes: tuple[str, ...]
    ensemble_size: int
    embedding_dim: int
    normalisation: str
    scoring: ScoringConstants
    files: dict[str, FileEntry]
    input: InputSpec = InputSpec()
    outputs: OutputSpec = OutputSpec()
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    golden: GoldenSpec | None = None
    build: BuildInfo | None = None
    directory: Path | None = None

    def __post_init__(self) -> None:
        where = "manifest"
        if len(self.classes) != self.scoring.n_classes:
            raise _integrity(f"{len(self.classes)} classes but scoring constants for "
                             f"{self.scoring.n_classes}", where)
        if self.embedding_dim != self.scoring.embedding_dim:
            raise _integrity(f"embedding_dim {self.embedding_dim} but scoring constants for "
                             f"{self.scoring.embedding_dim}", where)
        if self.ensemble_size < 1:
            raise _integrity(f"ensemble_size must be >= 1, got {self.ensemble_size}", where)
        if len(self.input.shape) != 4 or self.input.shape[0] != -1 or self.input.dtype != "float32":
            raise EngineCompatibilityError(f"input must be float32 with shape [-1, channels, height, "
                                           f"width], got {self.input.shape} {self.input.dtype}", where=where)
        for rel in self.files:
            _safe_relative(rel)
        for ref, what in ((self.golden.file if self.golden else None, "golden.file"),
                          (self.build.file if self.build else None, "build.file")):
            if ref is not None and ref not in self.files:
                raise _integrity(f"{what} {ref!r} is not listed in files", where)

    @property
    def output_shapes(self) -> dict[str, list[int]]:
        """Shapes of the outputs with -1 for the batch."""
        return {self.outputs.logits: [-1, self.ensemble_size, len(self.classes)],
                self.outputs.embedding: [-1, self.embedding_dim]}

    def engine_id(self, file: str) -> str:
        """``name:version:sha256[:12]`` of the model file an engine runs; logged with every record."""
        return f"{self.name}:{self.version}:{self.files[file].sha256[:12]}"

    def path(self, file: str) -> Path:
        """Absolute path of a listed file (the manifest must have been read from a folder)."""
        if self.directory is None:
            raise _integrity("this manifest was not read from a folder", "manifest")
        return self.directory / _safe_relative(file)

    def model_files(self, precision: str, fmt: str | tuple[str, ...]) -> list[str]:
        """Relative paths of files with this precision and format(s), in manifest order."""
        formats = (fmt,) if isinstance(fmt, str) else fmt
        return [rel for rel, e in self.files.items() if e.precision == precision and e.format in formats]

    def with_files(self, files: dict[str, FileEntry], build: BuildInfo | None = None) -> EngineManifest:
        """A copy with these files (and build info) replacing the old ones."""
        return replace(self, files=dict(files), build=build if build is not None else self.build)

    def check_normalisation(self, expected: str | tuple[str, ...]) -> None:
        """Refuse an engine trained on stamps made by another recipe than the caller's (or any of the
        callers' recipes, given a tuple)."""
        known = (expected,) if isinstance(expected, str) else tuple(expected)
        if self.normalisation not in known:
            raise EngineCompatibilityError(
                f"engine {self.name} {self.version} expects stamps normalised as "
                f"{self.normalisation!r} but this node makes {' or '.join(map(repr, known))}; use an "
                "engine trained with this astro-edge", where="normalisation")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "input": self.input.to_dict(),
            "outputs": self.outputs.to_dict(),
            "ensemble_size": self.ensemble_size,
            "embedding_dim": self.embedding_dim,
            "normalisation": self.normalisation,
            "scoring": self.scoring.to_dict(),
            "files": {rel: e.to_dict() for rel, e in self.files.items()},
            "training": self.training,
            "evaluation": self.evaluation,
            "golden": self.golden.to_dict() if self.golden else None,
            "build": self.build.to_dict() if self.build else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path | None = None) -> EngineManifest:
        """Parse a manifest dict; unknown format -> EngineCompatibilityError, bad content -> EngineIntegrityError."""
        where = str(directory / MANIFEST_NAME) if directory else "manifest"
        fmt = _require(data, "format", str, where)
        if fmt != MANIFEST_FORMAT:
            raise EngineCompatibilityError(f"manifest format {fmt!r} is not {MANIFEST_FORMAT!r}, the one "
                                           "this astro-edge reads; use a matching astro-edge or rebuild "
                                           "the engine", where=where)
        inp = _require(data, "input", dict, where)
        shape = _require(inp, "shape", list, f"{where}:input")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise _integrity(f"input shape must be integers, got {shape!r}", f"{where}:input")
        outs = _require(data, "outputs", dict, where)
        files = {rel: FileEntry.from_dict(e, f"{where}:files[{rel}]")
                 for rel, e in _require(data, "files", dict, where).items()}
        golden = data.get("golden")
        build = data.get("build")
        classes = _require(data, "classes", list, where)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise _integrity(f"classes must be a non-empty list of names, got {classes!r}", where)
        try:
            scoring = ScoringConstants.from_dict(_require(data, "scoring", dict, where))
        except EngineIntegrityError as exc:
            raise _integrity(str(exc), f"{where}:scoring") from exc
        return cls(
            name=_require(data, "name", str, where),
            version=_require(data, "version", str, where),
            classes=tuple(classes),
            ensemble_size=_require(data, "ensemble_size", int, where),
            embedding_dim=_require(data, "embedding_dim", int, where),
            normalisation=_require(data, "normalisation", str, where),
            scoring=scoring,
            files=files,
            input=InputSpec(name=_require(inp, "name", str, f"{where}:input"), shape=tuple(shape),
                            dtype=_require(inp, "dtype", str, f"{where}:input")),
            outputs=OutputSpec(logits=_require(outs, "logits", str, f"{where}:outputs"),
                               embedding=_require(outs, "embedding", str, f"{where}:outputs")),
            training=_require(data, "training", dict, where),
            evaluation=_require(data, "evaluation", dict, where),
            golden=None if golden is None else GoldenSpec(
                file=_require(golden, "file", str, f"{where}:golden"),
                tolerance=_require(golden, "tolerance", dict, f"{where}:golden")),
            build=None if build is None else BuildInfo(
                backend=_require(build, "backend", str, f"{where}:build"),
                precision=_require(build, "precision", str, f"{where}:build"),
                file=_require(build, "file", str, f"{where}:build"),
                device=_require(build, "device", str, f"{where}:build"),
                tensorrt_version=build.get("tensorrt_version"),
                compute_capability=build.get("compute_capability"),
                figures=build.get("figures", {}),
                cpu_arch=_optional(build, "cpu_arch", str, f"{where}:build"),
                os=_optional(build, "os", str, f"{where}:build"),
                cuda_version=_optional_cuda_version(build, f"{where}:build")),
            directory=directory,
        )


def _safe_relative(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or "\\" in rel:
        raise _integrity(f"file path {rel!r} must be relative and stay inside the engine folder", "manifest")
    return path


def sha256_file(path: Path) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, precision: str, fmt: str, **extra: Any) -> FileEntry:
    """A FileEntry for a file on disk (sha256 and size measured).

    ``extra`` fills the plan fields: tensorrt_version, compute_capability, hardware_compatibility,
    batch_profile, and the platform record (cpu_arch, os, gpu_name, integrated, cuda_version).
    """
    entry = FileEntry(sha256=sha256_file(path), precision=precision, format=fmt,
                      size_bytes=path.stat().st_size, **extra)
    # round-trip through the parser so a bad precision or format fails when written, not when read
    return FileEntry.from_dict(entry.to_dict(), str(path))


def read_manifest(directory: Path | str) -> EngineManifest:
    """Parse ``directory/manifest.json`` without checking the files (see load_manifest)."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise _integrity("no manifest.json; is this an engine folder?", str(directory)) from exc
    except OSError as exc:
        raise _integrity(f"cannot read: {exc}", str(path)) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _integrity(f"not valid JSON ({exc}); the file is truncated or corrupt", str(path)) from exc
    if not isinstance(data, dict):
        raise _integrity("the manifest must be a JSON object", str(path))
    return EngineManifest.from_dict(data, directory=directory)


def load_manifest(directory: Path | str) -> EngineManifest:
    """Read a manifest and verify that every listed file exists with its size and sha256."""
    manifest = read_manifest(directory)
    for rel, entry in manifest.files.items():
        path = manifest.path(rel)
        if not path.is_file():
            raise _integrity(f"listed file {rel!r} is missing; restore the engine folder", str(path))
        if entry.size_bytes is not None and path.stat().st_size != entry.size_bytes:
            raise _integrity(f"size {path.stat().st_size} bytes, manifest says {entry.size_bytes}; "
                             "the file is truncated or replaced", str(path))
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise _integrity(f"sha256 {actual[:12]}... does not match the manifest's "
                             f"{entry.sha256[:12]}...; the file is corrupt or replaced", str(path))
    return manifest


def write_manifest(manifest: EngineManifest, directory: Path | str) -> Path:
    """Write ``directory/manifest.json`` atomically (temporary file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, directory / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / MANIFEST_NAME
