"""Who made an engine: Ed25519 signatures of an engine folder's manifest.

The manifest lists the sha256 of every file of the folder, so a signature of ``manifest.json``
covers the whole engine. ``sign_engine(folder, signing_key_file)`` writes ``manifest.json.sig``:

    {"algorithm": "ed25519", "verify_key": "<64 hex digits>", "signature": "<128 hex digits>"}

``check_signature(folder, trusted_key_files)`` accepts the folder only when that file holds a
valid signature of the manifest's exact bytes by one of the trusted keys, and raises
:class:`~edge.errors.EngineOriginError` otherwise. Key files are one line of hex:
``NAME.sign_key`` (the 32-byte seed, secret, mode 0600) and ``NAME.verify_key`` (the public key),
written by :func:`new_signing_key` (``astro-edge keys new --signing``). PyNaCl (libsodium) does the
cryptography.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from edge.errors import ConfigError, EngineOriginError

__all__ = ["SIGNATURE_FILE", "check_signature", "new_signing_key", "sign_engine"]

SIGNATURE_FILE = "manifest.json.sig"


def new_signing_key(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair; returns (NAME.verify_key to hand out, NAME.sign_key to keep)."""
    from nacl.signing import SigningKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verify, sign = out / f"{name}.verify_key", out / f"{name}.sign_key"
    if verify.exists() or sign.exists():
        raise ConfigError(f"{verify.name} or {sign.name} already exists; choose another --name", where=str(out))
    key = SigningKey.generate()
    fd = os.open(sign, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(bytes(key).hex() + "\n")
    verify.write_text(bytes(key.verify_key).hex() + "\n", encoding="ascii")
    return verify, sign


def _key_bytes(path: str | Path, what: str) -> bytes:
    try:
        raw = bytes.fromhex(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read an Ed25519 {what} (one line of hex): {exc}", where=str(path)) from exc
    if len(raw) != 32:
        raise ConfigError(f"an Ed25519 {what} is 32 bytes, this file holds {len(raw)}", where=str(path))
    return raw


def sign_engine(folder: str | Path, signing_key_file: str | Path) -> Path:
    """Sign ``folder/manifest.json`` with the key in ``signing_key_file``; the signature file written."""
    from nacl.signing import SigningKey

    folder = Path(folder)
    manifest = (folder / "manifest.json").read_bytes()
    key = SigningKey(_key_bytes(signing_key_file, "signing key"))
    signed = key.sign(manifest)
    path = folder / SIGNATURE_FILE
    path.write_text(json.dumps({"algorithm": "ed25519", "verify_key": bytes(key.verify_key).hex(),
                                "signature": signed.signature.hex()}) + "\n", encoding="ascii")
    return path


def check_signature(folder: str | Path, trusted_key_files: Sequence[str | Path]) -> str:
    """The hex verify key that signed ``folder``'s manifest, when it is one of the trusted keys;
    EngineOriginError when the signature is missing, malformed, by another key or does not match."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    folder = Path(folder)
    trusted = {_key_bytes(p, "verify key").hex() for p in trusted_key_files}
    sig_file = folder / SIGNATURE_FILE
    if not sig_file.is_file():
        raise EngineOriginError(f"no {SIGNATURE_FILE}: this node loads only engines signed by a trusted key "
                                "(astro-edge engines sign)", where=str(folder))
    try:
        data = json.loads(sig_file.read_text(encoding="ascii"))
        key_hex, signature = str(data["verify_key"]), bytes.fromhex(str(data["signature"]))
        if data.get("algorithm") != "ed25519":
            raise ValueError(f"algorithm {data.get('algorithm')!r} is not ed25519")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineOriginError(f"{SIGNATURE_FILE} cannot be read: {exc}", where=str(folder)) from exc
    if key_hex not in trusted:
        raise EngineOriginError(f"the manifest is signed by key {key_hex[:16]}..., which this node does not "
                                "trust ([engine] trusted_keys)", where=str(folder))
    try:
        VerifyKey(bytes.fromhex(key_hex)).verify((folder / "manifest.json").read_bytes(), signature)
    except (BadSignatureError, ValueError) as exc:
        raise EngineOriginError("the signature does not match manifest.json: the manifest changed after it "
                                "was signed, or the signature is forged", where=str(folder)) from exc
    return key_hex
