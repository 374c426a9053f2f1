"""Labels people give downlinked records at the review desk, kept durably, and their export.

``DIR/labels.sqlite`` (WAL, ``synchronous=FULL``: a label is a person's work and is not rebuilt
from anything) holds every label ever given, with who gave it and when; a record's label is the
latest one. Unlike the catalog, this file is the truth for what it holds: back it up with the JSON
lines.

A label is a class the engine has, a new class name (a lowercase word, as ``engines finetune``
takes it) or :data:`ARTEFACT` (not a real object). :func:`export_labels` writes exactly the labels
file ``astro-edge engines finetune --labels`` reads: ``stamps`` (n, channels, 32, 32) float32 as
the records carry them and ``label`` (n class names); artefacts go out as the engine's ``bogus``
class by default.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ConfigError, GroundStoreError
from edge.ground.catalog import Catalog
from edge.ground.index import open_wal
from edge.log import get_logger

__all__ = ["ARTEFACT", "LABELS_NAME", "Export", "Label", "LabelStore", "check_label", "export_labels"]

log = get_logger(__name__)

LABELS_NAME = "labels.sqlite"
#: the label of a detection that is not a real object (a detector or processing artefact)
ARTEFACT = "artefact"
#: what an artefact is called in an exported labels file (the engines' class for detections of nothing)
ARTEFACT_CLASS = "bogus"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS labels (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL, "
    "label TEXT NOT NULL, reviewer TEXT NOT NULL, labelled_time TEXT NOT NULL, engine_id TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS labels_record ON labels (record_id, seq)",
)


@dataclass(frozen=True)
class Label:
    """One label as given: the record, the class name, who, when (UTC ISO 8601), and the engine
    that made the record."""

    record_id: str
    label: str
    reviewer: str
    labelled_time: str
    engine_id: str


def check_label(name: str) -> str:
    """The label as stored, or ConfigError: a lowercase word of letters, digits and underscores
    starting with a letter (at most 32), as a class name of an engine must be."""
    value = name.strip().lower().replace(" ", "_").replace("-", "_")
    if not _NAME.match(value):
        raise ConfigError(f"label {name!r} must be a word of letters, digits and underscores that starts with a "
                          "letter, at most 32 characters", where="label")
    return value


class LabelStore:
    """The ground's labels, in SQLite."""

    def __init__(self, ground_dir: Path) -> None:
        self.path = Path(ground_dir) / LABELS_NAME
        self._lock = threading.Lock()
        try:
            self._db = open_wal(self.path, "FULL", _SCHEMA)
        except sqlite3.Error as exc:
            raise GroundStoreError(f"cannot open the labels {self.path}: {exc}", where=str(self.path)) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, label: Label) -> Label:
        """Store one label (checked); it replaces the record's earlier label, which stays in the history."""
        if not label.reviewer.strip() or len(label.reviewer) > 64:
            raise ConfigError("a label needs the reviewer's name (1 to 64 characters)", where="label")
        stored = Label(label.record_id, check_label(label.label), label.reviewer.strip(), label.labelled_time,
                       label.engine_id)
        try:
            with self._lock:
                self._db.execute("INSERT INTO labels (record_id, label, reviewer, labelled_time, engine_id) "
                                 "VALUES (?, ?, ?, ?, ?)", (stored.record_id, stored.label, stored.reviewer,
                                                             stored.labelled_time, stored.engine_id))
        except sqlite3.Error as exc:
            raise GroundStoreError(f"cannot store the label of {label.record_id}: {exc}", where=str(self.path)) from exc
        log.info("review.labelled", record_id=stored.record_id, label=stored.label, reviewer=stored.reviewer)
        return stored

    def current(self) -> list[Label]:
        """Each labelled record's latest label, in the order they were first given."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record_id, label, reviewer, labelled_time, engine_id FROM labels WHERE seq IN "
                "(SELECT max(seq) FROM labels GROUP BY record_id) ORDER BY seq").fetchall()
        return [Label(*r) for r in rows]

    def latest(self, record_ids: list[str]) -> dict[str, str]:
        """Record id -> its current label, for those of ``record_ids`` that have one (a page of the list)."""
        marks = ",".join("?" * len(record_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT record_id, label FROM labels WHERE seq IN (SELECT max(seq) FROM labels "  # noqa: S608 - placeholders only
                f"WHERE record_id IN ({marks}) GROUP BY record_id)", record_ids).fetchall()
        return dict(rows)

    def of(self, record_id: str) -> list[Label]:
        """Every label a record was given, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT record_id, label, reviewer, labelled_time, engine_id FROM labels "
                                    "WHERE record_id = ? ORDER BY seq", (record_id,)).fetchall()
        return [Label(*r) for r in rows]


@dataclass(frozen=True)
class Export:
    """What an export wrote: stamps per class, and the labels left out with the reason."""

    path: Path
    per_class: dict[str, int]
    left_out: dict[str, int]


def export_labels(labels: LabelStore, catalog: Catalog, out: Path, *, engine_id: str = "",
                  artefact_as: str = ARTEFACT_CLASS) -> Export:
    """Write the labels file ``engines finetune`` takes from each record's latest label.

    Only records of one stamp shape can share a file: with ``engine_id`` only that engine's records
    go out; without it, labels of records of several shapes are refused with the engines named.
    Records the catalog lost or that carry no stamp are left out and counted by reason.
    """
    catalog.catch_up()
    current = labels.current()
    if engine_id:
        current = [lab for lab in current if lab.engine_id == engine_id]
    stamps: list[np.ndarray] = []
    names: list[str] = []
    left_out: Counter[str] = Counter()
    shapes: dict[tuple[int, ...], Counter[str]] = {}
    for lab in current:
        record = catalog.record(lab.record_id)
        if record is None:
            left_out["record not in this ground's files"] += 1
            continue
        if record.stamp is None:
            left_out["record carries no stamp"] += 1
            continue
        stamp = record.stamp.decompress()
        shapes.setdefault(stamp.shape, Counter())[record.engine_id] += 1
        stamps.append(stamp)
        names.append(artefact_as if lab.label == ARTEFACT and artefact_as else lab.label)
    if len(shapes) > 1:
        described = "; ".join(f"{shape}: {dict(engines)}" for shape, engines in shapes.items())
        raise ConfigError(f"labelled records have stamps of several shapes ({described}); give --engine-id to "
                          "export one engine's records", where=str(out))
    if not stamps:
        raise ConfigError(f"no labelled record with a stamp to export (left out: {dict(left_out)})", where=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, stamps=np.stack(stamps).astype(np.float32), label=np.array(names))
    tmp.replace(out)
    per_class = dict(sorted(Counter(names).items()))
    log.info("review.labels_exported", path=str(out), labels=len(names), per_class=per_class,
             left_out=dict(left_out))
    return Export(out, per_class, dict(left_out))
