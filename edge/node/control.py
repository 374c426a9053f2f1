"""The operators' control channel: a ZeroMQ ROUTER socket, CURVE-encrypted and authenticated.

Requests are two-part messages ``[command, JSON arguments]`` from a DEALER (``astro-edge ctl``);
each gets one reply ``[JSON object]`` with ``ok`` true or false. With CURVE on, a client whose
public key is not in ``[control] allowed_client_keys`` fails the handshake and gets nothing, not
even an error. With CURVE off the node logs ``control.insecure`` at start. Every request is
logged with who sent it (the client's public key, or ``anonymous``). This module owns the socket
and the authenticator; what a command does is the daemon's business.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import zmq

from edge.config import ControlSection
from edge.errors import TransportError
from edge.link.curve import make_curve_client, make_curve_server
from edge.liveness import keep_alive
from edge.log import get_logger

log = get_logger(__name__)

#: every command the node carries out (docs/operations.md); an unknown one is answered with this list
COMMANDS = ("status", "set", "pause", "resume", "flush", "engine.load", "engine.shadow", "engine.rollback",
            "shutdown")


@dataclass(frozen=True)
class ControlRequest:
    """One request: who sent it, the command and its arguments."""

    identity: bytes
    user: str
    command: str
    args: dict[str, Any]


class ControlServer:
    """Owns the control ROUTER socket (and, with CURVE, its authenticator thread)."""

    def __init__(self, section: ControlSection, context: zmq.Context[Any] | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._auth: Any = None
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        keep_alive(self._sock)
        try:
            if section.curve:
                self._auth = make_curve_server(self._ctx, self._sock, section.server_secret_key,
                                               section.allowed_client_keys, "control")
            self._sock.bind(section.address)
        except zmq.ZMQError as exc:
            self.close()
            raise TransportError(f"cannot bind the control socket ({exc})", where=section.address) from None
        except BaseException:
            self.close()
            raise
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if section.curve:
            log.info("control.opened", address=self.endpoint, curve=True,
                     allowed_clients=len(section.allowed_client_keys))
        else:
            log.warning("control.insecure", address=self.endpoint,
                        detail="CURVE is off: anyone who can reach this address can command the node")

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The ROUTER socket, for a caller that waits on it beside other things (``zmq.Poller``)."""
        return self._sock

    def poll(self) -> list[ControlRequest]:
        """Every request waiting now (never blocks); malformed ones get an error reply at once."""
        out: list[ControlRequest] = []
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            identity = frames[0].bytes
            user = self._user(frames[-1])
            parts = [f.bytes for f in frames[1:]]
            try:
                command = parts[0].decode("ascii")
                args = json.loads(parts[1]) if len(parts) > 1 and parts[1] else {}
                if not isinstance(args, dict):
                    raise ValueError("arguments must be a JSON object")
            except (IndexError, UnicodeDecodeError, ValueError) as exc:
                log.warning("control.malformed", user=user, error=str(exc))
                self.reply(identity, {"ok": False, "error": f"malformed request: {exc}"})
                continue
            out.append(ControlRequest(identity, user, command, args))

    @staticmethod
    def _user(frame: Any) -> str:
        # the ZAP handler sets User-Id to the client's key under CURVE; without it there is none
        try:
            return str(frame.get("User-Id") or "anonymous")
        except zmq.ZMQError:
            return "anonymous"

    def reply(self, identity: bytes, answer: dict[str, Any]) -> None:
        """Send one JSON reply to the client that asked."""
        self._sock.send_multipart([identity, json.dumps(answer, default=str).encode()])

    def close(self) -> None:
        """Close the socket and stop the authenticator."""
        if not self._sock.closed:
            self._sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def request(address: str, command: str, args: dict[str, Any] | None = None, *, timeout_ms: int = 5000,
            server_public_key: str | None = None, client_secret_key: str | None = None,
            context: zmq.Context[Any] | None = None) -> dict[str, Any] | None:
    """Send one command and wait for its reply; None when none came (refused key, dead node)."""
    ctx = context or zmq.Context.instance()
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keep_alive(sock)
    try:
        if server_public_key or client_secret_key:
            if not (server_public_key and client_secret_key):
                raise TransportError("CURVE needs both the node's public key and your secret key file",
                                     where=address)
            make_curve_client(sock, client_secret_key, server_public_key)
        sock.connect(address)
        deadline = time.monotonic() + timeout_ms / 1000
        # A DEALER with no connection blocks on send. That happens when the node refuses our CURVE
        # key before the command is queued (ZeroMQ then tears the connection down and does not
        # retry), so the send waits for room only until the request's deadline.
        if not sock.poll(timeout_ms, zmq.POLLOUT):
            return None
        try:
            sock.send_multipart([command.encode("ascii"), json.dumps(args or {}).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not sock.poll(left_ms, zmq.POLLIN):
            return None
        answer: dict[str, Any] = json.loads(sock.recv())
        return answer
    finally:
        sock.close()
