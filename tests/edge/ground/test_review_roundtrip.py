"""The loop the review desk closes: records down, labels through the page, export, finetune,
`engine load` on the running node, and the new class sent as unusual by name."""

from __future__ import annotations

import dataclasses
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: the class the starting engine (stampnet-v1: the six ordinary classes) does not have
NEW_CLASS = "lobster_psf"
LABELS_GIVEN = 30


def _stream(node: Any, frames: list[Any], series_id: int, timeout_s: float = 300.0) -> None:
    """Frames through the node's real sockets, as one series numbered from 0, until each is
    processed and everything spooled went down."""
    from edge.testing import LoopbackDaq

    target = node.counters.frames_processed + len(frames)
    sender = LoopbackDaq(node.receiver_endpoint, frames, series_id=series_id)
    end = time.monotonic() + timeout_s
    while node.counters.frames_processed < target or len(node.spool) > 0:
        assert time.monotonic() < end, node.counters.snapshot()
        node.step()
    sender.join(30)


def _on_truth(records: list[Any], truth: Any, family: str, snr_min: float, radius_px: float = 2.5) -> dict[int, Any]:
    """Truth row -> the record within radius_px of it, for the family's truths at S/N >= snr_min."""
    rows = np.flatnonzero((np.asarray(truth["family"]).astype(str) == family)
                          & (np.asarray(truth["snr_expected"], float) >= snr_min))
    out = {}
    for i in rows:
        near = [r for r in records if r.frame == int(truth["frame"][i])
                and np.hypot(r.x - float(truth["x"][i]), r.y - float(truth["y"][i])) <= radius_px]
        if near:
            out[int(i)] = min(near, key=lambda r: np.hypot(r.x - float(truth["x"][i]), r.y - float(truth["y"][i])))
    return out


def _truth(frames: list[Any]) -> dict[str, np.ndarray]:
    """The truth of a series' frames, with each row's frame number in the series."""
    cols = ("frame", "x", "y", "family", "snr_expected")
    return {c: np.concatenate([np.asarray(f.truth[c]) if c != "frame" else np.full(len(f.truth), k)
                               for k, f in enumerate(frames)]) for c in cols}


def test_thirty_labels_given_at_the_desk_teach_a_running_node_a_class_it_lacked(tmp_path: Path, browser: Any,
                                                                               desk: Any) -> None:
    """A node on stampnet-v1 audits every detection of twin frames with lobster-eye sources; 30 of
    them are labelled lobster_psf on the desk's pages in Chromium; the export fine-tunes a new
    engine, `engine load` swaps it into the running node with lobster_psf a class of interest, and
    the next frames send lobster-eye sources down as unusual lobster_psf, and almost nothing else
    under that name."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from edge.cli import main
    from edge.config import config_from_mapping
    from edge.node.assemble import MODELS_DIR
    from edge.node.daemon import NodeDaemon
    from edge.testing import Ground
    from engines.manifest import sha256_file
    from engines.training.finetune import finetune_engine
    from engines.training.train import training_twin_config
    from tests.edge.ground.conftest import submitted
    from twin import simulate_frame

    root = tmp_path / "engines"
    shutil.copytree(MODELS_DIR / "stampnet-v1", root / "stampnet-v1")
    twin = dataclasses.replace(training_twin_config(768, anomalies=(NEW_CLASS,)), n_anomalies_per_family=12)
    before = [simulate_frame(twin, i, 424201) for i in range(5)]
    after = [simulate_frame(twin, i, 424202) for i in range(4)]
    ground = Ground(tmp_path / "ground")
    config = config_from_mapping({
        "node": {"id": "desk-node", "workers": 1},
        "receive": {"address": "tcp://127.0.0.1:0", "queue_policy": "block"},
        "engine": {"path": str(root / "stampnet-v1"), "root": str(root)},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "downlink": {"address": ground.address},
        # the operator opens the audit to gather labels: every detection goes down
        "triage": {"audit_rate": 1.0},
        "log": {"level": "warning"},
    })
    node = NodeDaemon(config)
    node.start()
    try:
        _stream(node, before, series_id=1)
        old_engine = node.engine_id
        truth = _truth(before)
        lobsters = _on_truth([r for r in ground.records() if r.series_id == "1"], truth, NEW_CLASS, snr_min=10.0)
        assert len(lobsters) >= LABELS_GIVEN, len(lobsters)
        chosen = [lobsters[i].record_id for i in sorted(lobsters)[:LABELS_GIVEN]]

        with desk(tmp_path / "ground") as url:
            browser.get(url + "/")
            browser.delete_all_cookies()
            for record_id in chosen:
                browser.get(url + "/record/" + urllib.parse.quote(record_id, safe=""))
                Select(browser.find_element(By.ID, "choice")).select_by_value("new")
                browser.find_element(By.ID, "new-class").send_keys(NEW_CLASS)
                name = browser.find_element(By.ID, "reviewer")
                if not name.get_attribute("value"):
                    name.send_keys("ana")
                assert NEW_CLASS in submitted(browser, "label-save", "saved").text

        labels = tmp_path / "labels.npz"
        assert main(["ground", "labels", "export", "--ground", str(tmp_path / "ground"), "--out", str(labels)]) == 0
        with np.load(labels) as data:
            assert list(data["label"]) == [NEW_CLASS] * LABELS_GIVEN
        new = root / "stampnet-v1-lobster"
        manifest = finetune_engine(root / "stampnet-v1", labels, new, epochs=1, threads=1,
                                   replay_frames=12, eval_frames=3)
        assert manifest.classes[-1] == NEW_CLASS

        loaded = node.handle_command("operator", "engine.load",
                                     {"path": str(new), "sha256": sha256_file(new / "manifest.json")})
        assert loaded["ok"], loaded
        policy = node.handle_command("operator", "set", {
            "audit_rate": 0.002, "classes_of_interest": [*config.triage.classes_of_interest, NEW_CLASS]})
        assert policy["ok"], policy
        _stream(node, after, series_id=2)
    finally:
        node.close()
        ground.close()

    fresh = [r for r in ground.records() if r.engine_id == loaded["engine_id"] and r.series_id == "2"]
    assert fresh and loaded["engine_id"] != old_engine
    truth = _truth(after)
    found = _on_truth(fresh, truth, NEW_CLASS, snr_min=20.0)
    named = [r for r in fresh if r.label == NEW_CLASS and "unusual" in r.reasons]
    is_new = truth["family"].astype(str) == NEW_CLASS

    def on_a_lobster(r: Any, radius_px: float = 6.0) -> bool:
        """The record's nearest truth object is a lobster-eye source (its cross's arms reach a few px)."""
        here = np.flatnonzero(truth["frame"] == r.frame)
        d = np.hypot(truth["x"][here] - r.x, truth["y"][here] - r.y)
        return bool(d.min() <= radius_px and is_new[here[np.argmin(d)]])

    bright = int((is_new & (truth["snr_expected"] >= 20.0)).sum())
    hits = sum(1 for r in found.values() if r.label == NEW_CLASS and "unusual" in r.reasons)
    # the class is learned from 30 stamps on a frozen network and held back to claim at most 0.2 %
    # of ordinary candidates: measured 24 of 48 bright lobster-eye sources, and 29 of the 30
    # records called lobster_psf on one (docs/review.md)
    assert hits >= 0.25 * bright, (hits, bright)
    assert sum(map(on_a_lobster, named)) >= 0.8 * len(named), [(r.x, r.y, r.snr) for r in named]
