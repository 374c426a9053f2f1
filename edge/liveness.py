"""Dead-peer detection on every ZeroMQ link of the project, set in one place.

A TCP connection whose peer vanished without closing it (power cut, cable pulled, a NAT that
forgot it) looks alive to both ends until something is written to it. Every socket of the frame
feed, the downlink, the control channel and housekeeping therefore gets:

- ZMTP heartbeats (not on the frame feed, see :func:`keep_alive`): a PING every
  ``heartbeat_ms``; a connection that has heard nothing for three intervals is closed
  (``ZMQ_HEARTBEAT_IVL``, ``ZMQ_HEARTBEAT_TIMEOUT``, and ``ZMQ_HEARTBEAT_TTL`` asking the peer
  to do the same);
- TCP keepalive as the second line (idle 30 s, then 3 probes 10 s apart) for peers that do not
  answer heartbeats;
- reconnects that back off: 100 ms after a drop, doubling to 5 s for a peer that stays away.

This module imports only pyzmq, so every package of the project may use it.
"""

from __future__ import annotations

from typing import Any

import zmq

__all__ = ["DEFAULT_HEARTBEAT_MS", "RECONNECT_IVL_MAX_MS", "RECONNECT_IVL_MS", "keep_alive"]

DEFAULT_HEARTBEAT_MS = 1000
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000


def keep_alive(sock: zmq.Socket[Any], heartbeat_ms: int = DEFAULT_HEARTBEAT_MS, *,
               heartbeats: bool = True) -> None:
    """Set heartbeats, TCP keepalive and reconnect backoff on ``sock`` (before bind or connect).

    ``heartbeats=False`` leaves ZMTP heartbeats off, for a link whose reader may stop reading on
    purpose (the frame feed under the ``block`` queue policy): libzmq then stops reading the
    connection too, the peer's PINGs go unanswered, and a heartbeat timeout would close a healthy,
    back-pressured connection and lose the message in it. TCP keepalive, answered by the kernel,
    still finds a dead peer there.
    """
    if heartbeat_ms < 10:
        raise ValueError(f"heartbeat_ms must be >= 10, got {heartbeat_ms}")
    if heartbeats:
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat_ms))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * int(heartbeat_ms))
        sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * int(heartbeat_ms))
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
