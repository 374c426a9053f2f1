"""The alert schema shipped with the package: it parses, every field says what it is, and it keeps
ZTF's names where the meaning is the same."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro

from edge.alerts import SCHEMA_NAME, SCHEMA_VERSION, load_schema, schema_file

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "edge" / "alerts" / "schema"


def records_in(schema: Any) -> Iterator[dict[str, Any]]:
    """Every record type declared in a schema, nested ones included."""
    if isinstance(schema, list):
        for branch in schema:
            yield from records_in(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            yield schema
            for field in schema["fields"]:
                yield from records_in(field["type"])
        elif schema.get("type") == "array":
            yield from records_in(schema["items"])


def test_the_shipped_schema_parses_and_is_the_current_version() -> None:
    """The package data's schema parses with fastavro, is astro_edge.alert, and its file name and
    version attribute carry SCHEMA_VERSION."""
    raw = json.loads(schema_file())
    parsed = fastavro.parse_schema(raw)
    assert parsed["name"] == SCHEMA_NAME == "astro_edge.alert"
    assert raw["version"] == SCHEMA_VERSION
    assert (SCHEMA_DIR / f"{SCHEMA_NAME}-{SCHEMA_VERSION}.avsc").is_file()
    assert load_schema() is load_schema()  # parsed once per process


def test_every_field_and_record_has_a_doc() -> None:
    """Each record type and each of its fields, nested ones included, has a non-empty doc string."""
    raw = json.loads(schema_file())
    records = list(records_in(raw))
    assert {r["name"] for r in records} == {"alert", "candidate", "uncertainty", "classProbability",
                                           "provenance", "cutout", "packedStamp"}
    undocumented = [(r["name"], f["name"]) for r in records for f in r["fields"] if not f.get("doc", "").strip()]
    assert undocumented == []
    assert all(r.get("doc", "").strip() for r in records)
    assert sum(len(r["fields"]) for r in records) > 50


def test_the_layout_keeps_ztfs_names_where_the_meaning_is_the_same() -> None:
    """Like a ZTF packet: schemavsn, publisher, a long candid, a candidate block with its candid, ra
    and dec, and cut-outs as {fileName, stampData} records that may be null."""
    raw = json.loads(schema_file())
    fields = {f["name"]: f for f in raw["fields"]}
    assert list(fields)[:5] == ["schemavsn", "publisher", "candid", "recordId", "candidate"]
    assert fields["candid"]["type"] == "long"
    candidate = {f["name"]: f["type"] for f in fields["candidate"]["type"]["fields"]}
    assert candidate["candid"] == "long"
    assert candidate["ra"] == candidate["dec"] == ["null", "double"]
    cutout = fields["cutoutScience"]["type"][1]
    assert cutout["name"] == "cutout" and [f["name"] for f in cutout["fields"]] == ["fileName", "stampData"]
    assert fields["cutoutMask"]["type"] == ["null", "astro_edge.alert.cutout"]
    optional = [f["name"] for f in raw["fields"] if isinstance(f["type"], list)]
    assert all("default" in fields[name] for name in optional)
