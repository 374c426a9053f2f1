"""Alert packets: downlinked records as Avro alerts that astronomers' brokers read.

A record becomes a packet laid out like a ZTF alert (``candid``, ``candidate``,
``cutoutScience``), with its uncertainty and provenance, and reads back as the same record
(:mod:`edge.alerts.packet`); the stamp also travels as gzipped FITS cut-outs
(:mod:`edge.alerts.cutout`); packets are written to and read from Avro container files with the
schema shipped in ``edge/alerts/schema`` (:mod:`edge.alerts.files`). docs/alerts.md is the spec.
"""

from __future__ import annotations

from edge.alerts.cutout import cutouts, open_cutout
from edge.alerts.files import (
    CODEC,
    PACKET_CONTENT_TYPE,
    decode_packet,
    encode_packet,
    load_schema,
    read_alerts,
    read_packets,
    schema_file,
    write_alerts,
)
from edge.alerts.packet import (
    PUBLISHER,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    alert_id,
    from_alert,
    mjd,
    to_alert,
)

__all__ = [
    "CODEC",
    "PACKET_CONTENT_TYPE",
    "PUBLISHER",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "alert_id",
    "cutouts",
    "decode_packet",
    "encode_packet",
    "from_alert",
    "load_schema",
    "mjd",
    "open_cutout",
    "read_alerts",
    "read_packets",
    "schema_file",
    "to_alert",
    "write_alerts",
]
