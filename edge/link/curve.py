"""CURVE on a socket, in one place: the server side (key pair plus the allowed client keys,
checked by a ZAP authenticator thread) and the client side (own key pair plus the server's
public key). Used by the control channel and the downlink.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from edge.link.keys import load_keypair, load_public_key
from edge.log import get_logger

log = get_logger(__name__)


class _AllowedKeys:
    """ZAP callback: a client may connect when its public key is listed."""

    def __init__(self, keys: set[bytes], channel: str) -> None:
        self.keys = keys
        self.channel = channel

    def callback(self, domain: str, key: bytes) -> bool:
        # pyzmq hands the client's key Z85-encoded, as key files hold it
        allowed = key in self.keys
        if not allowed:
            log.warning(f"{self.channel}.refused", client=key.decode("ascii", "replace"))
        return allowed


def make_curve_server(context: zmq.Context[Any], sock: zmq.Socket[Any], secret_key_file: str | Path,
                      allowed_key_files: Sequence[str | Path], channel: str) -> Any:
    """Turn ``sock`` (not yet bound) into a CURVE server that admits only the listed client keys.

    Returns the authenticator thread; stop it when the socket closes.
    """
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = load_keypair(secret_key_file)
    allowed = {load_public_key(p) for p in allowed_key_files}
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowedKeys(allowed, channel))
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return auth


def make_curve_client(sock: zmq.Socket[Any], secret_key_file: str | Path, server_public_key_file: str | Path) -> None:
    """Turn ``sock`` (not yet connected) into a CURVE client of the server whose key is given."""
    public, secret = load_keypair(secret_key_file)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = load_public_key(server_public_key_file)
