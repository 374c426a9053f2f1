"""``astro-edge alerts export`` on a folder a real ground wrote, and ``alerts show``: one packet per
record, cut-outs astropy opens, filters, and every line it cannot use counted and reported."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
import zmq
from astropy.io import fits

from edge.alerts import read_alerts
from edge.cli import main
from edge.codec import read_jsonl, to_json_line
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.records import DownlinkRecord
from edge.testing import Ground

pytestmark = pytest.mark.timeout(120)


def events(err: str) -> list[dict[str, Any]]:
    """The JSON log lines a command wrote to stderr."""
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.fixture
def ground_dir(pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path, ctx: zmq.Context[Any]) -> Path:
    """A folder written by a real ground receiver, fed over loopback by the node's spool and downlink."""
    out = tmp_path / "ground"
    with Ground(out) as ground, Spool(tmp_path / "spool.sqlite") as spool, \
            Downlink(spool, ground.address, context=ctx, budget_bytes_per_s=50_000_000) as downlink:
        spool.put(list(pipeline_records))
        assert downlink.drain(timeout_s=30), "the ground did not acknowledge every record"
    return out


def test_export_writes_one_packet_per_record_the_ground_stored(
        ground_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every record of the ground's downlink.jsonl becomes one packet that plain fastavro reads, with
    the ground's received time, a science cut-out astropy opens, and the record itself read back."""
    stored = read_jsonl(ground_dir / "downlink.jsonl")
    out = tmp_path / "alerts.avro"
    assert main(["--log-json", "alerts", "export", str(ground_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    n = len(stored.messages)
    assert n > 20
    assert f"{n} alerts, {out.stat().st_size} bytes written" in captured.out
    assert "refused" not in captured.out
    with out.open("rb") as fh:
        packets = list(fastavro.reader(fh))
    assert [p["recordId"] for p in packets] == [m.record_id for m in stored.messages]
    assert [p["provenance"]["receivedTime"] for p in packets] == list(stored.received_times)
    assert all(t is not None for t in stored.received_times)
    for packet, record in zip(packets, stored.messages, strict=True):
        assert isinstance(record, DownlinkRecord) and record.stamp is not None
        with fits.open(io.BytesIO(gzip.decompress(packet["cutoutScience"]["stampData"]))) as hdus:
            np.testing.assert_array_equal(hdus[0].data, record.stamp.decompress()[0])
            assert hdus[0].header["CANDID"] == packet["candid"]
    assert read_alerts(out) == list(stored.messages)
    [exported] = [e for e in events(captured.err) if e["event"] == "alerts.exported"]
    assert exported["alerts"] == n and exported["bytes"] == out.stat().st_size and exported["refused"] == 0


def test_lines_that_cannot_become_alerts_are_counted_and_reported(
        pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line cut short, a later record version and a record without a UTC frame time are each
    counted by reason, printed and logged; the good records are all exported."""
    folder = tmp_path / "ground"
    folder.mkdir()
    good = pipeline_records[:5]
    lines = [to_json_line(r, received_time="2026-03-20T03:00:05.000000Z") for r in good]
    lines.insert(2, lines[0][:80])
    later = json.loads(to_json_line(pipeline_records[5]))
    later["version"] = 2
    lines.insert(4, json.dumps(later))
    lines.append(to_json_line(dataclasses.replace(pipeline_records[6], frame_time="20 March 2026")))
    (folder / "downlink.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "alerts.avro"
    assert main(["--log-json", "alerts", "export", str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "5 alerts" in captured.out
    assert "3 lines" in captured.out and "refused (frame_time 1, record_decode 1, record_version 1)" in captured.out
    assert [r.record_id for r in read_alerts(out)] == [r.record_id for r in good]
    logged = events(captured.err)
    [exported] = [e for e in logged if e["event"] == "alerts.exported"]
    assert exported["refused"] == 3
    assert exported["refused_by_reason"] == {"record_decode": 1, "record_version": 1, "frame_time": 1}
    [refused] = [e for e in logged if e["event"] == "alerts.record_refused"]
    assert refused["record_id"] == pipeline_records[6].record_id and refused["reason"] == "frame_time"


def test_since_and_reason_choose_the_records(pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--since keeps the records received at or after the time, --reason those sent for that reason."""
    folder = tmp_path / "ground"
    folder.mkdir()
    times = [f"2026-03-20T03:{i // 60:02d}:{i % 60:02d}.000000Z" for i in range(len(pipeline_records))]
    (folder / "downlink.jsonl").write_text(
        "".join(to_json_line(r, received_time=t) + "\n" for r, t in zip(pipeline_records, times, strict=True)))
    out = tmp_path / "alerts.avro"
    assert main(["alerts", "export", str(folder), "--out", str(out), "--since", "2026-03-20T03:00:10Z"]) == 0
    assert [r.record_id for r in read_alerts(out)] == [r.record_id for r in pipeline_records[10:]]
    assert main(["alerts", "export", str(folder), "--out", str(out), "--reason", "unusual"]) == 0
    unusual = [r.record_id for r in pipeline_records if "unusual" in r.reasons]
    assert 0 < len(unusual) < len(pipeline_records)
    assert [r.record_id for r in read_alerts(out)] == unusual
    assert main(["alerts", "export", str(folder), "--out", str(out), "--reason", "unusual",
                 "--since", "2026-03-20T04:00:00+01:00"]) == 0  # 03:00 UTC: every record
    assert [r.record_id for r in read_alerts(out)] == unusual
    capsys.readouterr()


def test_show_prints_packets_readably(pipeline_records: tuple[DownlinkRecord, ...], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """show --n 2 prints the first two packets (id, time, position, class, reasons, cut-outs) and
    how many the file holds."""
    from edge.alerts import alert_id, write_alerts

    path = tmp_path / "alerts.avro"
    write_alerts(pipeline_records, path)
    capsys.readouterr()
    assert main(["alerts", "show", str(path), "--n", "2"]) == 0
    out = capsys.readouterr().out
    first = pipeline_records[0]
    assert f"candid {alert_id(first.record_id)}  record {first.record_id}" in out
    assert out.count("candid ") == 2
    assert f"{first.label} ({first.confidence:.3f})" in out and "MJD 61119.125000" in out
    assert f"reasons {','.join(first.reasons)}" in out and "cutouts science" in out
    assert f"2 of {len(pipeline_records)} alerts" in out


def test_export_without_a_ground_folder_or_with_a_bad_time_says_what_is_wrong(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with no downlink.jsonl, or a --since that is not a time, exits 2 with one line saying so."""
    assert main(["alerts", "export", str(tmp_path), "--out", str(tmp_path / "a.avro")]) == 2
    assert "downlink.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "downlink.jsonl").write_text("")
    assert main(["alerts", "export", str(tmp_path), "--out", str(tmp_path / "a.avro"), "--since", "soon"]) == 2
    assert "--since 'soon' is not an ISO 8601 time" in capsys.readouterr().err
    assert not (tmp_path / "a.avro").exists()
