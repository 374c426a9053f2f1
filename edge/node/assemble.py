"""Assembling a node from its config: the calibrator, the engine, the reference catalog and the
pipeline. Files are opened here (the shell), never inside the pipeline's stages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import engines
from edge.config import NodeConfig
from edge.detect import warm_up
from edge.errors import ConfigError, EngineError
from edge.log import get_logger
from edge.pipeline import Pipeline
from edge.sky import ReferenceCatalog
from engines.stamps import warm_up as warm_stamps

log = get_logger(__name__)

#: where the shipped engines live, one folder each (package data of ``engines``)
MODELS_DIR = Path(engines.__file__).resolve().parent / "models"


def default_engine_dir() -> Path:
    """The shipped default engine folder (the only one, or the one named ``default`` by a marker)."""
    marker = MODELS_DIR / "DEFAULT"
    if marker.is_file():
        return MODELS_DIR / marker.read_text(encoding="utf-8").strip()
    folders = sorted(p for p in MODELS_DIR.iterdir() if (p / "manifest.json").is_file()) if MODELS_DIR.is_dir() else []
    if not folders:
        raise EngineError("no shipped engine found; build one with `astro-edge engines train`",
                          where=str(MODELS_DIR))
    return folders[0]


def engine_dir(config: NodeConfig) -> Path:
    """The engine folder the config names, or the shipped default."""
    return Path(config.engine.path) if config.engine.path else default_engine_dir()


def check_engine_runtime(section: Any) -> Any:
    """Probe the engine runtimes of this environment, log them, refuse what they cannot run.

    ``section`` is the ``[engine]`` section. Logs ``engine.runtime`` (the ONNX Runtime version and
    wheel, the execution providers it really offers, the TensorRT device or why there is none) and
    raises EngineCompatibilityError for ``backend = "tensorrt"`` without TensorRT, pycuda and a GPU,
    for a named execution provider the installed ONNX Runtime lacks, or for no ONNX Runtime at all.
    Returns the :class:`engines.runtime.providers.RuntimeReport`.
    """
    from engines.runtime.providers import check_request, probe_runtime

    report = probe_runtime(probe_tensorrt=section.backend in ("auto", "tensorrt"))
    log.info("engine.runtime", backend=section.backend, requested_providers=list(section.providers),
             **report.as_log())
    if report.conflicting:
        log.warning("engine.onnxruntime_conflict", wheels=list(report.distributions),
                    detail="both ONNX Runtime wheels are installed and write the same module; "
                           "keep one (./build.sh setup does)")
    check_request(report, section.backend, section.providers)
    return report


def check_engine_origin(folder: str | Path, section: Any) -> None:
    """With ``[engine] trusted_keys``, refuse (EngineOriginError) an engine not signed by one of them."""
    if section.trusted_keys:
        from engines.signing import check_signature

        signer = check_signature(folder, section.trusted_keys)
        log.info("engine.signature_verified", path=str(folder), signer=signer[:16])


#: stamps per engine call when [engine] batch_size is 0 and the engine has no measured batch: 32
#: on ONNX Runtime's CPU provider (on the 2-core build machine 16 to 32 stamps a call ran the
#: shipped engine 10-15 % faster than 256, docs/benchmarks.md), 256 on a GPU provider
DEFAULT_BATCH_SIZE = 256
DEFAULT_CPU_BATCH_SIZE = 32


def open_engine(path: str | Path, backend: str = "auto", precision: str = "auto", threads: int = 1,
                batch_size: int = 0, providers: tuple[str, ...] = ()) -> Any:
    """Load, verify and activate an engine folder (``providers``: ONNX Runtime's, empty for all;
    ``batch_size`` 0: the batch its build record measured best for this backend)."""
    from engines.runtime import load_engine

    engine = load_engine(path, backend=backend, precision=precision, threads=threads,
                         providers=list(providers) or None)
    engine.activate()
    if engine.max_batch is None:
        measured = measured_batch(engine.manifest, engine.backend)
        on_cpu = list(getattr(engine, "providers", [])) == ["CPUExecutionProvider"]
        engine.max_batch = batch_size or measured or (DEFAULT_CPU_BATCH_SIZE if on_cpu else DEFAULT_BATCH_SIZE)
        log.info("engine.batch", batch_size=engine.max_batch,
                 source="config" if batch_size else "build" if measured else "default")
    return engine


def measured_batch(manifest: Any, backend: str) -> int | None:
    """The batch ``engines build`` measured best, when its build record is for this backend."""
    build = manifest.build
    if build is None or build.backend != backend:
        return None
    batch = build.figures.get("batch")
    return int(batch) if isinstance(batch, int) and batch >= 1 else None


def verify_engine(path: str | Path, sha256: str, section: Any) -> str:
    """Check an engine folder before a hot swap; returns its engine id or raises a typed error.

    In order: the folder's manifest.json has this sha256; the manifest and every file it lists
    verify; its stamps are the node's; a backend of this device can run it (TensorRT version and
    compute capability included); on its golden stamps every model file runnable here reproduces
    the manifest's outputs within tolerance.
    """
    from edge.errors import EngineCompatibilityError, EngineIntegrityError
    from engines.check import check_engine
    from engines.manifest import load_manifest, sha256_file
    from engines.runtime import load_engine
    from engines.stamps import RECIPES, STAMP_SIZE

    folder = Path(path)
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        raise EngineIntegrityError("no manifest.json here", where=str(folder))
    actual = sha256_file(manifest_file)
    if actual != sha256.strip().lower():
        raise EngineIntegrityError(f"manifest.json has sha256 {actual}, not the {sha256} given", where=str(folder))
    check_engine_origin(folder, section)
    manifest = load_manifest(folder)
    manifest.check_normalisation(tuple(RECIPES))
    channels = RECIPES[manifest.normalisation]
    if tuple(manifest.input.shape[1:]) != (channels, STAMP_SIZE, STAMP_SIZE):
        raise EngineCompatibilityError(f"the engine takes stamps of shape {list(manifest.input.shape)}; this "
                                       f"node cuts [-1, {channels}, {STAMP_SIZE}, {STAMP_SIZE}] for the "
                                       f"recipe {manifest.normalisation!r}", where=str(folder))
    engine = load_engine(folder, backend=section.backend, precision=section.precision, threads=section.threads,
                         providers=list(section.providers) or None)
    failed = [r for r in check_engine(folder, threads=section.threads) if r.skipped is None and not r.passed]
    if failed:
        names = ", ".join(f"{r.file} ({r.backend} {r.precision})" for r in failed)
        raise EngineIntegrityError(f"self-test on the golden stamps failed for {names}", where=str(folder))
    return str(engine.engine_id)


def open_calibrator(bundle: str | Path | None, threads: int = 1) -> Any:
    """A Calibrator from a bundle, or the header/estimated noise model without one."""
    from calibration import Calibrator

    if bundle:
        return Calibrator.from_bundle(bundle, threads=threads)
    return Calibrator.without_bundle(threads=threads)


def build_pipeline(config: NodeConfig, bundle_override: str | None = None) -> Pipeline:
    """Every part of the pipeline, opened and checked; raises a typed error naming what failed."""
    catalog = ReferenceCatalog.load(config.catalog.reference) if config.catalog.reference else None
    calibrator = open_calibrator(bundle_override if bundle_override is not None else config.calibration.bundle,
                                 config.calibration.threads)
    path = engine_dir(config)
    if not path.is_dir():
        raise ConfigError(f"engine folder {path} does not exist", where="engine.path")
    engine = open_engine(path, config.engine.backend, config.engine.precision, config.engine.threads,
                         config.engine.batch_size, config.engine.providers)
    # numba compiles its loops on first use (or loads them from its cache): here, before the
    # worker says it is ready, not on the first frame (whose deadline would pay for it)
    start = time.perf_counter()
    warm_stamps(engine.manifest.normalisation)
    log.info("stamps.warmed", recipe=engine.manifest.normalisation, seconds=round(time.perf_counter() - start, 2))
    if config.detect.backend == "fast":
        start = time.perf_counter()
        found = warm_up(config.detect)
        log.info("detect.warmed", backend="fast", seconds=round(time.perf_counter() - start, 2),
                 candidates=found)
    return Pipeline(node_id=config.node.id, calibrator=calibrator, engine=engine,
                    detect_settings=config.detect, policy=config.triage, catalog=catalog,
                    min_match_radius_arcsec=config.catalog.min_match_radius_arcsec,
                    seed=config.node.seed, use_header_wcs=config.catalog.use_header_wcs,
                    min_match_radius_px=config.catalog.min_match_radius_px,
                    min_new_snr=config.catalog.min_new_snr,
                    register_max_shift_px=config.catalog.register_max_shift_px)
