"""A downlink record as an alert packet and back: every field carried, numbers bit for bit, the
stamp as gzipped FITS cut-outs whose pixels are the record's, and packets that do not fit refused."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

import fastavro
import numpy as np
import pytest
from astropy.time import Time
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.alerts import alert_id, from_alert, load_schema, mjd, open_cutout, to_alert
from edge.errors import RecordFieldError, RecordVersionError
from edge.records import (
    REASONS,
    STAMP_CODEC_ASINH8,
    CompressedStamp,
    DownlinkRecord,
    compress_stamp,
    record_id,
)
from firmware_bridge.protocol import format_utc, parse_utc

FLOAT_FIELDS = ("x", "y", "x_err", "y_err", "ra", "dec", "confidence", "entropy", "aleatoric", "epistemic",
                "anomaly_score", "anomaly_pvalue", "snr", "flux_e", "flux_err_e", "a_px", "b_px", "theta_rad",
                "priority", "blend_lr", "blend_sep_px", "blend_flux_ratio")


def bits(value: float | None) -> bytes | None:
    """The IEEE 754 bytes of a float, so that -0.0 and 0.0 differ."""
    return None if value is None else struct.pack("<d", value)


def through_avro(alert: dict[str, Any]) -> dict[str, Any]:
    """The packet after Avro binary encoding and decoding with the shipped schema."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, load_schema(), alert)
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, load_schema(), load_schema())  # type: ignore[return-value]


def assert_same_record(got: DownlinkRecord, want: DownlinkRecord) -> None:
    assert got == want
    assert list(got.probs) == list(want.probs)  # the engine's class order, not only the same map
    assert [bits(p) for p in got.probs.values()] == [bits(p) for p in want.probs.values()]
    for name in FLOAT_FIELDS:
        assert bits(getattr(got, name)) == bits(getattr(want, name)), name


def context_stamp(seed: int) -> CompressedStamp:
    """A (4, 32, 32) stamp of two (image, mask) pairs, as context engines send."""
    rng = np.random.default_rng(seed)
    stamp = np.zeros((4, 32, 32), np.float32)
    stamp[0::2] = np.arcsinh(rng.normal(0.0, 1.0, (2, 32, 32)) + 40.0 * np.exp(-np.arange(32) / 4.0))
    stamp[1::2] = rng.random((2, 32, 32)) > 0.95
    return compress_stamp(stamp)


def changed(name: str, value: Any) -> Any:
    """Another valid value of a record field."""
    if name == "record_id":
        return value + "-other"
    if name in ("frame_time", "processed_time"):
        return format_utc(parse_utc(value, key=name) + timedelta(microseconds=1))
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return math.nextafter(value, 0.0 if name == "blend_flux_ratio" else math.inf)
    if isinstance(value, str):
        return value + "x"
    if name == "probs":
        return dict(reversed(list(value.items())))
    if name == "reasons":
        return ("unknown",) if value != ("unknown",) else ("audit",)
    if name == "stamp":
        return context_stamp(1)
    raise AssertionError(f"no variant for {name}")


def test_every_record_field_is_carried_and_reads_back(pipeline_records: tuple[DownlinkRecord, ...]) -> None:
    """For each field of the record, a record differing only there gives a different packet that
    reads back as that record: no field is dropped or merged into another."""
    base = next(r for r in pipeline_records if r.blend_lr is not None and r.ra is not None)
    packet = through_avro(to_alert(base))
    assert_same_record(from_alert(packet), base)
    assert packet["provenance"]["recordVersion"] == base.version == 1
    varied = set()
    for field in dataclasses.fields(DownlinkRecord):
        if field.name == "version":  # one valid value; carried as provenance.recordVersion (above)
            continue
        variant = dataclasses.replace(base, **{field.name: changed(field.name, getattr(base, field.name))})
        if field.name == "record_id":
            assert to_alert(variant)["candid"] != packet["candid"]
        other = through_avro(to_alert(variant))
        assert other != packet, field.name
        assert_same_record(from_alert(other), variant)
        varied.add(field.name)
    assert varied == {f.name for f in dataclasses.fields(DownlinkRecord)} - {"version"}


def test_numbers_survive_bit_for_bit_signed_zeros_and_subnormals_included(
        pipeline_records: tuple[DownlinkRecord, ...]) -> None:
    """Negative zero, a subnormal, the largest double and int64 extremes come back with the same bits."""
    rec = dataclasses.replace(pipeline_records[0], x=-0.0, y=5e-324, x_err=1.7976931348623157e308,
                              theta_rad=-math.pi, flags=2**63 - 1, frame=0, policy_version=2**63 - 1,
                              probs={"b": 0.0, "a": -0.0, "c": 1.0 / 3.0})
    assert_same_record(from_alert(through_avro(to_alert(rec))), rec)


def test_the_cutouts_hold_the_stamps_pixels(pipeline_records: tuple[DownlinkRecord, ...]) -> None:
    """cutoutScience gunzips to a FITS file whose primary HDU is image channel 0 and whose extension
    is the second image channel, cutoutMask likewise for the masks, pixel for pixel."""
    for rec in (pipeline_records[0], dataclasses.replace(pipeline_records[0], stamp=context_stamp(2))):
        assert rec.stamp is not None
        values = rec.stamp.decompress()
        packet = to_alert(rec)
        science = open_cutout(packet["cutoutScience"]["stampData"])
        mask = open_cutout(packet["cutoutMask"]["stampData"])
        assert len(science) == len(mask) == values.shape[0] // 2
        for k, (image_plane, mask_plane) in enumerate(zip(science, mask, strict=True)):
            assert image_plane.dtype.kind == "f" and mask_plane.dtype.kind == "u"
            np.testing.assert_array_equal(image_plane, values[2 * k])
            np.testing.assert_array_equal(mask_plane, values[2 * k + 1])
        assert packet["cutoutScience"]["fileName"] == f"candid{packet['candid']}_sci.fits.gz"


def test_a_float16_stamp_gives_one_cutout_of_the_whole_array_and_no_mask(
        pipeline_records: tuple[DownlinkRecord, ...]) -> None:
    """A stamp of the first codec (float16, any shape) is the science cut-out whole; there is no mask
    cut-out; and a record without a stamp has neither."""
    values = np.linspace(-3, 7, 3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    stamp = compress_stamp(values)
    rec = dataclasses.replace(pipeline_records[0], stamp=stamp)
    packet = through_avro(to_alert(rec))
    [plane] = open_cutout(packet["cutoutScience"]["stampData"])
    np.testing.assert_array_equal(plane, stamp.decompress())
    assert packet["cutoutMask"] is None
    bare = through_avro(to_alert(dataclasses.replace(rec, stamp=None)))
    assert bare["cutoutScience"] is bare["cutoutMask"] is bare["stamp"] is None
    assert from_alert(bare).stamp is None


def test_mjd_is_the_frame_time_as_astropy_reads_it() -> None:
    """The packet's mjd is the frame time's UTC Modified Julian Date, as astropy.time computes it."""
    for text in ("2026-03-20T03:00:00.000000Z", "1992-06-01T03:04:05.123456Z", "2000-01-01T12:00:00Z"):
        assert mjd(text) == pytest.approx(Time(text.rstrip("Z"), scale="utc").mjd, abs=1e-9)
    assert mjd("2026-03-20T03:00:00.000000Z") == 61119.125


def test_the_alert_id_is_stable_and_an_avro_long() -> None:
    """candid depends only on the record id, lies in [0, 2**63) and differs between records."""
    ids = {alert_id(record_id("n", "s", frame, index)) for frame in range(50) for index in range(20)}
    assert len(ids) == 1000
    assert all(0 <= i < 2**63 for i in ids)
    # the vector docs/alerts.md gives, so that a broker can check its own implementation
    assert alert_id("alert-node:1:0:0") == 2981367554386303991


def test_a_frame_time_that_is_not_utc_iso_has_no_packet(pipeline_records: tuple[DownlinkRecord, ...]) -> None:
    """A record whose frame_time is not UTC ISO 8601 is refused with a typed error naming the field."""
    rec = dataclasses.replace(pipeline_records[0], frame_time="yesterday")
    with pytest.raises(RecordFieldError, match="frame_time"):
        to_alert(rec)


def test_packets_that_do_not_fit_are_refused(pipeline_records: tuple[DownlinkRecord, ...]) -> None:
    """Another major schema version, a candid that is not the record id's, a class named twice or a
    missing block each raise a typed error saying so."""
    good = to_alert(pipeline_records[0])
    with pytest.raises(RecordVersionError, match="2.0"):
        from_alert({**good, "schemavsn": "2.0"})
    with pytest.raises(RecordFieldError, match="candid"):
        from_alert({**good, "candid": good["candid"] ^ 1})
    probs = good["uncertainty"]["probs"]
    with pytest.raises(RecordFieldError, match="twice"):
        from_alert({**good, "uncertainty": {**good["uncertainty"], "probs": [*probs, probs[0]]}})
    with pytest.raises(RecordFieldError, match="provenance"):
        from_alert({k: v for k, v in good.items() if k != "provenance"})
    with pytest.raises(RecordFieldError):
        from_alert(["not", "a", "map"])  # type: ignore[arg-type]
    assert from_alert({**good, "schemavsn": "1.7"}) == pipeline_records[0]


utc_times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                         timezones=st.just(timezone.utc)).map(format_utc)
finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=12)
counts = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def stamps(draw: Any) -> CompressedStamp | None:
    kind = draw(st.sampled_from(["none", "pairs", "asinh8", "float16"]))
    if kind == "none":
        return None
    if kind == "float16":
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
        return compress_stamp(np.arange(math.prod(shape), dtype=np.float32).reshape(shape) * draw(st.floats(-100, 100)))
    pairs, height, width = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(0, 3, (2 * pairs, height, width)).astype(np.float32)
    values[1::2] = values[1::2] > 2
    stamp = compress_stamp(values)
    if kind == "asinh8":  # the second codec is still read, so it must travel too
        stamp = CompressedStamp(shape=stamp.shape, data=stamp.data, codec=STAMP_CODEC_ASINH8)
    return stamp


@st.composite
def records(draw: Any) -> DownlinkRecord:
    has_sky = draw(st.booleans())
    return DownlinkRecord(
        record_id=draw(text), node_id=draw(text), detector_id=draw(text), series_id=draw(text),
        frame=draw(counts), index=draw(counts), frame_time=draw(utc_times), processed_time=draw(text),
        x=draw(finite), y=draw(finite), x_err=draw(finite), y_err=draw(finite),
        ra=draw(finite) if has_sky else None, dec=draw(finite) if has_sky else None,
        label=draw(text), confidence=draw(finite), probs=draw(st.dictionaries(text, finite, max_size=6)),
        entropy=draw(finite), aleatoric=draw(finite), epistemic=draw(finite), anomaly_score=draw(finite),
        anomaly_pvalue=draw(finite), snr=draw(finite), flux_e=draw(finite), flux_err_e=draw(finite),
        a_px=draw(finite), b_px=draw(finite), theta_rad=draw(finite), flags=draw(counts),
        new=draw(st.booleans()), reasons=tuple(draw(st.lists(st.sampled_from(REASONS), max_size=5))),
        priority=draw(finite), policy_version=draw(counts), engine_id=draw(text),
        calibration_id=draw(text), stamp=draw(stamps()),
        **(dict(blend_lr=draw(st.floats(0, 1e6)), blend_sep_px=draw(st.floats(0, 50)),
                blend_flux_ratio=draw(st.floats(0, 1))) if draw(st.booleans()) else {}))


@settings(max_examples=60, deadline=None)
@given(records(), st.one_of(st.none(), utc_times))
def test_any_record_round_trips_through_an_avro_packet(rec: DownlinkRecord, received: str | None) -> None:
    """Any valid record, through to_alert, Avro binary and from_alert, is the same record bit for
    bit; the ground's received time rides along in provenance."""
    packet = through_avro(to_alert(rec, received_time=received))
    assert packet["provenance"]["receivedTime"] == received
    assert_same_record(from_alert(packet), rec)
    assert packet["candidate"]["mjd"] == mjd(rec.frame_time)


def test_mjd_follows_the_clock_to_the_microsecond() -> None:
    """One microsecond later is a larger MJD, and a day later is one more."""
    start = datetime(2026, 3, 20, 3, 0, tzinfo=timezone.utc)
    base = mjd(format_utc(start))
    assert mjd(format_utc(start + timedelta(microseconds=1))) > base
    assert mjd(format_utc(start + timedelta(days=1))) == base + 1
