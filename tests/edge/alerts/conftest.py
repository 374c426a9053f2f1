"""Fixtures for the alert tests: records the project's own pipeline makes from a twin frame, and
the real ZTF packets."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.records import DownlinkRecord

from ..conftest import frame_input


@pytest.fixture(scope="session")
def ztf_alerts(real_data: Path) -> Path:
    """The folder of the two real ZTF alert packets and their cut-outs (tests/data/real/README.md)."""
    return real_data / "ztf-alerts"


@pytest.fixture(scope="session")
def pipeline_records(tiny_engine: Path, small_twin: object,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[DownlinkRecord, ...]:
    """The records the node's pipeline sends down for two twin frames (tiny engine, spool in a
    temporary folder): real stamps, sky positions, blends measured or not."""
    from edge.config import config_from_mapping
    from edge.node.assemble import build_pipeline
    from twin import simulate_frame

    folder = tmp_path_factory.mktemp("alert-node")
    config = config_from_mapping({
        "node": {"id": "alert-node", "workers": 1},
        "receive": {"address": "tcp://127.0.0.1:0"},
        "engine": {"path": str(tiny_engine)},
        "spool": {"path": str(folder / "spool.sqlite")},
        "log": {"level": "warning"},
    })
    pipeline = build_pipeline(config)
    records: list[DownlinkRecord] = []
    for index in (0, 1):
        records += pipeline.process(frame_input(simulate_frame(small_twin, index, 3))).records
    return tuple(records)
