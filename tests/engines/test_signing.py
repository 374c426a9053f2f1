"""Ed25519 signatures of engine manifests: who made an engine, checked before a node loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import ConfigError, EngineOriginError
from engines.signing import SIGNATURE_FILE, check_signature, new_signing_key, sign_engine
from engines.testing import write_tiny_engine


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny engine signed by the key "maker", and that key's verify and sign files."""
    engine = write_tiny_engine(tmp_path / "tiny")
    verify, sign = new_signing_key(tmp_path / "keys", "maker")
    sign_engine(engine, sign)
    return engine, verify, sign


def test_a_signed_engine_verifies_only_against_its_key_and_only_unchanged(signed, tmp_path: Path) -> None:
    engine, verify, sign = signed
    assert check_signature(engine, [verify]) == bytes.fromhex(verify.read_text().strip()).hex()
    assert oct(sign.stat().st_mode & 0o777) == "0o600"
    other_verify, _ = new_signing_key(tmp_path / "keys", "stranger")
    with pytest.raises(EngineOriginError, match="does not trust"):
        check_signature(engine, [other_verify])
    manifest = engine / "manifest.json"
    data = json.loads(manifest.read_text())
    data["version"] = "9.9"   # a manifest edited after signing (e.g. to point at other files)
    manifest.write_text(json.dumps(data))
    with pytest.raises(EngineOriginError, match="does not match"):
        check_signature(engine, [verify])
    (engine / SIGNATURE_FILE).unlink()
    with pytest.raises(EngineOriginError, match="no manifest.json.sig"):
        check_signature(engine, [verify])
    with pytest.raises(ConfigError, match="already exists"):
        new_signing_key(tmp_path / "keys", "maker")


def test_the_sign_command_writes_a_signature_the_check_accepts(tmp_path: Path) -> None:
    engine = write_tiny_engine(tmp_path / "tiny")
    run = [sys.executable, "-m", "edge.cli"]
    subprocess.run([*run, "keys", "new", "--signing", "--out", str(tmp_path / "k"), "--name", "lab"],
                   check=True, capture_output=True)
    out = subprocess.run([*run, "engines", "sign", "--model", str(engine), "--key", str(tmp_path / "k" / "lab.sign_key")],
                         check=True, capture_output=True, text=True)
    assert SIGNATURE_FILE in out.stdout
    check_signature(engine, [tmp_path / "k" / "lab.verify_key"])
