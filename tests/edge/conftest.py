"""Fixtures for the node's tests: a tiny real ONNX engine, small twin frames, a node config, a ground."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.pipeline import FrameInput
from edge.testing import Ground


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A context whose term() in teardown hangs (and times out) if a test leaks a socket."""
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny engine folder (real ONNX, verified manifest, meaningless labels)."""
    from engines.testing import write_tiny_engine

    return write_tiny_engine(tmp_path_factory.mktemp("tiny-engine"))


@pytest.fixture(scope="session")
def small_twin() -> Any:
    """A 384x384 twin config with every anomaly family and two transients."""
    from twin import ANOMALY_FAMILIES, DetectorModel, TwinConfig

    return dataclasses.replace(TwinConfig(detector=DetectorModel(shape_px=(384, 384))),
                               n_stars=120, n_galaxies=20, anomalies=tuple(ANOMALY_FAMILIES),
                               n_anomalies_per_family=1, n_transients=2)


def frame_input(twin_frame: Any, seq: int | None = None, series_id: str = "1") -> FrameInput:
    """A twin frame as the pipeline receives it."""
    header = {k: twin_frame.header[k] for k in twin_frame.header if k not in ("COMMENT", "HISTORY", "")}
    return FrameInput(detector_id="twin-cam", series_id=series_id,
                      seq=twin_frame.index if seq is None else seq,
                      frame_time="2026-03-20T03:00:00.000000Z", exposure_s=float(header["EXPTIME"]),
                      pixels=twin_frame.raw_adu, header=header, filter_name=str(header.get("FILTER")))


@pytest.fixture
def node_config_factory(tmp_path: Path, tiny_engine: Path):
    """Build a node config whose files live in tmp_path; keyword tables override sections."""
    from edge.config import config_from_mapping

    def make(**sections: dict[str, Any]) -> Any:
        data: dict[str, dict[str, Any]] = {
            "node": {"id": "test-node", "workers": 1},
            "receive": {"address": "tcp://127.0.0.1:0"},
            "engine": {"path": str(tiny_engine)},
            "spool": {"path": str(tmp_path / "spool.sqlite")},
            "log": {"level": "warning"},
        }
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return config_from_mapping(data)

    return make


@pytest.fixture
def ground(tmp_path: Path) -> Iterator[Ground]:
    """A ground station on loopback, serving in a thread, writing under tmp_path/ground."""
    with Ground(tmp_path / "ground") as g:
        yield g


def stop_node(proc: Any, timeout_s: float = 60.0) -> int:
    """SIGTERM a node process (it finishes and spools the accepted frames) and wait: its exit code."""
    import signal

    proc.send_signal(signal.SIGTERM)
    return int(proc.wait(timeout_s))


def kill_if_running(proc: Any) -> None:
    """A node process a test started and that still runs (the test failed before stopping it):
    kill it and reap it, so no process outlives its test."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_node_toml(folder: Path, node_id: str, engine: Path, ground_address: str, extra: str = "") -> tuple[Path, int]:
    """A one-worker node config for `astro-edge run` in a subprocess: frames on a free loopback
    port (block policy), the tiny engine, a spool in ``folder``, records to ``ground_address``;
    ``extra`` is appended TOML. Returns the file and the frame port."""
    port = free_port()
    config = folder / "node.toml"
    config.write_text(
        f'[node]\nid = "{node_id}"\nworkers = 1\n'
        f'[receive]\naddress = "tcp://127.0.0.1:{port}"\nqueue_policy = "block"\nqueue_frames = 2\n'
        f'[engine]\npath = "{engine}"\n'
        f'[spool]\npath = "{folder / "spool.sqlite"}"\n'
        f'[downlink]\naddress = "{ground_address}"\nack_timeout_s = 1.0\n' + extra)
    return config, port
