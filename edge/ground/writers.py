"""The ground's files: their names, the FITS table of each UTC day of records, and the repair of
a last line a crash left without its newline.

The JSON lines are the ground's truth; a day's FITS table (one row per record, stamps only in the
JSON lines) is rebuilt from them whenever it is missing or short. Pure file work: no socket, no
index, no clock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.codec import from_dict, read_jsonl
from edge.errors import RecordError
from edge.ground.index import scan_lines
from edge.log import get_logger
from edge.records import DownlinkRecord

__all__ = ["FITS_PATTERN", "FRAMES_NAME", "RECORDS_NAME", "drop_partial_line", "fits_rows", "records_table",
           "rows_by_day", "rows_table", "stack", "write_fits", "write_table"]

log = get_logger(__name__)

RECORDS_NAME = "downlink.jsonl"
FRAMES_NAME = "frames.jsonl"
#: the FITS table of the records received on one UTC day (``day`` is YYYYMMDD)
FITS_PATTERN = "downlink-{day}.fits"


def drop_partial_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline: it was never acknowledged, so the
    node sends it again, and appending to it would spoil the next line too."""
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        while True:
            fh.seek(size - block)
            tail = fh.read(block)
            cut = tail.rfind(b"\n")
            if cut >= 0 or block == size:
                break
            block = min(size, block * 2)
        keep = size - block + cut + 1 if cut >= 0 else 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("ground.partial_line_dropped", path=str(path), bytes=size - keep)


# (column, dtype, unit); dtype None: a string column. FITS has no unit for electrons: the
# flux columns keep theirs in their names (flux_e, flux_err_e)
_COLUMNS: tuple[tuple[str, str | None, str | None], ...] = (
    ("record_id", None, None), ("node_id", None, None), ("detector_id", None, None),
    ("series_id", None, None), ("frame", "i8", None), ("index", "i8", None),
    ("frame_time", None, None), ("processed_time", None, None), ("received_time", None, None),
    ("x", "f8", "pix"), ("y", "f8", "pix"), ("x_err", "f8", "pix"), ("y_err", "f8", "pix"),
    ("ra", "f8", "deg"), ("dec", "f8", "deg"), ("label", None, None), ("confidence", "f8", None),
    ("probs", None, None), ("entropy", "f8", None), ("aleatoric", "f8", None),
    ("epistemic", "f8", None), ("anomaly_score", "f8", None), ("anomaly_pvalue", "f8", None),
    ("snr", "f8", None), ("flux_e", "f8", None), ("flux_err_e", "f8", None),
    ("a_px", "f8", "pix"), ("b_px", "f8", "pix"), ("theta_rad", "f8", "rad"), ("flags", "i8", None),
    ("new", "?", None), ("reasons", None, None), ("priority", "f8", None),
    ("policy_version", "i8", None), ("engine_id", None, None), ("calibration_id", None, None),
    ("blend_lr", "f8", None), ("blend_sep_px", "f8", "pix"), ("blend_flux_ratio", "f8", None),
)


def fits_rows(path: Path) -> int | None:
    """Rows of a FITS table written here, or None when it is missing or unreadable."""
    from astropy.io import fits

    try:
        return int(fits.getheader(path, 1)["NAXIS2"])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def rows_by_day(jsonl_path: Path, days: set[str], start: int = 0) -> dict[str, list[Any]]:
    """The FITS rows of the records received on ``days``, read from the JSON lines from byte
    ``start`` on (only those days' lines are decoded in full)."""
    grouped: dict[str, list[tuple[DownlinkRecord, str | None]]] = {}
    if not jsonl_path.exists():
        return {}
    for (_, day, _), data, _ in scan_lines(jsonl_path, start):
        if day not in days:
            continue
        try:
            msg = from_dict(data)
        except RecordError:
            continue  # read_jsonl skips and counts these lines too
        if isinstance(msg, DownlinkRecord):
            grouped.setdefault(day, []).append((msg, data.get("received_time")))
    return {day: [rows_table(rows)] for day, rows in grouped.items()}


def rows_table(rows: Sequence[tuple[DownlinkRecord, str | None]]) -> Any:
    """FITS rows of (record, received_time) pairs as an astropy Table (ra/dec and blend_* NaN where None;
    probs as JSON; reasons comma-separated)."""
    from astropy.table import Table

    table = Table()
    for name, dtype, unit in _COLUMNS:
        values: list[Any] = []
        for rec, received in rows:
            if name == "received_time":
                values.append(received or "")
            elif name == "probs":
                values.append(json.dumps(rec.probs, separators=(",", ":")))
            elif name == "reasons":
                values.append(",".join(rec.reasons))
            elif name in ("ra", "dec", "blend_lr", "blend_sep_px", "blend_flux_ratio"):
                v = getattr(rec, name)
                values.append(np.nan if v is None else v)
            else:
                values.append(getattr(rec, name))
        arr = np.array(values, dtype=dtype if dtype else "U") if values else np.zeros(0, dtype=dtype or "U1")
        table[name] = arr
        if unit:
            table[name].unit = unit
    return table


def records_table(path: str | Path) -> Any:
    """Every record of a ``downlink.jsonl`` as one astropy Table (the columns of the ground's FITS files)."""
    result = read_jsonl(path)
    return rows_table([(m, t) for m, t in zip(result.messages, result.received_times, strict=True)
                        if isinstance(m, DownlinkRecord)])


def stack(parts: list[Any]) -> Any:
    """One table of a day's row tables."""
    from astropy.table import vstack

    return vstack(parts, metadata_conflicts="silent") if len(parts) > 1 else parts[0]


def write_table(table: Any, fits_path: Path) -> None:
    tmp = fits_path.with_name(fits_path.name + ".tmp")
    table.write(tmp, format="fits", overwrite=True)
    os.replace(tmp, fits_path)


def write_fits(jsonl_path: str | Path, fits_path: str | Path) -> None:
    """Write every record of ``jsonl_path`` to ``fits_path`` as one binary table, atomically
    (the whole file at once, e.g. to rebuild one table of a mission offline)."""
    write_table(records_table(jsonl_path), Path(fits_path))
