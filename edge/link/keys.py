"""CURVE key files for the control and downlink channels (ZeroMQ's own certificate format).

``astro-edge keys new --out DIR --name NAME`` writes ``NAME.key`` (the public key, to hand out)
and ``NAME.key_secret`` (public and secret key, to keep, mode 0600).
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import ConfigError


def new_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair; returns (public file, secret file)."""
    import zmq.auth

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public, secret = (out / f"{name}.key", out / f"{name}.key_secret")
    if public.exists() or secret.exists():
        raise ConfigError(f"{public.name} or {secret.name} already exists; choose another --name", where=str(out))
    pub, sec = zmq.auth.create_certificates(out, name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def load_public_key(path: str | Path) -> bytes:
    """The Z85 public key in a key file (public or secret)."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a CURVE public key: {exc}", where=str(path)) from exc
    return public


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """The (public, secret) Z85 keys in a secret key file."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a CURVE key pair: {exc}", where=str(path)) from exc
    if not secret:
        raise ConfigError("holds no secret key; give the NAME.key_secret file", where=str(path))
    return public, secret
