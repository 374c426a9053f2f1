"""The HIL rig end to end: stream and replay into a receiver, record then replay byte-exactly, score."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from astropy.io import fits
from astropy.table import Table
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from edge.cli.rig import register
from edge.errors import ConfigError
from firmware_bridge import Frame, FrameReceiver, FrameSender, SeriesEnd, SeriesStart
from firmware_bridge.rig import (
    FrameSource,
    match_and_score,
    play_frames,
    read_recording,
    record,
    replay,
)

pytestmark = pytest.mark.timeout(60)


def main(argv: list[str]) -> int:
    """Run ``astro-edge rig ...`` through this area's own parser (other areas may be mid-change)."""
    parser = argparse.ArgumentParser(prog="astro-edge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _stats_line(out: str) -> dict[str, Any]:
    """The JSON stats line a play command prints (log lines may share stdout in tests)."""
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def _drain(rx: FrameReceiver, timeout_ms: int = 2000) -> list[Any]:
    out = []
    while (msg := rx.recv(timeout_ms)) is not None:
        out.append(msg)
        if isinstance(msg, SeriesEnd):
            break
    return out


def test_stream_plays_frames_as_one_series(receiver: FrameReceiver, context: zmq.Context[Any],
                                           rng: np.random.Generator) -> None:
    """play_frames sends a series start, every frame in order with its fields, and a series end."""
    frames = [FrameSource(rng.integers(0, 60000, (32, 40)).astype(np.uint16),
                          f"2026-11-28T10:00:0{i}.000000Z", 30.0, {"CTYPE1": "RA---TAN"},
                          {"FILTER": "r"}) for i in range(5)]
    with FrameSender(receiver.endpoint, context=context) as tx:
        stats = play_frames(tx, frames, series_id=21, expected_frames=5)
        got = _drain(receiver)
    assert (stats.frames_sent, stats.frames_dropped) == (5, 0)
    assert isinstance(got[0], SeriesStart) and got[0].series_id == 21 and got[0].expected_frames == 5
    assert isinstance(got[-1], SeriesEnd) and got[-1].frames_sent == 5
    body = got[1:-1]
    assert [f.header.seq for f in body] == [0, 1, 2, 3, 4]
    for sent, msg in zip(frames, body, strict=True):
        assert np.array_equal(msg.pixels, sent.pixels)
        assert msg.header.start_utc == sent.start_utc and msg.header.wcs["CTYPE1"] == "RA---TAN"


def _write_fits(path: Path, data: np.ndarray, **cards: Any) -> None:
    hdu = fits.PrimaryHDU(data)
    for k, v in cards.items():
        hdu.header[k.replace("_", "-") if k == "DATE_OBS" else k] = v
    hdu.writeto(path)


def test_replay_plays_a_fits_directory_in_order_with_its_keywords(
        tmp_path: Path, m13_path: Path, receiver: FrameReceiver, context: zmq.Context[Any],
        rng: np.random.Generator) -> None:
    """FITS frames (the real M13 uint16 frame with BZERO, and a made one with a WCS) arrive in name
    order, pixels exact, DATE-OBS as start time, WCS and instrument keywords carried."""
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a_m13.fits").write_bytes(m13_path.read_bytes())
    made = rng.integers(0, 65535, (20, 30)).astype(np.uint16)
    _write_fits(frames / "b_made.fits", made, DATE_OBS="2026-11-28T01:02:03.5", EXPTIME=12.5,
                CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=250.4, CRVAL2=36.46, CD1_1=-1.4e-4,
                FILTER="r", GAIN=1.5)
    with FrameSender(receiver.endpoint, context=context) as tx:
        stats = replay(frames, tx)
        got = _drain(receiver)
    assert stats.frames_sent == 2
    m13, mine = (m for m in got if isinstance(m, Frame))
    with fits.open(m13_path) as hdul:
        assert hdul[0].header["BZERO"] == 32768
        assert m13.pixels.dtype == np.uint16 and np.array_equal(m13.pixels, hdul[0].data)
    assert m13.header.start_utc == "2013-05-05T04:09:39.000000Z" and m13.header.exposure_s == 5.0
    assert m13.header.keywords["INSTRUME"] == "Orion SSDSI"
    assert np.array_equal(mine.pixels, made)
    assert mine.header.start_utc == "2026-11-28T01:02:03.500000Z" and mine.header.exposure_s == 12.5
    assert dict(mine.header.wcs) == {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 250.4,
                                     "CRVAL2": 36.46, "CD1_1": -1.4e-4}
    assert mine.header.keywords["FILTER"] == "r" and "BITPIX" not in mine.header.keywords


def test_record_then_replay_gives_identical_bytes(tmp_path: Path, context: zmq.Context[Any],
                                                  make_frame: Any) -> None:
    """A recorded feed (good frames and junk alike) replays as the very same parts, byte for byte."""
    sent = [make_frame(seq=0), [b"junk header", b"\x00\x01"], make_frame(seq=1, compression="zstd"),
            [b""], make_frame(seq=2, shape=(3, 4, 5), dtype=">f4")]
    out = tmp_path / "feed.aerec"
    bound = threading.Event()
    endpoint: list[str] = []

    def on_ready(ep: str) -> None:
        endpoint.append(ep)
        bound.set()

    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(record("tcp://127.0.0.1:*", out, count=len(sent),
                                                             duration_s=20, context=context,
                                                             ready=on_ready)))
    t.start()
    assert bound.wait(10)
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(endpoint[0])
    for parts in sent:
        push.send_multipart(parts)
    t.join(20)
    push.close()
    assert result and result[0].messages == len(sent)
    assert [list(r.parts) for r in read_recording(out)] == sent

    pull = context.socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    with FrameSender(f"tcp://127.0.0.1:{port}", context=context) as tx:
        stats = replay(out, tx)
        replayed = [pull.recv_multipart() for _ in sent]
    pull.close()
    assert (stats.messages, stats.messages_sent, stats.frames_sent) == (len(sent), len(sent), 0)
    assert replayed == sent


def test_truncated_recording_plays_what_is_whole(tmp_path: Path, context: zmq.Context[Any],
                                                  make_frame: Any) -> None:
    """A recording cut mid-record (a crash while recording) yields its whole records and logs the cut."""
    from firmware_bridge.rig import RECORDING_MAGIC, write_record

    path = tmp_path / "cut.aerec"
    with path.open("wb") as fh:
        fh.write(RECORDING_MAGIC)
        for seq in range(3):
            write_record(fh, make_frame(seq=seq), 1_000 + seq)
    path.write_bytes(path.read_bytes()[:-5])
    with capture_logs() as logs:
        recs = list(read_recording(path))
    assert [r.received_unix_ns for r in recs] == [1000, 1001]
    assert [e["event"] for e in logs] == ["rig.recording_truncated"]
    (tmp_path / "not.aerec").write_bytes(b"SIMPLE  =")
    with pytest.raises(ConfigError, match="recording"):
        list(read_recording(tmp_path / "not.aerec"))


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(st.tuples(st.integers(0, 2**64 - 1),
                                   st.lists(st.binary(max_size=300), min_size=1, max_size=5)),
                         max_size=8))
def test_any_recording_reads_back_exactly(messages: list[tuple[int, list[bytes]]]) -> None:
    """Hypothesis: any messages written with write_record read back with the same times and parts."""
    import io
    import tempfile

    from firmware_bridge.rig import RECORDING_MAGIC, write_record

    buf = io.BytesIO()
    buf.write(RECORDING_MAGIC)
    for ns, parts in messages:
        write_record(buf, parts, ns)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.aerec"
        path.write_bytes(buf.getvalue())
        got = [(r.received_unix_ns, list(r.parts)) for r in read_recording(path)]
    assert got == [(ns, parts) for ns, parts in messages]


def _hand_built(tmp_path: Path) -> tuple[Path, Path]:
    truth = Table(rows=[
        (0, 10.0, 10.0, "star", ""),
        (0, 50.0, 50.0, "star", ""),
        (0, 80.0, 20.0, "cosmic_ray", ""),
        (0, 30.0, 70.0, "anomaly", "lens_arc"),
        (1, 10.0, 10.0, "star", ""),
        (1, 60.0, 60.0, "anomaly", "lens_arc"),
        (1, 90.0, 90.0, "anomaly", "comet"),
        (1, 40.0, 40.0, "transient", "transient"),
    ], names=["frame", "x", "y", "label", "family"])
    truth_path = tmp_path / "truth.ecsv"
    truth.write(truth_path, format="ascii.ecsv")
    records = [
        # frame 0: the arc (1.5 px off), a star 2 px off, and one unmatched far away
        {"frame": 0, "x": 31.5, "y": 70.0, "label": "unknown", "reasons": ["unusual"],
         "frame_time": 100.0, "received_time": 100.5},
        {"frame": 0, "x": 52.0, "y": 50.0, "label": "star", "reasons": ["uncertain"],
         "frame_time": 100.0, "received_time": 101.0},
        {"frame": 0, "x": 200.0, "y": 200.0, "label": "star", "reasons": ["audit"],
         "frame_time": 100.0, "received_time": 101.5},
        # frame 1: two records near the same arc (only one may match), the transient 3.5 px off
        # (outside r = 3), the comet 2.9 px off
        {"frame": 1, "x": 60.0, "y": 61.0, "label": "unknown", "reasons": ["unknown"],
         "frame_time": "2026-11-28T10:00:00Z", "received_time": "2026-11-28T10:00:02Z"},
        {"frame": 1, "x": 60.0, "y": 62.0, "label": "unknown", "reasons": ["unknown"]},
        {"frame": 1, "x": 43.5, "y": 40.0, "label": "star", "reasons": ["new"]},
        {"frame": 1, "x": 90.0, "y": 92.9, "label": "unknown", "reasons": ["unusual"]},
    ]
    downlink = tmp_path / "downlink.jsonl"
    downlink.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return truth_path, downlink


def test_score_gives_the_exact_numbers_on_a_hand_built_pair(tmp_path: Path, capsys: Any) -> None:
    """rig score on 8 truth objects and 7 records gives the recalls, fractions and latencies worked
    out by hand, prints them, and writes the same JSON."""
    truth, downlink = _hand_built(tmp_path)
    out = tmp_path / "score.json"
    assert main(["rig", "score", "--truth", str(truth), "--downlink", str(downlink),
                 "--radius-px", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    s = written
    assert (s["n_truth"], s["n_downlinked"], s["n_matched"], s["n_downlinked_unmatched"]) == (8, 7, 4, 3)
    assert s["recall_by_label"] == {
        "anomaly": {"n_truth": 3, "n_sent": 3, "recall": 1.0},
        "cosmic_ray": {"n_truth": 1, "n_sent": 0, "recall": 0.0},
        "star": {"n_truth": 3, "n_sent": 1, "recall": 1 / 3},
        "transient": {"n_truth": 1, "n_sent": 0, "recall": 0.0},
    }
    assert s["recall_by_family"] == {
        "comet": {"n_truth": 1, "n_sent": 1, "recall": 1.0},
        "lens_arc": {"n_truth": 2, "n_sent": 2, "recall": 1.0},
        "transient": {"n_truth": 1, "n_sent": 0, "recall": 0.0},
    }
    assert s["ordinary_sent"] == {"n_truth": 4, "n_sent": 1, "fraction": 0.25}
    # latencies 0.5, 1.0, 1.5, 2.0 s: numpy's linear percentiles give p50 1.25, p99 1.985
    assert s["latency"]["n"] == 4
    assert s["latency"]["p50_s"] == pytest.approx(1.25)
    assert s["latency"]["p99_s"] == pytest.approx(1.985)


def test_score_matches_one_to_one_nearest_first() -> None:
    """Two truths and two records in a row pair up nearest first, never twice to the same truth."""
    s = match_and_score(np.array([0, 0]), np.array([0.0, 2.0]), np.array([0.0, 0.0]),
                        ["star", "anomaly"], ["", "ghost"],
                        [{"frame": 0, "x": 1.9, "y": 0.0}, {"frame": 0, "x": 0.5, "y": 0.0}],
                        radius_px=3.0)
    assert s["n_matched"] == 2 and s["recall_by_family"]["ghost"]["recall"] == 1.0
    assert s["latency"] is None


def test_score_rejects_a_bad_downlink_line(tmp_path: Path) -> None:
    """A record without coordinates is a ConfigError naming the file and line."""
    truth, _ = _hand_built(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"frame": 0, "x": 1, "y": 1}\n{"frame": 0, "x": "one"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2"):
        main(["rig", "score", "--truth", str(truth), "--downlink", str(bad)])


def test_replay_command_plays_a_directory(tmp_path: Path, receiver: FrameReceiver,
                                          rng: np.random.Generator, capsys: Any) -> None:
    """`astro-edge rig replay DIR --address A` sends every FITS frame of DIR and reports the counts."""
    for i in range(3):
        _write_fits(tmp_path / f"f{i}.fits", rng.integers(0, 65535, (16, 16)).astype(np.uint16),
                    EXPTIME=1.0)
    assert main(["rig", "replay", str(tmp_path), "--address", receiver.endpoint]) == 0
    stats = _stats_line(capsys.readouterr().out)
    got = [m for m in _drain(receiver) if isinstance(m, Frame)]
    assert stats["frames_sent"] == 3 and len(got) == 3


def test_stream_command_plays_twin_frames(receiver: FrameReceiver, capsys: Any) -> None:
    """`astro-edge rig stream` sends the twin's frames exactly as simulate_frame makes them, with
    the twin's DATE-OBS, EXPTIME, WCS and camera keywords in the headers."""
    import dataclasses

    from twin import DetectorModel, TwinConfig, simulate_frame

    assert main(["rig", "stream", "--address", receiver.endpoint, "--n", "2", "--size", "64",
                 "--seed", "5"]) == 0
    got = [m for m in _drain(receiver) if isinstance(m, Frame)]
    stats = _stats_line(capsys.readouterr().out)
    assert stats["frames_sent"] == 2 and len(got) == 2
    cfg = dataclasses.replace(TwinConfig(), detector=DetectorModel(shape_px=(64, 64)))
    for i, msg in enumerate(got):
        twin_frame = simulate_frame(cfg, i, 5)
        assert np.array_equal(msg.pixels, twin_frame.raw_adu)
        assert msg.header.exposure_s == twin_frame.header["EXPTIME"]
        assert msg.header.start_utc.startswith(twin_frame.header["DATE-OBS"][:19])
        assert msg.header.wcs["CTYPE1"] == "RA---TAN"
        assert msg.header.keywords["GAIN"] == twin_frame.header["GAIN"]


def test_replay_plays_frames_the_twin_wrote(tmp_path: Path, receiver: FrameReceiver,
                                            context: zmq.Context[Any]) -> None:
    """A directory from twin.write_frames replays frame by frame with the files' exact pixels."""
    import dataclasses

    from twin import DetectorModel, TwinConfig, write_frames

    cfg = dataclasses.replace(TwinConfig(), detector=DetectorModel(shape_px=(48, 64)))
    paths = write_frames(tmp_path, cfg, 3, 9)
    with FrameSender(receiver.endpoint, context=context) as tx:
        stats = replay(tmp_path, tx)
        got = [m for m in _drain(receiver) if isinstance(m, Frame)]
    assert stats.frames_sent == 3 and len(got) == 3
    for path, msg in zip(sorted(p for p in paths if p.suffix == ".fits"), got, strict=True):
        with fits.open(path) as hdul:
            assert np.array_equal(msg.pixels, hdul[0].data) and msg.pixels.shape == (48, 64)
            assert msg.header.keywords["FRAMENUM"] == hdul[0].header["FRAMENUM"]


def test_extended_truth_matches_within_its_size() -> None:
    """An arc whose detection sits 6 px from its catalogued centre matches only when its size is given."""
    from firmware_bridge.rig import match_and_score

    records = [{"frame": 0, "x": 16.0, "y": 10.0}]
    args = (np.array([0, 0]), np.array([10.0, 40.0]), np.array([10.0, 40.0]), ["anomaly", "star"],
            ["lens_arc", "star"], records)
    assert match_and_score(*args, radius_px=3.0)["n_matched"] == 0
    sized = match_and_score(*args, radius_px=3.0, truth_size_px=np.array([8.0, 0.0]))
    assert sized["n_matched"] == 1
    assert sized["recall_by_family"]["lens_arc"]["recall"] == 1.0
