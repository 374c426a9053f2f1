"""Alert files: the pipeline's records through an Avro container and back exactly, read by plain
fastavro, and files that are not ours or are damaged refused with typed errors."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import fastavro
import pytest
from structlog.testing import capture_logs

from edge.alerts import CODEC, read_alerts, read_packets, schema_file, to_alert, write_alerts
from edge.errors import RecordDecodeError, RecordFieldError, RecordVersionError
from edge.records import DownlinkRecord


def test_the_pipelines_records_read_back_exactly(pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path) -> None:
    """Records the node made from twin frames, written with write_alerts and read with read_alerts,
    are equal one by one and in order, every float with the same bits."""
    path = tmp_path / "alerts.avro"
    with capture_logs() as logs:
        assert write_alerts(pipeline_records, path) == len(pipeline_records)
    back = read_alerts(path)
    assert back == list(pipeline_records)
    for got, want in zip(back, pipeline_records, strict=True):
        for name in ("x", "y", "ra", "dec", "entropy", "anomaly_pvalue", "flux_e", "blend_lr"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is b is None) or struct.pack("<d", a) == struct.pack("<d", b)
        assert got.stamp == want.stamp
    [written] = [e for e in logs if e["event"] == "alerts.written"]
    assert written["alerts"] == len(pipeline_records) and written["bytes"] == path.stat().st_size
    assert not list(tmp_path.glob("*.part"))


def test_plain_fastavro_reads_the_file_with_its_own_schema(pipeline_records: tuple[DownlinkRecord, ...],
                                                          tmp_path: Path) -> None:
    """A broker's fastavro, with no schema of its own, reads one packet per record from the file's
    writer schema, deflate-compressed, ids and received times as written."""
    path = tmp_path / "alerts.avro"
    received = {r.record_id: "2026-03-20T03:00:07.250000Z" for r in pipeline_records[::2]}
    write_alerts(pipeline_records, path, received_times=received)
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        packets = list(reader)
        assert reader.codec == CODEC == "deflate"
        assert reader.writer_schema["name"] == "astro_edge.alert"
    assert [p["recordId"] for p in packets] == [r.record_id for r in pipeline_records]
    assert [p["provenance"]["receivedTime"] for p in packets] == [received.get(r.record_id) for r in pipeline_records]
    assert all(p["schemavsn"] == "1.0" and p["publisher"] == "astro-edge" for p in packets)


def test_no_records_make_an_empty_file_that_reads(tmp_path: Path) -> None:
    """Nothing to export still writes a valid Avro file, which reads as no records."""
    path = tmp_path / "none.avro"
    assert write_alerts([], path) == 0
    assert read_alerts(path) == []


def test_a_file_that_is_not_avro_is_a_decode_error(tmp_path: Path) -> None:
    """A JSON-lines file given as alerts raises RecordDecodeError naming the file."""
    path = tmp_path / "downlink.jsonl"
    path.write_text('{"kind":"record"}\n')
    with pytest.raises(RecordDecodeError, match="downlink.jsonl"):
        read_alerts(path)


def test_ztf_packets_are_not_taken_for_ours(ztf_alerts: Path) -> None:
    """A real ZTF alert file is refused with RecordVersionError naming its schema, not misread."""
    with pytest.raises(RecordVersionError, match="ztf.alert"):
        list(read_packets(ztf_alerts / "472263571115115000.avro"))


def test_a_truncated_file_is_a_decode_error(pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path) -> None:
    """A file cut in the middle of its data raises RecordDecodeError, not a fastavro or zlib error."""
    path = tmp_path / "alerts.avro"
    write_alerts(pipeline_records, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordDecodeError, match="damaged"):
        read_alerts(path)


def test_a_failed_write_leaves_the_previous_file_whole(pipeline_records: tuple[DownlinkRecord, ...],
                                                      tmp_path: Path) -> None:
    """When a record cannot become a packet mid-way, the file written before stays as it was and no
    partial file is left."""
    path = tmp_path / "alerts.avro"
    write_alerts(pipeline_records[:3], path)
    before = path.read_bytes()
    bad = dataclasses.replace(pipeline_records[3], frame_time="not a time")
    with pytest.raises(RecordFieldError):
        write_alerts([*pipeline_records[:3], bad], path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.part"))


def schema_variant(version: str | None, extra: dict | None = None) -> dict:
    """The shipped schema with another version attribute (None: none) and an extra top-level field."""
    raw = json.loads(schema_file())
    if version is None:
        raw.pop("version")
    else:
        raw["version"] = version
    if extra is not None:
        raw["fields"].append(extra)
    return raw


def test_a_later_minor_version_reads_and_another_major_is_refused(
        pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path) -> None:
    """A 1.1 file with a field this reader does not know, and a file whose schema lost its version
    attribute, read as the same records; a 2.0 file, or one whose packets do not resolve to this
    schema, is refused with RecordVersionError."""
    packets = [to_alert(r) for r in pipeline_records[:4]]
    later = tmp_path / "later.avro"
    added = {"name": "brokerNote", "type": ["null", "string"], "default": None, "doc": "added in 1.1"}
    with later.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema_variant("1.1", added)),
                        [{**p, "schemavsn": "1.1", "brokerNote": "seen"} for p in packets])
    assert read_alerts(later) == list(pipeline_records[:4])
    major = tmp_path / "major.avro"
    with major.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema_variant("2.0")), packets)
    with pytest.raises(RecordVersionError, match="2.0"):
        read_alerts(major)
    unversioned = tmp_path / "unversioned.avro"
    with unversioned.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema_variant(None)), packets)
    assert read_alerts(unversioned) == list(pipeline_records[:4])
    short_file = tmp_path / "short.avro"
    short = schema_variant(None)
    short["fields"] = [f for f in short["fields"] if f["name"] != "candidate"]
    with short_file.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(short), [{k: v for k, v in p.items() if k != "candidate"}
                                                           for p in packets])
    with pytest.raises(RecordVersionError, match="do not resolve"):
        read_alerts(short_file)
