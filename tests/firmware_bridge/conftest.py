"""Socket fixtures in pyzmq's style: one context per test, bound pairs on random ports, linger 0,
and a teardown that fails when a test leaves a socket open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from firmware_bridge.protocol import encode_frame
from firmware_bridge.receiver import FrameReceiver


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A fresh ZeroMQ context; teardown fails if any socket made from it is still open."""
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    # pyzmq keeps a weak set of the context's sockets; a leak is an open one left in it
    leaked = [s for s in list(ctx._sockets) if not s.closed]
    for s in leaked:
        s.close(linger=0)
    ctx.term()
    assert not leaked, f"{len(leaked)} socket(s) left open by the test"


@pytest.fixture
def push_pull(context: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    """A bare PUSH connected to a PULL bound on tcp://127.0.0.1 at a random port, linger 0."""
    pull = context.socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull
    push.close()
    pull.close()


@pytest.fixture
def receiver(context: zmq.Context[Any]) -> Iterator[FrameReceiver]:
    """A FrameReceiver bound on tcp://127.0.0.1 at a random port."""
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=64, context=context) as rx:
        yield rx


@pytest.fixture
def raw_push(context: zmq.Context[Any], receiver: FrameReceiver) -> Iterator[zmq.Socket[Any]]:
    """A bare PUSH socket connected to ``receiver``, for sending arbitrary bytes."""
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(receiver.endpoint)
    yield push
    push.close()


def _good_frame(seq: int = 0, *, series_id: int = 1, shape: tuple[int, ...] = (6, 5),
               dtype: str = "<u2", compression: str = "none") -> list[bytes]:
    """A valid frame message with deterministic pixels, parts as bytes."""
    pixels = (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)
    parts = encode_frame(pixels, detector_id="cam-test", series_id=series_id, seq=seq,
                         start_utc="2026-11-28T10:00:00.250Z", exposure_s=30.0,
                         compression=compression, keywords={"FILTER": "r"})
    return [bytes(p) for p in parts]


@pytest.fixture
def make_frame() -> Any:
    """A factory of valid frame messages (parts as bytes) with deterministic pixels."""
    return _good_frame


@pytest.fixture
def m13_path(real_data: Path) -> Path:
    """The raw uint16 M13 frame (BZERO 32768) from tests/data/real."""
    return real_data / "m13-raw" / "M13_blue_0001.fits"
