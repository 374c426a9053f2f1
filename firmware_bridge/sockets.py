"""The one place the frame protocol's sockets are made: options, bind or connect, typed errors.

Imports pyzmq and the error tree only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from edge.errors import TransportError
from edge.liveness import keep_alive

_NAMES: dict[int, str] = {zmq.PUSH: "PUSH", zmq.PULL: "PULL"}


def open_socket(context: zmq.Context[Any], kind: int, address: str, *, bind: bool,
                hwm: int, max_message_bytes: int = -1,
                setup: Callable[[zmq.Socket[Any]], None] | None = None) -> tuple[zmq.Socket[Any], str]:
    """A PUSH or PULL socket with linger 0 and its high-water mark, bound or connected.

    ``max_message_bytes`` (ZMQ_MAXMSGSIZE, -1: no limit) makes libzmq drop the connection of a
    peer that sends a larger message part, before any of it is buffered here. ``setup(sock)``
    runs before bind or connect (CURVE keys, for instance). Returns the socket
    and its endpoint (the port actually taken when ``address`` asked for any).
    """
    sock: zmq.Socket[Any] = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    # the node stops reading the feed on purpose (the block policy): no ZMTP heartbeats here
    keep_alive(sock, heartbeats=False)
    if setup is not None:
        try:
            setup(sock)   # e.g. CURVE (edge.link.curve), which must come before bind or connect
        except BaseException:
            sock.close()
            raise
    try:
        if bind:
            sock.bind(address)
        else:
            sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close()
        raise TransportError(f"cannot {'bind' if bind else 'connect'} {_NAMES.get(kind, kind)} socket "
                             f"({exc}); check the address and that the port is free", where=address) from None
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else address
