"""The downlink's wire, shared by both ends: the message parts and the two sockets.

A data message is ``[TAG, DATA, msgpack of one record or summary]`` or ``[TAG, ZDATA, zstd frame
of it]``; an ack is ``[TAG, ACK, msgpack list of ids]``. The node's DEALER connects to the
ground's ROUTER; these two factories are the only places the channel's sockets are made, so
CURVE, linger and queue limits are set in one place. ``docs/downlink.md`` is the spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from edge.errors import RecordDecodeError, TransportError
from edge.link.curve import make_curve_client, make_curve_server
from edge.liveness import DEFAULT_HEARTBEAT_MS, keep_alive

__all__ = ["ACK", "DATA", "HWM", "TAG", "ZDATA", "decode_ack", "encode_ack", "ground_socket", "node_socket"]

TAG = b"astro-edge.downlink.1"
DATA = b"data"
ZDATA = b"zdata"
ACK = b"ack"
#: messages either end queues before it refuses more
HWM = 1000


def node_socket(context: zmq.Context[Any], address: str,
                curve: tuple[str, str] | None = None,
                heartbeat_ms: int = DEFAULT_HEARTBEAT_MS) -> zmq.Socket[Any]:
    """The node's end of the downlink: a DEALER connected to ``address``, linger 0.

    ``curve`` = (this node's NAME.key_secret, the ground's NAME.key) makes it a CURVE client.
    """
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        make_curve_client(sock, curve[0], curve[1])
    # queue only on live connections: with no ground, send() refuses and the spool keeps the record
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, HWM)
    # a ground that vanished without closing is dropped after three silent heartbeats; sends are
    # then refused (IMMEDIATE) and the records stay spooled until the reconnect
    keep_alive(sock, heartbeat_ms)
    try:
        sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close()
        raise TransportError(f"cannot connect the downlink: {exc}; check the address",
                             where=address) from exc
    return sock


def ground_socket(context: zmq.Context[Any], address: str,
                  curve: tuple[str, Sequence[str]] | None = None,
                  heartbeat_ms: int = DEFAULT_HEARTBEAT_MS) -> tuple[zmq.Socket[Any], Any]:
    """The ground's end of the downlink: a ROUTER bound to ``address``, linger 0.

    ``curve`` = (the ground's NAME.key_secret, the nodes' NAME.key files allowed in) makes it a
    CURVE server; the authenticator thread comes back with the socket (None without CURVE).
    """
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, HWM)
    keep_alive(sock, heartbeat_ms)
    auth = None
    try:
        if curve is not None:
            auth = make_curve_server(context, sock, curve[0], curve[1], "ground")
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close()
        if auth is not None:
            auth.stop()
        raise TransportError(f"cannot bind the ground receiver: {exc}; is the port in use?",
                             where=address) from exc
    return sock, auth


def encode_ack(ids: list[str]) -> list[bytes]:
    """The message parts of an ack for ``ids`` (without the ROUTER's identity part)."""
    return [TAG, ACK, msgpack.packb(ids, use_bin_type=True)]


def decode_ack(parts: list[bytes]) -> list[str]:
    """The ids of an ack message; RecordDecodeError when it is not one."""
    if len(parts) != 3 or parts[0] != TAG or parts[1] != ACK:
        raise RecordDecodeError(f"not a downlink ack ({len(parts)} parts)", where="downlink")
    try:
        ids = msgpack.unpackb(parts[2], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RecordDecodeError(f"ack payload is not msgpack: {exc}", where="downlink") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RecordDecodeError("ack payload is not a list of ids", where="downlink")
    return ids
