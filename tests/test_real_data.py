"""The real frames the suite reads live in the repository, intact, with their provenance beside them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

REAL = Path(__file__).resolve().parent / "data" / "real"


def _listed() -> dict[str, str]:
    text = (REAL / "README.md").read_text(encoding="utf-8")
    return {m.group(2): m.group(1) for m in re.finditer(r"^([0-9a-f]{64})  (\S+)$", text, re.MULTILINE)}


def test_every_real_file_matches_the_sha256_its_readme_lists() -> None:
    """Each file under tests/data/real has the sha256 the README lists, and the README lists every file."""
    listed = _listed()
    present = {p.relative_to(REAL).as_posix() for p in REAL.rglob("*") if p.is_file() and p.name != "README.md"}
    assert present == set(listed)
    for rel, digest in listed.items():
        assert hashlib.sha256((REAL / rel).read_bytes()).hexdigest() == digest, rel


def test_every_real_folder_names_its_source_and_license() -> None:
    """Every folder of real data has a row in the README naming its source repository and license."""
    text = (REAL / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| ([\w-]+)/ \|.*$", text, re.MULTILINE)}
    folders = {p.name for p in REAL.iterdir() if p.is_dir()}
    assert folders == set(rows)
    for row in rows.values():
        source, license_ = row.split("|")[2], row.split("|")[-2]
        assert "@" in source and license_.strip()
