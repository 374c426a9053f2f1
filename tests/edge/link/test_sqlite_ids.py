"""The chunked id query shared by the spool and the ground index."""

from __future__ import annotations

import sqlite3

from edge.link.sqlite_ids import IDS_PER_QUERY, ids_present


def test_ids_present_answers_across_many_chunks() -> None:
    """More ids than one statement may bind: every stored one is found, nothing else."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE items (id TEXT PRIMARY KEY)")
    stored = [f"n1-{i:05d}" for i in range(0, 3 * IDS_PER_QUERY, 2)]
    db.executemany("INSERT INTO items VALUES (?)", [(i,) for i in stored])
    asked = [f"n1-{i:05d}" for i in range(3 * IDS_PER_QUERY + 7)]
    assert ids_present(db, "items", asked) == set(stored)
    assert ids_present(db, "items", []) == set()
