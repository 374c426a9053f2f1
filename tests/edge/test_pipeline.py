"""The pipeline's straight line on twin frames: every detection accounted for, records complete,
the same frame always giving the same records, "new" following the reference catalog, blends measured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from edge.codec import from_json_line, to_json_line
from edge.node.assemble import build_pipeline
from edge.pipeline import ASTROPHYSICAL_LABELS
from engines.scoring import score
from twin import reference_catalog, simulate_frame

from .conftest import frame_input

CONTRACT = ("frame", "x", "y", "label", "confidence", "probs", "entropy", "aleatoric", "epistemic",
            "anomaly_pvalue", "reasons", "snr", "ra", "dec")


@pytest.fixture
def pipeline(node_config_factory):
    return build_pipeline(node_config_factory())


def test_every_detection_is_sent_or_suppressed(pipeline, small_twin) -> None:
    """Detections = sent + suppressed, one record per sent detection, with every contract field finite."""
    frame = frame_input(simulate_frame(small_twin, 0, 3))
    result = pipeline.process(frame)
    s = result.summary
    assert s.detections > 20
    assert s.detections == s.sent + s.suppressed == len(result.labels)
    assert len(result.records) == s.sent > 0
    assert sum(s.by_class.values()) == s.detections
    assert set(s.timings_ms) >= {"calibrate", "detect", "infer", "score", "triage"}
    ny, nx = frame.pixels.shape
    for rec in result.records:
        line = to_json_line(rec)
        assert from_json_line(line) == rec
        data = rec.__dict__
        for key in CONTRACT:
            assert key in data
        assert 0 <= rec.x < nx and 0 <= rec.y < ny
        assert rec.reasons and rec.engine_id == pipeline.engine.engine_id
        assert np.isfinite([rec.confidence, rec.entropy, rec.aleatoric, rec.epistemic,
                            rec.anomaly_pvalue, rec.snr]).all()
        assert rec.ra is not None and rec.dec is not None
        assert abs(rec.entropy - rec.aleatoric - rec.epistemic) < 1e-9


def test_the_same_frame_gives_the_same_records(pipeline, small_twin) -> None:
    """A frame processed twice (e.g. re-sent after a crash) yields identical ids, reasons and audit picks."""
    frame = frame_input(simulate_frame(small_twin, 1, 3))
    first = pipeline.process(frame)
    second = pipeline.process(frame)
    strip = [dataclasses.replace(r, processed_time="") for r in first.records]
    assert strip == [dataclasses.replace(r, processed_time="") for r in second.records]
    other = pipeline.process(dataclasses.replace(frame, seq=frame.seq + 1))
    assert [r.record_id for r in other.records] != [r.record_id for r in first.records]


def test_new_follows_the_reference_catalog(node_config_factory, small_twin, tmp_path: Path) -> None:
    """With an empty catalog every star or galaxy detection is new; with the field's catalog plus
    every detected position, none is."""
    frame = frame_input(simulate_frame(small_twin, 0, 3))
    empty = tmp_path / "empty.ecsv"
    Table({"ra_deg": [0.0], "dec_deg": [-89.0]}).write(empty)
    policy = {"send_new": True, "confidence_min": 0.0, "epistemic_max_nats": 100.0,
              "classes_of_interest": [], "audit_rate": 0.0, "alpha": 0.0}
    nothing_known = build_pipeline(node_config_factory(catalog={"reference": str(empty)}, triage=policy))
    result = nothing_known.process(frame)
    astro = sum(n for label, n in result.summary.by_class.items() if label in ASTROPHYSICAL_LABELS)
    assert astro > 0
    assert result.summary.sent_by_reason.get("new", 0) == astro
    assert all(r.new == (r.label in ASTROPHYSICAL_LABELS) for r in result.records)

    known = reference_catalog(small_twin, 3)
    extra = Table({"ra_deg": [r.ra for r in result.records], "dec_deg": [r.dec for r in result.records]})
    full = tmp_path / "full.ecsv"
    Table({"ra_deg": np.concatenate([known["ra_deg"], extra["ra_deg"]]),
           "dec_deg": np.concatenate([known["dec_deg"], extra["dec_deg"]])}).write(full)
    all_known = build_pipeline(node_config_factory(catalog={"reference": str(full)}, triage=policy))
    assert all_known.process(frame).summary.sent_by_reason.get("new", 0) == 0


def test_sent_records_carry_the_multiplicity_measured_with_the_frames_psf(node_config_factory, small_twin) -> None:
    """Every sent record of a twin frame with enough stars has its blend fields; the frame's close
    double, when sent, measures as two sources about as far apart as the twin put them; with
    send_blends the blend reason appears only on records whose ratio reaches the threshold."""
    frame = frame_input(simulate_frame(small_twin, 0, 3))
    policy = {"confidence_min": 0.0, "epistemic_max_nats": 100.0, "classes_of_interest": [],
              "audit_rate": 1.0, "alpha": 0.0, "send_new": False}
    result = build_pipeline(node_config_factory(triage=policy)).process(frame)
    assert len(result.records) > 30   # audit_rate 1: every detection is sent
    measured = [r for r in result.records if r.blend_lr is not None]
    assert len(measured) >= 0.9 * len(result.records)
    assert "multiplicity" in result.summary.timings_ms
    truth = simulate_frame(small_twin, 0, 3).truth
    double = truth[np.asarray(truth["family"]).astype(str) == "close_double"][0]
    near = [r for r in measured if np.hypot(r.x - double["x0"], r.y - double["y0"]) < 2.0]
    assert near and max(r.blend_lr for r in near) >= 20.0
    best = max(near, key=lambda r: r.blend_lr)
    assert abs(best.blend_sep_px - double["size_px"]) < 0.5
    blends = build_pipeline(node_config_factory(triage={**policy, "audit_rate": 0.0, "send_blends": True}))
    # the test engine is tiny: let it call everything a star, as the real engine calls 92 % of close doubles
    blends.scorer = lambda *a: dataclasses.replace(score(*a), label_index=np.zeros(len(a[0]), np.int64))
    sent = blends.process(frame).records
    assert any(np.hypot(r.x - double["x0"], r.y - double["y0"]) < 2.0 for r in sent)
    assert all(r.reasons == ("blend",) and r.blend_lr >= 20.0 for r in sent)
    assert len(sent) < 0.2 * len(result.records)


def test_a_frame_read_in_the_wrong_byte_order_sends_at_most_the_per_frame_cap(node_config_factory,
                                                                              small_twin) -> None:
    """A DAQ that declares the wrong byte order turns sky into noise and thousands of detections;
    the frame sends no more than [triage] max_records_per_frame, the summary counts the rest as capped."""
    twin_frame = simulate_frame(small_twin, 0, 3)
    frame = frame_input(twin_frame)
    good_sent = build_pipeline(node_config_factory()).process(frame).summary.sent
    cap = good_sent + 1    # the frame read right stays under the cap
    pipeline = build_pipeline(node_config_factory(triage={"max_records_per_frame": cap}))
    good_result = pipeline.process(frame)
    good = good_result.summary
    assert good.capped == 0 and good.sent == good_sent
    raw = np.ascontiguousarray(frame.pixels)
    swapped = raw.view(raw.dtype.newbyteorder())     # the same bytes read the other way round
    result = pipeline.process(dataclasses.replace(frame, pixels=swapped))
    s = result.summary
    assert s.detections > 3 * cap, "the byte-swapped frame should flood the detector"
    assert s.sent == len(result.records) == cap
    assert s.capped > 0 and s.sent + s.suppressed == s.detections
    assert sum(s.sent_by_reason.values()) >= cap and all(r.reasons for r in result.records)
    # a record's size is fixed by its stamp, so the cap bounds the frame's bytes too: no more
    # than the cap's worth of the good frame's largest record (a tenth more for longer reasons)
    from edge.codec import encode_msgpack

    largest = max(len(encode_msgpack(r)) for r in good_result.records)
    assert sum(len(encode_msgpack(r)) for r in result.records) <= 1.1 * cap * largest


def test_summaries_written_before_the_cap_read_as_uncapped() -> None:
    """A summary line without "capped" (written before it existed) reads with capped = 0."""
    import json

    from edge.records import FrameSummary

    summary = FrameSummary(node_id="n", detector_id="d", series_id="1", frame=3, frame_time="2026-03-20T03:00:00Z",
                           detections=5, by_class={"star": 5}, sent_by_reason={}, sent=0, suppressed=5,
                           dropped_frames=(), noise_model="header", timings_ms={}, engine_id="e",
                           policy_version=1)
    data = json.loads(to_json_line(summary))
    assert data["capped"] == 0
    del data["capped"]
    assert from_json_line(json.dumps(data)) == summary


def test_a_pipeline_on_the_fast_detector_is_warmed_and_finds_the_stars_sep_finds(node_config_factory, small_twin) -> None:
    """[detect] backend = "fast": the pipeline is built with the detector and the stamp cutter already
    run once (numba's compile is paid at start, not by the first frame), and a twin frame gives at least the
    detections the sep pipeline gives (sep's cleaning drops faint stars; docs/node.md), every one
    accounted for."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        fast = build_pipeline(node_config_factory(detect={"backend": "fast"}))
    warmed = [e for e in logs if e["event"] == "detect.warmed"]
    assert len(warmed) == 1 and warmed[0]["candidates"] == 1
    assert [e["recipe"] for e in logs if e["event"] == "stamps.warmed"] == [fast.engine.manifest.normalisation]
    frame = frame_input(simulate_frame(small_twin, 0, 3))
    with capture_logs() as logs:
        slow = build_pipeline(node_config_factory())
    assert not [e for e in logs if e["event"] == "detect.warmed"]
    assert len([e for e in logs if e["event"] == "stamps.warmed"]) == 1   # every backend cuts stamps
    a, b = slow.process(frame).summary, fast.process(frame).summary
    assert b.detections == b.sent + b.suppressed
    assert a.detections <= b.detections <= 1.5 * a.detections


#: the frame lies this far (x, y) in px from the grid of the pixel catalog of the tests below
FRAME_SHIFT_PX = (7.3, -4.1)
#: every detection is sent (audit) and labelled star, so that "new" can be read on every one
SEND_ALL = {"send_new": True, "confidence_min": 0.0, "epistemic_max_nats": 100.0, "classes_of_interest": [],
            "audit_rate": 1.0, "alpha": 0.0, "max_records_per_frame": 5000}


def all_stars(pipeline):
    """The pipeline with its scorer calling every detection a star (the tiny test engine's labels mean nothing)."""
    pipeline.scorer = lambda *a: dataclasses.replace(score(*a), label_index=np.zeros(len(a[0]), np.int64))
    return pipeline


def shifted_pixel_catalog(small_twin, path: Path, leave_out: int = 3) -> tuple[Path, np.ndarray, np.ndarray]:
    """The field's persistent sources in a pixel grid the frame is FRAME_SHIFT_PX away from, less
    the ``leave_out`` brightest isolated stars; returns the file, and the (x, y) in the frame of the
    stars left out and of the sources kept."""
    known = reference_catalog(small_twin, 3)
    x, y = np.asarray(known["x"], float), np.asarray(known["y"], float)
    is_star = np.asarray(known["label"]).astype(str) == "star"
    spacing = np.array([np.sort(np.hypot(x - a, y - b))[1] for a, b in zip(x, y, strict=True)])
    inner = (x > 30) & (y > 30) & (x < 384 - 30) & (y < 384 - 30)
    pick = np.flatnonzero(is_star & inner & (spacing > 12))
    pick = pick[np.argsort(np.asarray(known["mag"])[pick])][:leave_out]
    keep = np.setdiff1d(np.arange(len(x)), pick)
    Table({"x_px": x[keep] - FRAME_SHIFT_PX[0], "y_px": y[keep] - FRAME_SHIFT_PX[1]}).write(path)
    return path, np.column_stack([x[pick], y[pick]]), np.column_stack([x[keep], y[keep]])


def test_a_pixel_catalog_makes_only_the_sources_it_lacks_new_after_a_frame_shift(node_config_factory, small_twin,
                                                                                 tmp_path: Path) -> None:
    """The frame is registered onto a pixel catalog it lies (7.3, -4.1) px from (logged at debug); the
    stars left out of the catalog are new, and no detection of a catalogued star or galaxy is."""
    from structlog.testing import capture_logs

    path, left_out, kept = shifted_pixel_catalog(small_twin, tmp_path / "pixels.ecsv")
    pipeline = all_stars(build_pipeline(node_config_factory(catalog={"reference": str(path)}, triage=SEND_ALL)))
    frame = frame_input(simulate_frame(small_twin, 0, 3))
    with capture_logs() as logs:
        records = pipeline.process(frame).records
    registered = [e for e in logs if e["event"] == "catalog.registered"]
    assert len(registered) == 1 and registered[0]["log_level"] == "debug"
    assert registered[0]["dx"] == pytest.approx(-FRAME_SHIFT_PX[0], abs=0.1)
    assert registered[0]["dy"] == pytest.approx(-FRAME_SHIFT_PX[1], abs=0.1)
    assert registered[0]["pairs"] >= 30 and registered[0]["seq"] == frame.seq
    xy = np.array([[r.x, r.y] for r in records])
    new = np.array([r.new for r in records])
    for star in left_out:
        near = np.hypot(*(xy - star).T) < 1.5
        assert near.any() and new[near].all()
    on_catalogued = np.array([np.hypot(*(kept - p).T).min() < 1.0 for p in xy])
    assert on_catalogued.sum() >= 30 and not new[on_catalogued].any()


def test_a_detection_below_min_new_snr_is_never_new(node_config_factory, small_twin, tmp_path: Path) -> None:
    """With [catalog] min_new_snr, only detections at that S/N or above may be new; the bright stars
    left out of the catalog still are."""
    path, left_out, _ = shifted_pixel_catalog(small_twin, tmp_path / "pixels.ecsv")
    frame = frame_input(simulate_frame(small_twin, 0, 3))
    catalog = {"reference": str(path)}
    every = all_stars(build_pipeline(node_config_factory(catalog=catalog, triage=SEND_ALL))).process(frame).records
    faint_new = [r for r in every if r.new and r.snr < 30.0]
    assert faint_new, "the frame should have faint new detections (noise, cosmic rays) to drop"
    bright = all_stars(build_pipeline(node_config_factory(catalog={**catalog, "min_new_snr": 30.0}, triage=SEND_ALL)))
    records = bright.process(frame).records
    assert all(r.snr >= 30.0 for r in records if r.new)
    new_xy = np.array([[r.x, r.y] for r in records if r.new])
    assert all(np.hypot(*(new_xy - star).T).min() < 1.5 for star in left_out)


def test_a_frame_that_does_not_register_has_nothing_new_and_says_why(node_config_factory, small_twin,
                                                                     tmp_path: Path) -> None:
    """Against a pixel catalog of another field the frame does not register: a warning
    catalog.unregistered names the frame, its detections and the reason, and no detection is new."""
    from structlog.testing import capture_logs

    rng = np.random.default_rng(5)
    path = tmp_path / "elsewhere.ecsv"
    Table({"x_px": rng.uniform(0, 384, 150), "y_px": rng.uniform(0, 384, 150)}).write(path)
    pipeline = all_stars(build_pipeline(node_config_factory(catalog={"reference": str(path)}, triage=SEND_ALL)))
    frame = frame_input(simulate_frame(small_twin, 0, 3), seq=41)
    with capture_logs() as logs:
        result = pipeline.process(frame)
    assert not any(r.new for r in result.records)
    warned = [e for e in logs if e["event"] == "catalog.unregistered"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["seq"] == 41 and warned[0]["detections"] == result.summary.detections
    assert "agree on one offset" in warned[0]["reason"]


def test_without_the_header_wcs_records_carry_null_ra_dec_and_a_pixel_catalog_still_works(
        node_config_factory, small_twin, tmp_path: Path) -> None:
    """[catalog] use_header_wcs = false: the frame's (good) WCS is ignored, every record has null
    ra/dec, and a pixel catalog still makes the stars it lacks new."""
    path, left_out, _ = shifted_pixel_catalog(small_twin, tmp_path / "pixels.ecsv")
    config = node_config_factory(catalog={"reference": str(path), "use_header_wcs": False}, triage=SEND_ALL)
    records = all_stars(build_pipeline(config)).process(frame_input(simulate_frame(small_twin, 0, 3))).records
    assert records and all(r.ra is None and r.dec is None for r in records)
    assert all(from_json_line(to_json_line(r)).ra is None for r in records[:5])
    new_xy = np.array([[r.x, r.y] for r in records if r.new])
    assert all(np.hypot(*(new_xy - star).T).min() < 1.5 for star in left_out)


def test_catalog_settings_reach_the_pipeline_and_bad_ones_are_refused(node_config_factory, tmp_path: Path) -> None:
    """The [catalog] keys land on the pipeline; a negative radius, S/N or shift is a ConfigError naming
    the key, and a catalog with RA/Dec alone cannot be used without the header WCS."""
    from edge.errors import ConfigError

    pipeline = build_pipeline(node_config_factory(catalog={"use_header_wcs": False, "min_match_radius_px": 1.5,
                                                           "min_new_snr": 8, "register_max_shift_px": 20}))
    assert (pipeline.use_header_wcs, pipeline.min_match_radius_px, pipeline.min_new_snr,
            pipeline.register_max_shift_px) == (False, 1.5, 8.0, 20.0)
    for key in ("min_match_radius_px", "min_new_snr", "register_max_shift_px"):
        with pytest.raises(ConfigError, match=key):
            node_config_factory(catalog={key: -1.0})
    sky_only = tmp_path / "sky.ecsv"
    Table({"ra_deg": [150.0], "dec_deg": [2.0]}).write(sky_only)
    with pytest.raises(ConfigError, match="use_header_wcs"):
        build_pipeline(node_config_factory(catalog={"reference": str(sky_only), "use_header_wcs": False}))
