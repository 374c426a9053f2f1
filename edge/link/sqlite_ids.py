"""The one query the node's spool and the ground's index share: which of many ids a table holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

__all__ = ["IDS_PER_QUERY", "ids_present"]

#: ids bound in one statement: SQLite before 3.32 allows at most 999 parameters
IDS_PER_QUERY = 500


def ids_present(db: sqlite3.Connection, table: str, ids: Sequence[str]) -> set[str]:
    """The ids among ``ids`` that ``table`` (one of the caller's own tables, with an ``id``
    column) holds, asked in chunks of :data:`IDS_PER_QUERY`."""
    found: set[str] = set()
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start:start + IDS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT id FROM {table} WHERE id IN ({marks})"  # noqa: S608 - the callers' own table names; ids bound
        found.update(r[0] for r in db.execute(query, chunk))
    return found
