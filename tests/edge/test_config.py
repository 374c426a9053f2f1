"""The node config: TOML to one frozen tree, every problem reported at once."""

from __future__ import annotations

import dataclasses

import pytest

from edge.config import NodeConfig, config_from_mapping, load_config
from edge.errors import ConfigError


def test_defaults_when_no_file() -> None:
    """Without a file the node runs on documented defaults."""
    cfg = load_config(None)
    assert isinstance(cfg, NodeConfig)
    assert cfg.receive.queue_policy == "drop_oldest"
    assert cfg.detect is not None and cfg.triage is not None


def test_a_good_file_becomes_a_frozen_tree(tmp_path) -> None:
    """Values from the file land in their sections, ints widen to floats, and the tree is frozen."""
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nid = "lab-7"\n[receive]\nqueue_policy = "block"\nqueue_frames = 8\n'
        "[catalog]\nmin_match_radius_arcsec = 2\n"
    )
    cfg = load_config(path)
    assert cfg.node.id == "lab-7" and cfg.receive.queue_policy == "block" and cfg.receive.queue_frames == 8
    assert cfg.catalog.min_match_radius_arcsec == 2.0 and isinstance(cfg.catalog.min_match_radius_arcsec, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.id = "other"  # type: ignore[misc]


def test_every_bad_key_is_named_in_one_error() -> None:
    """Unknown sections, unknown keys, wrong types and refused values all appear in one message."""
    data = {
        "nodes": {},
        "receive": {"queue_policy": "lose_everything", "adress": "tcp://x"},
        "engine": {"threads": "two"},
        "spool": {"max_bytes": 10},
    }
    with pytest.raises(ConfigError) as exc:
        config_from_mapping(data, where="node.toml")
    text = str(exc.value)
    assert text.startswith("node.toml:")
    for needle in ("[nodes]", "receive.adress", "queue_policy must be one of", "engine.threads", "[spool]"):
        assert needle in text, needle
    assert "5 problem(s)" in text


def test_refused_value_is_explained() -> None:
    """A value the section refuses says what is allowed."""
    with pytest.raises(ConfigError, match="queue_policy must be one of"):
        config_from_mapping({"receive": {"queue_policy": "lose_everything"}})


def test_downlink_compression_is_a_shipped_dictionary_or_none() -> None:
    """The node compresses with the shipped dictionary by default; "none" turns it off; anything
    else is refused with the names it could be."""
    assert config_from_mapping({}).downlink.compression == "zstd-dict-1"
    assert config_from_mapping({"downlink": {"compression": "none"}}).downlink.compression == "none"
    with pytest.raises(ConfigError, match=r"compression must be one of \['none', 'zstd-dict-1'\]"):
        config_from_mapping({"downlink": {"compression": "gzip"}})


def test_unreadable_and_invalid_files_are_config_errors(tmp_path) -> None:
    """A missing file and a file that is not TOML give a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as exc:
        load_config(bad)
    assert str(bad) in str(exc.value)


def test_the_mmap_threshold_is_on_by_default_and_bounded() -> None:
    """Frame-sized blocks are given back by default; 0 keeps the C library's own behaviour; a
    threshold glibc would refuse is a config error, not a surprise at start."""
    assert config_from_mapping({}).node.mmap_threshold_kib == 4096
    assert config_from_mapping({"node": {"mmap_threshold_kib": 0}}).node.mmap_threshold_kib == 0
    with pytest.raises(ConfigError, match="mmap_threshold_kib must be 0"):
        config_from_mapping({"node": {"mmap_threshold_kib": 65536}})


def test_workers_are_replaced_after_a_bounded_number_of_frames_by_default() -> None:
    """Workers are recycled by default; 0 keeps them for the node's lifetime; a negative limit is
    a config error naming the key."""
    assert config_from_mapping({}).node.worker_max_frames == 20000
    assert config_from_mapping({"node": {"worker_max_frames": 0}}).node.worker_max_frames == 0
    with pytest.raises(ConfigError, match="worker_max_frames must be >= 0"):
        config_from_mapping({"node": {"worker_max_frames": -1}})


def test_the_engine_batch_defaults_to_the_measured_one_and_refuses_a_negative_size() -> None:
    """[engine] batch_size 0 (the default) means the batch engines build measured; a negative
    size is a config error naming the key."""
    assert config_from_mapping({}).engine.batch_size == 0
    assert config_from_mapping({"engine": {"batch_size": 64}}).engine.batch_size == 64
    with pytest.raises(ConfigError, match="batch_size"):
        config_from_mapping({"engine": {"batch_size": -1}})
