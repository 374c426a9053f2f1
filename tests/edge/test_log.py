"""Logging: JSON lines off a terminal, stable event names with key-value context."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from edge.log import configure, get_logger


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


def test_json_lines_when_not_a_terminal() -> None:
    """Off a terminal each event is one JSON object with the event name and its context."""
    out = io.StringIO()
    configure(stream=out)
    get_logger("t").info("frame.rejected", seq=7, reason="checksum")
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "frame.rejected"
    assert record["seq"] == 7 and record["reason"] == "checksum"
    assert record["level"] == "info" and "timestamp" in record


def test_level_filters_and_bad_level_is_refused() -> None:
    """Events below the configured level are dropped; an unknown level is a clear error."""
    out = io.StringIO()
    configure(stream=out, level="warning", json=True)
    get_logger("t").info("quiet.event")
    get_logger("t").warning("loud.event")
    assert "quiet.event" not in out.getvalue() and "loud.event" in out.getvalue()
    with pytest.raises(ValueError, match="log level"):
        configure(level="chatty")


def test_console_renderer_when_asked() -> None:
    """json=False gives a readable line, not JSON."""
    out = io.StringIO()
    configure(stream=out, json=False)
    get_logger("t").info("engine.swapped", engine="a")
    line = out.getvalue()
    assert "engine.swapped" in line and "engine=a" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
