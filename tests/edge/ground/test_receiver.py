"""The ground receiver: JSON lines and daily FITS tables, acks after fsync, duplicates, malformed input, the CLI."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from astropy.table import Table
from structlog.testing import capture_logs

from edge.codec import encode_msgpack, read_jsonl, to_dict, to_json_line
from edge.errors import TransportError
from edge.ground.receiver import FITS_PATTERN, GroundReceiver, fits_day
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.link.wire import DATA, TAG, ZDATA, decode_ack
from edge.records import DownlinkRecord, FrameSummary, record_id

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[3]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def ntt_records(real_data: Path, frame: int = 7) -> list[DownlinkRecord]:
    """One record per object of SExtractor's catalog of the real NTT frame (0-based positions)."""
    cat = np.loadtxt(real_data / "sep-ntt" / "image.cat", comments="#")
    out = []
    for i, row in enumerate(cat):
        flux, err = float(row[15]), float(row[16])
        out.append(DownlinkRecord(
            record_id=record_id("ntt", "s1", frame, i), node_id="ntt", detector_id="emmi-red",
            series_id="s1", frame=frame, index=i, frame_time="1992-06-01T03:04:05.000000Z",
            processed_time="2026-11-28T10:00:00.000000Z", x=float(row[1] - 1), y=float(row[2] - 1),
            x_err=math.sqrt(row[8]), y_err=math.sqrt(row[9]), ra=None, dec=None, label="galaxy",
            confidence=0.7, probs={"star": 0.3, "galaxy": 0.7}, entropy=0.61, aleatoric=0.5,
            epistemic=0.11, anomaly_score=1.0, anomaly_pvalue=0.3, snr=flux / err if err > 0 else 0.0,
            flux_e=flux,
            flux_err_e=err, a_px=float(row[11]), b_px=1.0, theta_rad=0.0, flags=int(row[20]),
            new=i % 2 == 0, reasons=("uncertain", "new") if i % 2 == 0 else ("uncertain",),
            priority=1.0, policy_version=3, engine_id="cnn-1", calibration_id="none:header"))
    return out


def summary(frame: int) -> FrameSummary:
    return FrameSummary(node_id="ntt", detector_id="emmi-red", series_id="s1", frame=frame,
                        frame_time="1992-06-01T03:04:05Z", detections=65, by_class={"galaxy": 65},
                        sent_by_reason={"uncertain": 65}, sent=65, suppressed=0, dropped_frames=(6,),
                        noise_model="header", timings_ms={"detect": 4.0}, engine_id="cnn-1",
                        policy_version=3)


@pytest.fixture
def ground(tmp_path: Path, ctx: zmq.Context[Any]) -> Iterator[GroundReceiver]:
    with GroundReceiver("tcp://127.0.0.1:*", tmp_path / "out", context=ctx, fits_interval_s=0) as g:
        yield g


@pytest.fixture
def node(ctx: zmq.Context[Any], ground: GroundReceiver) -> Iterator[zmq.Socket[Any]]:
    """A bare DEALER connected to the ground, standing in for the node."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ground.address)
    yield sock
    sock.close()


def exchange(ground: GroundReceiver, node: zmq.Socket[Any], messages: list[list[bytes]]) -> list[str]:
    """Send raw messages, let the ground handle them, and return every id acked, in order."""
    for parts in messages:
        node.send_multipart(parts)
    handled = 0
    end = time.monotonic() + 5
    while handled < len(messages) and time.monotonic() < end:
        handled += ground.poll(20)
    acked: list[str] = []
    while node.poll(300):
        acked += decode_ack(node.recv_multipart())
    return acked


def data(msg: DownlinkRecord | FrameSummary) -> list[bytes]:
    return [TAG, DATA, encode_msgpack(msg)]


def _send(ctx: zmq.Context[Any], g: GroundReceiver, recs: list[DownlinkRecord]) -> list[str]:
    """Send records from a fresh DEALER, let the ground handle them, return the ids acked."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(g.address)
    try:
        return exchange(g, sock, [data(r) for r in recs])
    finally:
        sock.close()


def _store(ctx: zmq.Context[Any], out: Path, recs: list[DownlinkRecord]) -> None:
    """Run a ground on ``out`` just long enough to store ``recs``."""
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0) as g:
        _send(ctx, g, recs)


def test_records_land_in_json_lines_and_a_fits_table(real_data: Path, ground: GroundReceiver,
                                                     node: zmq.Socket[Any]) -> None:
    """Each record becomes one JSON line with received_time and one FITS row with its units; summaries go to frames.jsonl."""
    recs = ntt_records(real_data)
    acked = exchange(ground, node, [data(r) for r in recs] + [data(summary(7))])
    assert acked == [r.record_id for r in recs] + ["ntt:s1:7:summary"]
    out = ground.out_dir
    read = read_jsonl(out / "downlink.jsonl")
    assert read.messages == tuple(recs) and all(t and t.endswith("Z") for t in read.received_times)
    assert read_jsonl(out / "frames.jsonl").messages == (summary(7),)
    [path] = ground.write_fits()
    assert path.name == FITS_PATTERN.format(day=fits_day(read.received_times[0]))
    table = Table.read(path)
    cat = np.loadtxt(real_data / "sep-ntt" / "image.cat", comments="#")
    assert len(table) == len(cat) == 65
    np.testing.assert_allclose(table["x"], cat[:, 1] - 1)
    np.testing.assert_allclose(table["y"], cat[:, 2] - 1)
    np.testing.assert_allclose(table["flux_e"], cat[:, 15])
    # no WCS: NaN in the file, which astropy reads back as masked
    assert np.ma.getmaskarray(table["ra"]).all() and str(table["ra"].unit) == "deg" and str(table["x"].unit) == "pix"
    assert json.loads(table["probs"][0]) == {"star": 0.3, "galaxy": 0.7}
    assert list(table["reasons"][:2]) == ["uncertain,new", "uncertain"]
    assert list(table["received_time"]) == list(read.received_times)


def test_duplicates_are_dropped_by_id_but_acknowledged(real_data: Path, ground: GroundReceiver,
                                                       node: zmq.Socket[Any]) -> None:
    """A record sent twice is written once, counted as a duplicate, and acked both times."""
    rec = ntt_records(real_data)[0]
    assert exchange(ground, node, [data(rec)]) == [rec.record_id]
    assert exchange(ground, node, [data(rec)]) == [rec.record_id]
    assert len((ground.out_dir / "downlink.jsonl").read_text().splitlines()) == 1
    c = ground.counters()
    assert c.records == 1 and c.duplicates == 1 and c.received == 2


def test_malformed_messages_are_counted_logged_and_not_acknowledged(
        real_data: Path, ground: GroundReceiver, node: zmq.Socket[Any]) -> None:
    """Wrong parts, non-msgpack bytes, a later version and a bad field each count under their reason; good ones still pass."""
    rec = ntt_records(real_data)[0]
    later = {**to_dict(rec), "version": 2}
    bad_field = {**to_dict(rec), "snr": "high"}
    junk = [[b"just one part"], [TAG, b"nonsense", b"x"], [TAG, DATA, b"\xc1\xc1"],
            [TAG, DATA, msgpack.packb(later)], [TAG, DATA, msgpack.packb(bad_field)]]
    with capture_logs() as logs:
        acked = exchange(ground, node, [*junk, data(rec)])
    assert acked == [rec.record_id]
    c = ground.counters()
    assert c.malformed == {"record_decode": 3, "record_version": 1, "record_field": 1}
    assert c.records == 1
    events = [e for e in logs if e["event"] == "ground.malformed"]
    assert len(events) == 5 and all(e["log_level"] == "warning" for e in events)


def test_compressed_payloads_it_cannot_read_are_refused_and_not_acknowledged(
        real_data: Path, ground: GroundReceiver, node: zmq.Socket[Any]) -> None:
    """A zdata payload that is not zstd, uses an unknown dictionary, hides its size, or claims more
    than a message may hold is a record_decode error; a good one (and plain data) still passes."""
    import zstandard

    from edge.link.zdict import MAX_MESSAGE_BYTES, compressor

    rec, other = ntt_records(real_data)[:2]
    plain = encode_msgpack(rec)
    foreign = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(
        zstandard.train_dictionary(1024, [plain + bytes([i]) * 40 for i in range(64)], dict_id=0x12345678).as_bytes()))
    sizeless = zstandard.ZstdCompressor(write_content_size=False).compress(plain)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (MAX_MESSAGE_BYTES + 1))
    junk = [[TAG, ZDATA, b"not zstd at all"], [TAG, ZDATA, foreign.compress(plain)], [TAG, ZDATA, sizeless],
            [TAG, ZDATA, bomb], [TAG, ZDATA, compressor("zstd-dict-1")(plain)[:-6]]]
    with capture_logs() as logs:
        acked = exchange(ground, node, [*junk, [TAG, ZDATA, compressor("zstd-dict-1")(plain)], data(other)])
    assert acked == [rec.record_id, other.record_id]
    assert ground.counters().malformed == {"record_decode": 5}
    assert read_jsonl(ground.out_dir / "downlink.jsonl").messages == (rec, other)
    reasons = [e["error"] for e in logs if e["event"] == "ground.malformed"]
    assert any("not a zstd frame" in r for r in reasons) and any("dictionary id 0x12345678" in r for r in reasons)


def test_a_dictionary_trained_from_a_ground_folder_compresses_what_it_saw(real_data: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """`astro-edge link dictionary` trains a dictionary with the asked id from a ground's JSON lines;
    it beats plain zstd on those messages, and training the same folder again gives the same bytes."""
    import zstandard

    from edge.cli import main

    out = tmp_path / "ground"
    out.mkdir()
    recs = ntt_records(real_data)
    (out / "downlink.jsonl").write_text("".join(to_json_line(r) + "\n" for r in recs))
    (out / "frames.jsonl").write_text("".join(to_json_line(summary(f)) + "\n" for f in range(5)))
    assert main(["link", "dictionary", str(out), "--out", str(tmp_path / "a.zdict"), "--dict-id", "0x41459999"]) == 0
    assert "70 messages" in capsys.readouterr().out
    assert main(["link", "dictionary", str(out), "--out", str(tmp_path / "b.zdict"), "--dict-id", "0x41459999"]) == 0
    data = (tmp_path / "a.zdict").read_bytes()
    assert data == (tmp_path / "b.zdict").read_bytes()
    zdict = zstandard.ZstdCompressionDict(data)
    assert zdict.dict_id() == 0x41459999
    plain = [encode_msgpack(r) for r in recs]
    with_dict = zstandard.ZstdCompressor(dict_data=zdict)
    assert sum(len(with_dict.compress(p)) for p in plain) < 0.6 * sum(map(len, plain))


def test_a_restarted_ground_still_drops_duplicates(real_data: Path, tmp_path: Path,
                                                   ctx: zmq.Context[Any]) -> None:
    """Ids already in the output folder count as seen after a restart, so a re-sent record is not written twice."""
    recs = ntt_records(real_data)[:3]
    for round_ in range(2):
        with GroundReceiver("tcp://127.0.0.1:*", tmp_path / "out", context=ctx) as g:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(g.address)
            try:
                assert exchange(g, sock, [data(r) for r in recs]) == [r.record_id for r in recs]
            finally:
                sock.close()
            assert g.counters().duplicates == (3 if round_ else 0)
    assert len(read_jsonl(tmp_path / "out" / "downlink.jsonl").messages) == 3


class UtcNow:
    """A UTC clock the test sets by hand (ISO 8601 with Z)."""

    def __init__(self, day: str) -> None:
        self.day = day

    def __call__(self) -> str:
        return f"{self.day}T12:00:00.000000Z"


def test_fits_table_is_rewritten_periodically(real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """With fits_interval_s set, the day's FITS table follows the JSON lines once the interval has passed."""
    clock = Clock()
    recs = ntt_records(real_data)
    fits_file = tmp_path / "out" / "downlink-20261129.fits"
    with GroundReceiver("tcp://127.0.0.1:*", tmp_path / "out", context=ctx, fits_interval_s=10,
                        clock=clock, utc_now=UtcNow("2026-11-29")) as g:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(g.address)
        try:
            exchange(g, sock, [data(r) for r in recs[:5]])
            assert not fits_file.exists()
            clock.t += 10
            g.poll(0)
            assert len(Table.read(fits_file)) == 5
            exchange(g, sock, [data(r) for r in recs[5:9]])
            assert len(Table.read(fits_file)) == 5
            clock.t += 10
            g.poll(0)
            assert len(Table.read(fits_file)) == 9 and g.counters().fits_writes == 2
            clock.t += 10
            g.poll(0)
            assert g.counters().fits_writes == 2, "nothing new: the file is not written again"
        finally:
            sock.close()


def test_each_utc_day_has_its_own_fits_table(real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """Records go to the table of the day they arrive; after midnight the finished day is written
    once more and then left alone, and the new day's table holds only the new day's records."""
    clock, utc = Clock(), UtcNow("2026-11-29")
    recs = ntt_records(real_data)
    out = tmp_path / "out"
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=10, clock=clock,
                        utc_now=utc) as g:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(g.address)
        try:
            exchange(g, sock, [data(r) for r in recs[:6]])
            clock.t += 10
            g.poll(0)
            exchange(g, sock, [data(r) for r in recs[6:10]])
            utc.day = "2026-11-30"
            exchange(g, sock, [data(r) for r in recs[10:13]])
            clock.t += 10
            g.poll(0)
            assert g.counters().fits_writes == 3
            first = Table.read(out / "downlink-20261129.fits")
            second = Table.read(out / "downlink-20261130.fits")
            assert list(first["record_id"]) == [r.record_id for r in recs[:10]]
            assert list(second["record_id"]) == [r.record_id for r in recs[10:13]]
            before = (out / "downlink-20261129.fits").stat().st_mtime_ns
            exchange(g, sock, [data(r) for r in recs[13:15]])
            clock.t += 10
            g.poll(0)
            assert (out / "downlink-20261129.fits").stat().st_mtime_ns == before
            assert len(Table.read(out / "downlink-20261130.fits")) == 5
        finally:
            sock.close()
    assert sorted(p.name for p in out.glob("downlink-*.fits")) == ["downlink-20261129.fits", "downlink-20261130.fits"]


def test_a_restarted_ground_rebuilds_a_day_table_the_crash_left_behind(
        real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """A day whose FITS table lacks rows the JSON lines hold (the ground died between a batch and
    the next rewrite) is rebuilt at the next start; a complete day is not touched, and ids of
    both days still count as seen."""
    recs = ntt_records(real_data)
    out = tmp_path / "out"
    utc = UtcNow("2026-11-29")
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0, utc_now=utc) as g:
        _send(ctx, g, recs[:8])
        utc.day = "2026-11-30"
        _send(ctx, g, recs[8:20])
    complete = out / "downlink-20261129.fits"
    stamp = complete.stat().st_mtime_ns
    crashed = out / "downlink-20261130.fits"
    Table.read(crashed)[:5].write(crashed, overwrite=True)   # the rewrite before the crash saw 5
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0,
                        utc_now=UtcNow("2026-12-01")) as g:
        assert _send(ctx, g, [recs[3], recs[15]]) == [recs[3].record_id, recs[15].record_id]
        assert g.counters().duplicates == 2 and g.counters().records == 0
    assert list(Table.read(crashed)["record_id"]) == [r.record_id for r in recs[8:20]]
    assert complete.stat().st_mtime_ns == stamp
    assert not (out / "downlink-20261201.fits").exists()


def test_a_taken_address_is_a_transport_error(tmp_path: Path, ground: GroundReceiver,
                                               ctx: zmq.Context[Any]) -> None:
    """Binding where another ground listens raises TransportError naming the address."""
    with pytest.raises(TransportError, match="port in use") as exc:
        GroundReceiver(ground.address, tmp_path / "other", context=ctx)
    assert ground.address in str(exc.value)


def test_ground_command_receives_until_sigterm_then_writes_fits(
        real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """`astro-edge ground --bind --out` stores what a node sends, and on SIGTERM writes the FITS table and exits 0."""
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "ground"
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "ground", "--bind", address,
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        recs = ntt_records(real_data)[:10]
        with Spool(tmp_path / "s.sqlite") as spool, Downlink(spool, address, context=ctx) as dl:
            spool.put(recs)
            assert dl.drain(timeout_s=20), "the ground command did not acknowledge"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "10 records" in stdout
    [fits_file] = out.glob("downlink-*.fits")
    assert len(Table.read(fits_file)) == 10
    assert read_jsonl(out / "downlink.jsonl").messages == tuple(recs)


def test_ground_command_refuses_a_bad_address(tmp_path: Path) -> None:
    """A malformed bind address ends the command with exit code 2 and one line saying what is wrong."""
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "ground", "--bind", "tcp://nowhere:xyz",
                           "--out", str(tmp_path / "g")], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert "astro-edge ground:" in proc.stderr and "tcp://nowhere:xyz" in proc.stderr


def test_a_line_cut_by_a_crash_is_dropped_before_appending(real_data: Path, tmp_path: Path,
                                                           ctx: zmq.Context[Any]) -> None:
    """A last line without its newline (a ground killed mid-write, never acked) is cut, logged, and the re-sent record lands whole."""
    recs = ntt_records(real_data)[:2]
    out = tmp_path / "out"
    out.mkdir()
    whole = to_json_line(recs[0], received_time="2026-11-28T10:00:00Z") + "\n"
    (out / "downlink.jsonl").write_text(whole + to_json_line(recs[1])[:100])
    with capture_logs() as logs, GroundReceiver("tcp://127.0.0.1:*", out, context=ctx) as g:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(g.address)
        try:
            assert exchange(g, sock, [data(r) for r in recs]) == [r.record_id for r in recs]
        finally:
            sock.close()
        assert g.counters().duplicates == 1 and g.counters().records == 1
    result = read_jsonl(out / "downlink.jsonl")
    assert result.messages == tuple(recs) and result.skipped == {}
    events = [e for e in logs if e["event"] == "ground.partial_line_dropped"]
    assert len(events) == 1 and events[0]["bytes"] == 100


def test_a_failed_write_is_not_acknowledged_and_leaves_no_trace(
        real_data: Path, ground: GroundReceiver, node: zmq.Socket[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the disk refuses a batch (ENOSPC on fsync) nothing is acked, counted and logged; the retry is stored once."""
    recs = ntt_records(real_data)[:3]
    assert exchange(ground, node, [data(recs[0])]) == [recs[0].record_id]

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch, capture_logs() as logs:
        patch.setattr(os, "fsync", no_space)
        assert exchange(ground, node, [data(r) for r in recs[1:]]) == []
    # The two messages may reach the ground in one batch or in two; each refused batch is counted
    # and logged once, and none of them is stored or acknowledged.
    failed = [e["log_level"] for e in logs if e["event"] == "ground.write_failed"]
    assert failed and set(failed) == {"error"}
    assert ground.counters().write_failures == len(failed) and ground.counters().records == 1
    assert read_jsonl(ground.out_dir / "downlink.jsonl").messages == (recs[0],)
    assert exchange(ground, node, [data(r) for r in recs]) == [r.record_id for r in recs]
    assert read_jsonl(ground.out_dir / "downlink.jsonl").messages == tuple(recs)
    assert ground.counters().duplicates == 1


def test_lines_stored_but_not_indexed_are_indexed_at_the_next_start(
        real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """A ground that died between the fsync and the index write left lines the index does not
    know: the next start indexes them, so their ids are duplicates, and counts them in the log."""
    recs = ntt_records(real_data)
    out = tmp_path / "out"
    _store(ctx, out, recs[:4])
    with (out / "downlink.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(to_json_line(recs[4], received_time="2026-11-29T12:00:00.000000Z") + "\n")
    with capture_logs() as logs:
        g = GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0)
    with g:
        started = [e for e in logs if e["event"] == "ground.started"]
        assert started[0]["indexed_at_start"] == 1 and started[0]["seen"] == 5
        acked = _send(ctx, g, recs[3:6])
        assert acked == [r.record_id for r in recs[3:6]]
        assert g.counters().duplicates == 2 and g.counters().records == 1
    assert [m.id for m in read_jsonl(out / "downlink.jsonl").messages] == [r.record_id for r in recs[:6]]


def test_a_replaced_json_lines_file_makes_the_index_start_again(
        real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """When downlink.jsonl is shorter than the index covers (cut back by hand), the index is built
    again from the files: ids no longer in them are stored anew, the others stay duplicates."""
    recs = ntt_records(real_data)
    out = tmp_path / "out"
    _store(ctx, out, recs[:6])
    lines = (out / "downlink.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "downlink.jsonl").write_text("".join(lines[:3]), encoding="utf-8")
    with capture_logs() as logs:
        g = GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0)
    with g:
        assert any(e["event"] == "ground.index_reset" for e in logs)
        _send(ctx, g, recs[:6])
        assert g.counters().duplicates == 3 and g.counters().records == 3
    assert [m.id for m in read_jsonl(out / "downlink.jsonl").messages] == [r.record_id for r in recs[:6]]


def test_an_index_write_failure_still_acks_and_is_retried(
        real_data: Path, tmp_path: Path, ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines are durable before the index is written: when the index write fails the batch is
    still acknowledged, its ids still count as stored, and the next batch indexes them too."""
    import sqlite3

    from edge.ground.index import GroundIndex

    recs = ntt_records(real_data)
    out = tmp_path / "out"
    real_add = GroundIndex.add
    calls = {"n": 0}

    def flaky_add(self: GroundIndex, entries: Any, covered: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real_add(self, entries, covered)

    monkeypatch.setattr(GroundIndex, "add", flaky_add)
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0) as g:
        with capture_logs() as logs:
            assert _send(ctx, g, recs[:3]) == [r.record_id for r in recs[:3]]
        assert [e["pending"] for e in logs if e["event"] == "ground.index_failed"] == [3]
        assert _send(ctx, g, recs[2:5]) == [r.record_id for r in recs[2:5]]
        assert g.counters().duplicates == 1 and g.counters().records == 5
    monkeypatch.setattr(GroundIndex, "add", real_add)
    with capture_logs() as logs:
        g = GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0)
    with g:
        started = [e for e in logs if e["event"] == "ground.started"][0]
        assert started["seen"] == 5 and started["indexed_at_start"] == 0


def test_an_unreadable_index_is_refused_and_rebuilt_once_removed(
        real_data: Path, tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """A ground index that is not SQLite stops the ground with a GroundStoreError that says what to
    do; removed, it is rebuilt from the JSON lines and duplicates are still dropped."""
    from edge.errors import GroundStoreError
    from edge.ground.receiver import INDEX_NAME

    recs = ntt_records(real_data)
    out = tmp_path / "out"
    _store(ctx, out, recs[:4])
    for extra in out.glob(INDEX_NAME + "-*"):
        extra.unlink()
    (out / INDEX_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(GroundStoreError, match="delete it to have it rebuilt"):
        GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0)
    (out / INDEX_NAME).unlink()
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0) as g:
        _send(ctx, g, recs[:5])
        assert g.counters().duplicates == 4 and g.counters().records == 1


def test_many_small_batches_are_stacked_as_they_come(real_data: Path, tmp_path: Path, ctx: zmq.Context[Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of many small batches between rewrites are stacked into one table as they come, and
    the day's table still holds every record once, in the order received."""
    import edge.ground.receiver

    monkeypatch.setattr(edge.ground.receiver, "_MAX_PARTS", 2)
    recs = ntt_records(real_data)
    out = tmp_path / "out"
    with GroundReceiver("tcp://127.0.0.1:*", out, context=ctx, fits_interval_s=0,
                        utc_now=UtcNow("2026-11-29")) as g:
        for r in recs[:5]:
            _send(ctx, g, [r])
        assert max(len(parts) for parts in g._rows.values()) <= 2
    assert list(Table.read(out / "downlink-20261129.fits")["record_id"]) == [r.record_id for r in recs[:5]]
