"""The review desk's files: the catalog over the ground's JSON lines, the labels, their export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.codec import to_json_line
from edge.errors import ConfigError, GroundStoreError
from edge.ground.catalog import Catalog, RecordQuery
from edge.ground.labels import Label, LabelStore, check_label, export_labels
from edge.ground.writers import FRAMES_NAME, RECORDS_NAME
from edge.records import REASONS, DownlinkRecord, FrameSummary, compress_stamp, record_id


def make_record(node: str, frame: int, index: int, rng: np.random.Generator, *, channels: int = 4,
                label: str = "star", detector: str = "d1", engine_id: str = "e1:1:abc") -> DownlinkRecord:
    return DownlinkRecord(
        record_id=record_id(node, "s1", frame, index), node_id=node, detector_id=detector, series_id="s1",
        frame=frame, index=index, frame_time=f"2026-12-03T10:{frame:02d}:00Z", processed_time="2026-12-03T10:00:01Z",
        x=10.0 + index, y=20.0, x_err=0.1, y_err=0.1, ra=150.0, dec=-2.5, label=label, confidence=0.6,
        probs={"star": 0.6, "streak": 0.4}, entropy=0.7, aleatoric=0.5, epistemic=0.2,
        anomaly_score=2.0, anomaly_pvalue=float(rng.uniform(0.001, 1.0)), snr=float(rng.uniform(5, 100)),
        flux_e=900.0, flux_err_e=30.0, a_px=2.0, b_px=1.0, theta_rad=0.3, flags=0, new=False,
        reasons=(REASONS[index % 3],), priority=float(rng.uniform(0, 10)), policy_version=1,
        engine_id=engine_id, calibration_id="c1",
        stamp=compress_stamp(np.stack([rng.normal(size=(32, 32)), np.ones((32, 32))] * (channels // 2))))


def make_summary(node: str, frame: int, sent: int) -> FrameSummary:
    return FrameSummary(node_id=node, detector_id="d1", series_id="s1", frame=frame,
                        frame_time=f"2026-12-03T10:{frame:02d}:00Z", detections=100, by_class={"star": 100},
                        sent_by_reason={"uncertain": sent}, sent=sent, suppressed=100 - sent,
                        dropped_frames=(frame - 1,) if frame % 5 == 4 else (), noise_model="bundle",
                        timings_ms={"detect": 5.0}, engine_id="e1:1:abc", policy_version=1)


def write_ground(folder: Path, records: list[DownlinkRecord], summaries: list[FrameSummary] = (),
                 received: str = "2026-12-03T11:00:00Z") -> None:
    """Append records and summaries to a ground folder's JSON lines as the receiver writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / RECORDS_NAME).open("a") as fh:
        for r in records:
            fh.write(to_json_line(r, received_time=received) + "\n")
    with (folder / FRAMES_NAME).open("a") as fh:
        for s in summaries:
            fh.write(to_json_line(s, received_time=received) + "\n")


def test_catalog_filters_sorts_and_pages_what_the_ground_stored(tmp_path: Path) -> None:
    """The list keeps exactly the records a filter asks for, in the order asked, without a page overlapping the next."""
    rng = np.random.default_rng(1)
    records = [make_record(node, f, i, rng, label="streak" if i % 4 == 0 else "star")
               for node in ("n1", "n2") for f in range(5) for i in range(12)]
    write_ground(tmp_path, records[:60], received="2026-12-03T11:00:00Z")
    write_ground(tmp_path, records[60:], received="2026-12-04T11:00:00Z")
    with Catalog(tmp_path) as catalog:
        assert catalog.catch_up() == 120
        rows, total = catalog.query(RecordQuery(per_page=500))
        assert total == 120 and [r.priority for r in rows] == sorted((r.priority for r in records), reverse=True)
        rows, total = catalog.query(RecordQuery(node_id="n2", reason="unusual", label="streak", sort="pvalue", per_page=500))
        want = [r for r in records if r.node_id == "n2" and "unusual" in r.reasons and r.label == "streak"]
        assert total == len(want) > 0
        assert [r.record_id for r in rows] == [r.record_id for r in sorted(want, key=lambda r: (r.anomaly_pvalue, r.record_id))]
        _, total = catalog.query(RecordQuery(since="2026-12-04"))
        assert total == 60
        pages = [catalog.query(RecordQuery(sort="snr", page=p, per_page=50))[0] for p in (1, 2, 3)]
        ids = [r.record_id for page in pages for r in page]
        assert len(ids) == len(set(ids)) == 120
        assert catalog.choices() == {"node_id": ["n1", "n2"], "label": ["star", "streak"]}
        assert catalog.record(records[7].record_id) == records[7]
        assert catalog.record("nope") is None


def test_catalog_takes_only_whole_lines_and_catches_up_with_appended_ones(tmp_path: Path) -> None:
    """A line the receiver is still writing is left for later; lines appended after are added once; summaries are kept per frame."""
    rng = np.random.default_rng(2)
    records = [make_record("n1", 0, i, rng) for i in range(6)]
    write_ground(tmp_path, records[:3], [make_summary("n1", f, 3) for f in range(5)])
    partial = to_json_line(records[3], received_time="2026-12-03T11:00:00Z")
    with (tmp_path / RECORDS_NAME).open("a") as fh:
        fh.write(partial[:100])
    with Catalog(tmp_path) as catalog:
        assert catalog.catch_up() == 3 + 5
        with (tmp_path / RECORDS_NAME).open("a") as fh:
            fh.write(partial[100:] + "\n")
        write_ground(tmp_path, records[4:])
        assert catalog.catch_up() == 3
        assert catalog.catch_up() == 0
        assert catalog.query(RecordQuery())[1] == 6
        assert catalog.summary("n1", "s1", 4) == make_summary("n1", 4, 3)
        health = catalog.health(bins=2)["n1"]
        assert (health["frames"], health["sent"], health["dropped"]) == (5, 15, 1)
        assert sum(health["sent_by_reason"]["uncertain"]) == 15 and sum(health["frames_per_bin"]) == 5


def test_a_replaced_downlink_file_makes_the_catalog_start_again(tmp_path: Path) -> None:
    """A downlink file shorter than what the catalog covers (replaced by hand) is catalogued from nothing."""
    rng = np.random.default_rng(3)
    write_ground(tmp_path, [make_record("n1", 0, i, rng) for i in range(8)])
    with Catalog(tmp_path) as catalog:
        catalog.catch_up()
        (tmp_path / RECORDS_NAME).unlink()
        write_ground(tmp_path, [make_record("n9", 0, i, rng) for i in range(2)])
        catalog.catch_up()
        assert catalog.choices()["node_id"] == ["n9"] and catalog.query(RecordQuery())[1] == 2


def test_a_folder_that_is_not_a_ground_and_a_bad_query_are_refused_with_the_reason(tmp_path: Path) -> None:
    """The catalog names what a ground folder must hold, and a query names its bad sort or reason."""
    with pytest.raises(ConfigError, match="downlink.jsonl"):
        Catalog(tmp_path)
    with pytest.raises(GroundStoreError, match="sort"):
        RecordQuery(sort="colour")
    with pytest.raises(GroundStoreError, match="reason"):
        RecordQuery(reason="pretty")


def test_labels_keep_every_verdict_with_who_and_when_and_the_latest_counts(tmp_path: Path) -> None:
    """A record labelled twice keeps both labels in its history; the current label is the latest; the file survives a reopen."""
    with LabelStore(tmp_path) as store:
        store.add(Label("r1", "star", "ana", "2026-12-04T10:00:00+00:00", "e1"))
        store.add(Label("r2", "Lobster-PSF", "ben", "2026-12-04T10:01:00+00:00", "e1"))
        store.add(Label("r1", "artefact", "ben", "2026-12-04T10:02:00+00:00", "e1"))
    with LabelStore(tmp_path) as store:
        assert [(lab.record_id, lab.label) for lab in store.current()] == [("r2", "lobster_psf"), ("r1", "artefact")]
        assert [lab.reviewer for lab in store.of("r1")] == ["ana", "ben"]
        with pytest.raises(ConfigError, match="reviewer"):
            store.add(Label("r3", "star", " ", "t", "e1"))
    for bad in ("<b>x</b>", "9lives", "", "a" * 40):
        with pytest.raises(ConfigError, match="letters"):
            check_label(bad)


def test_export_writes_the_labels_file_engines_finetune_reads(tmp_path: Path) -> None:
    """Exported labels are the records' own stamps and names, artefacts as bogus, and read back by finetune's reader."""
    from engines.training.finetune import read_labels

    rng = np.random.default_rng(4)
    records = [make_record("n1", 0, i, rng) for i in range(14)]
    write_ground(tmp_path, records)
    with Catalog(tmp_path) as catalog, LabelStore(tmp_path) as store:
        for i, r in enumerate(records[:12]):
            store.add(Label(r.record_id, "new_thing" if i < 10 else "artefact", "ana", "t", r.engine_id))
        store.add(Label("lost-record", "star", "ana", "t", "e1:1:abc"))
        done = export_labels(store, catalog, tmp_path / "out" / "labels.npz")
    assert done.per_class == {"bogus": 2, "new_thing": 10}
    assert done.left_out == {"record not in this ground's files": 1}
    stamps, names = read_labels(done.path, ("star", "bogus"), channels=4, allow_new=True)
    assert stamps.shape == (12, 4, 32, 32) and list(names).count("new_thing") == 10
    assert np.allclose(stamps[0], records[0].stamp.decompress())


def test_export_refuses_stamps_of_two_engines_unless_one_is_chosen(tmp_path: Path) -> None:
    """Labelled records of a 2-channel and a 4-channel engine cannot share a file: the error names both; --engine-id picks one."""
    rng = np.random.default_rng(5)
    old = [make_record("n1", 1, i, rng, channels=2, engine_id="v1:1:aaa") for i in range(3)]
    new = [make_record("n1", 2, i, rng, channels=4, engine_id="v3:3:bbb") for i in range(3)]
    write_ground(tmp_path, old + new)
    with Catalog(tmp_path) as catalog, LabelStore(tmp_path) as store:
        for r in old + new:
            store.add(Label(r.record_id, "star", "ana", "t", r.engine_id))
        with pytest.raises(ConfigError, match=r"v1:1:aaa.*v3:3:bbb|v3:3:bbb.*v1:1:aaa"):
            export_labels(store, catalog, tmp_path / "l.npz")
        done = export_labels(store, catalog, tmp_path / "l.npz", engine_id="v1:1:aaa")
    assert done.per_class == {"star": 3}
    with np.load(done.path) as data:
        assert data["stamps"].shape == (3, 2, 32, 32)


def test_the_label_export_command_prints_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astro-edge ground labels export` writes the file and says how many stamps of each class it holds."""
    from edge.cli import main

    rng = np.random.default_rng(6)
    records = [make_record("n1", 0, i, rng) for i in range(3)]
    write_ground(tmp_path, records)
    with LabelStore(tmp_path) as store:
        for r in records:
            store.add(Label(r.record_id, "comet", "ana", "t", r.engine_id))
    assert main(["ground", "labels", "export", "--ground", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 0
    assert "3 labelled stamps" in capsys.readouterr().out and (tmp_path / "x.npz").exists()
    assert main(["ground", "labels", "export", "--ground", str(tmp_path / "none"), "--out", str(tmp_path / "y.npz")]) == 2
