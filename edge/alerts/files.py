"""Alert packets in Avro object container files, the form ZTF and Rubin ship to brokers.

The schema comes from the package data (``edge/alerts/schema/astro_edge.alert-MAJOR.MINOR.avsc``)
and is parsed once. :func:`write_alerts` writes a file whole or not at all (a temporary file,
fsync, rename); :func:`read_packets` reads any 1.x file through this version's schema, so fields a
later minor version added are dropped and fields it lacks take their defaults. fastavro's errors
become typed ones here.

Shell: reads and writes the files it is given and logs what it did.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.types import Schema

from edge.alerts.packet import SCHEMA_NAME, SCHEMA_VERSION, from_alert, to_alert
from edge.errors import RecordDecodeError, RecordVersionError
from edge.log import get_logger
from edge.records import DownlinkRecord

__all__ = ["CODEC", "load_schema", "read_alerts", "read_packets", "schema_file", "write_alerts"]

log = get_logger(__name__)

#: the container's block codec: deflate is in every Avro library (snappy needs a compiled module)
CODEC = "deflate"


def schema_file(version: str = SCHEMA_VERSION) -> str:
    """The text of the schema file of ``version``, from the package data."""
    name = f"{SCHEMA_NAME}-{version}.avsc"
    return (resources.files("edge.alerts") / "schema" / name).read_text(encoding="utf-8")


@cache
def load_schema(version: str = SCHEMA_VERSION) -> Schema:
    """The parsed Avro schema of alert packets ``version``; parsed once per process."""
    return fastavro.parse_schema(json.loads(schema_file(version)))


def write_alerts(records: Iterable[DownlinkRecord], path: str | Path, *,
                 received_times: Mapping[str, str] | None = None) -> int:
    """Write one alert packet per record to the Avro file ``path`` (replaced whole); the number
    written. ``received_times``: record id -> when the ground stored it, where known."""
    out = Path(path)
    times = received_times or {}
    written = 0

    def packets() -> Iterator[dict[str, Any]]:
        nonlocal written
        for rec in records:
            yield to_alert(rec, received_time=times.get(rec.record_id))
            written += 1

    part = out.with_name(out.name + ".part")
    try:
        with part.open("wb") as fh:
            fastavro.writer(fh, load_schema(), packets(), codec=CODEC)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.info("alerts.written", path=str(out), alerts=written, bytes=out.stat().st_size)
    return written


def read_packets(path: str | Path) -> Iterator[dict[str, Any]]:
    """The alert packets of an Avro file, as maps of this version's schema; RecordDecodeError when
    the file is not Avro or is damaged, RecordVersionError when it holds other packets."""
    where = str(path)
    major = SCHEMA_VERSION.split(".")[0]
    with Path(path).open("rb") as fh:
        try:
            reader = fastavro.reader(fh)
        except (ValueError, EOFError, StopIteration) as exc:
            raise RecordDecodeError(f"not an Avro container file: {exc}", where=where) from exc
        writer = reader.writer_schema if isinstance(reader.writer_schema, dict) else {}
        name = str(writer.get("name"))
        if "." not in name and writer.get("namespace"):
            name = f"{writer['namespace']}.{name}"
        if name != SCHEMA_NAME:
            raise RecordVersionError(f"holds {name!r} packets, not {SCHEMA_NAME}", where=where)
        # a writer that drops the schema's version attribute is judged by schema resolution alone
        version = writer.get("version")
        if version is not None and str(version).split(".")[0] != major:
            raise RecordVersionError(f"alert schema version {version!r} is not {major}.x; upgrade "
                                     "the reader to read it", where=where)
        fh.seek(0)
        try:
            for packet in fastavro.reader(fh, reader_schema=load_schema()):
                # the schema is a record, so every datum is a map (fastavro types it as any Avro value)
                yield cast(dict[str, Any], packet)
        except SchemaResolutionError as exc:
            raise RecordVersionError(f"packets do not resolve to alert schema {SCHEMA_VERSION}: {exc}",
                                     where=where) from exc
        except (ValueError, EOFError, KeyError, TypeError, zlib.error) as exc:
            # fastavro says a damaged block in its own words (zlib, EOF, sync marker): say which file
            raise RecordDecodeError(f"damaged Avro data: {type(exc).__name__}: {exc}", where=where) from exc


def read_alerts(path: str | Path) -> list[DownlinkRecord]:
    """The downlink records of an alert file, exactly as they were written."""
    records = [from_alert(packet) for packet in read_packets(path)]
    log.debug("alerts.read", path=str(path), alerts=len(records))
    return records


#: the Content-Type of one packet without a container (a message on a stream)
PACKET_CONTENT_TYPE = f"application/avro; schema={SCHEMA_NAME}-{SCHEMA_VERSION}"


def encode_packet(record: DownlinkRecord, *, received_time: str | None = None) -> bytes:
    """One alert packet as Avro binary without a container (as a stream carries it: the reader
    knows the schema from the message's Content-Type, :data:`PACKET_CONTENT_TYPE`)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schema(), to_alert(record, received_time=received_time))
    return buf.getvalue()


def decode_packet(data: bytes) -> DownlinkRecord:
    """The record of one container-less packet (:func:`encode_packet`); RecordDecodeError when
    the bytes are not such a packet."""
    try:
        packet = fastavro.schemaless_reader(io.BytesIO(data), load_schema(), load_schema())
    except (ValueError, EOFError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise RecordDecodeError(f"not an alert packet: {type(exc).__name__}: {exc}", where="packet") from exc
    return from_alert(cast(dict[str, Any], packet))
