"""A downlink record as an alert packet and back: the map that the Avro schema ``astro_edge.alert``
(``edge/alerts/schema``) describes, laid out like a ZTF alert.

:func:`to_alert` maps every field of :class:`edge.records.DownlinkRecord` (docs/alerts.md has the
table); :func:`from_alert` inverts it exactly: numbers bit for bit, the stamp byte for byte. The
stamp travels as the node sent it (``stamp``); the gzipped FITS cut-outs that brokers read
(``cutoutScience``, ``cutoutMask``) are made from it. The ground's ``received_time`` rides along in
``provenance`` and is not a record field.

Pure: no files, no logging.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from edge.alerts.cutout import cutouts
from edge.errors import HeaderFieldError, RecordFieldError, RecordVersionError
from edge.records import CompressedStamp, DownlinkRecord
from firmware_bridge.protocol import parse_utc

__all__ = ["PUBLISHER", "SCHEMA_NAME", "SCHEMA_VERSION", "alert_id", "from_alert", "mjd", "to_alert"]

#: the full name of the packet's Avro record
SCHEMA_NAME = "astro_edge.alert"
#: MAJOR.MINOR: a minor version only adds fields with defaults; a reader of 1.x reads every 1.y
SCHEMA_VERSION = "1.0"
PUBLISHER = "astro-edge"
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=timezone.utc)
_SECONDS_PER_DAY = 86400.0


def alert_id(record_id: str) -> int:
    """The packet's ``candid``: the first 8 bytes of sha256(record id), big-endian, shifted right
    one bit, so 0 <= id < 2**63 (an Avro long) and the same detection always gets the same id."""
    digest = hashlib.sha256(record_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def mjd(utc: str) -> float:
    """The Modified Julian Date (UTC, days) of a protocol UTC string ``YYYY-MM-DDTHH:MM:SS[.f]Z``;
    RecordFieldError when it is not one. A leap second reads as :59.999999."""
    try:
        when = parse_utc(utc, key="frame_time")
    except HeaderFieldError as exc:
        raise RecordFieldError(f"frame_time is not UTC ISO 8601, so it has no MJD: {exc}",
                               where="frame_time") from exc
    delta = when - _MJD_EPOCH
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / _SECONDS_PER_DAY


def to_alert(record: DownlinkRecord, *, received_time: str | None = None) -> dict[str, Any]:
    """The alert packet of ``record`` (a map for fastavro); RecordFieldError when its frame_time
    is not UTC ISO 8601. ``received_time``: when the ground stored it, if known."""
    candid = alert_id(record.record_id)
    science: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None
    packed: dict[str, Any] | None = None
    if record.stamp is not None:
        stamp = record.stamp
        science_gz, mask_gz = cutouts(stamp, candid=candid, record_id=record.record_id)
        science = {"fileName": f"candid{candid}_sci.fits.gz", "stampData": science_gz}
        if mask_gz is not None:
            mask = {"fileName": f"candid{candid}_mask.fits.gz", "stampData": mask_gz}
        packed = {"codec": stamp.codec, "shape": list(stamp.shape), "data": stamp.data}
    return {
        "schemavsn": SCHEMA_VERSION,
        "publisher": PUBLISHER,
        "candid": candid,
        "recordId": record.record_id,
        "candidate": {
            "candid": candid, "nodeId": record.node_id, "detectorId": record.detector_id,
            "seriesId": record.series_id, "frame": record.frame, "index": record.index,
            "frameTime": record.frame_time, "mjd": mjd(record.frame_time),
            "x": record.x, "y": record.y, "xErr": record.x_err, "yErr": record.y_err,
            "ra": record.ra, "dec": record.dec, "snr": record.snr,
            "fluxE": record.flux_e, "fluxErrE": record.flux_err_e,
            "aPx": record.a_px, "bPx": record.b_px, "thetaRad": record.theta_rad,
            "flags": record.flags, "isNew": record.new, "blendLr": record.blend_lr,
            "blendSepPx": record.blend_sep_px, "blendFluxRatio": record.blend_flux_ratio,
        },
        "uncertainty": {
            "label": record.label, "confidence": record.confidence,
            "probs": [{"label": name, "probability": p} for name, p in record.probs.items()],
            "entropy": record.entropy, "aleatoric": record.aleatoric, "epistemic": record.epistemic,
            "anomalyScore": record.anomaly_score, "anomalyPvalue": record.anomaly_pvalue,
            "reasons": list(record.reasons), "priority": record.priority,
        },
        "provenance": {
            "engineId": record.engine_id, "calibrationId": record.calibration_id,
            "policyVersion": record.policy_version, "recordVersion": record.version,
            "processedTime": record.processed_time, "receivedTime": received_time,
        },
        "cutoutScience": science,
        "cutoutMask": mask,
        "stamp": packed,
    }


def from_alert(alert: Mapping[str, Any]) -> DownlinkRecord:
    """The downlink record an alert packet carries; RecordVersionError for another schema's major
    version, RecordFieldError when a field is missing or inconsistent."""
    if not isinstance(alert, Mapping):
        raise RecordFieldError(f"an alert packet is a map, not {type(alert).__name__}", where="alert")
    where = f"alert {alert.get('recordId')!r}"
    version = alert.get("schemavsn")
    if not isinstance(version, str) or version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise RecordVersionError(f"alert schema version {version!r} is not {SCHEMA_VERSION.split('.')[0]}.x; "
                                 "upgrade the reader to read it", where=where)
    try:
        return _record_of(alert, where)
    except (KeyError, TypeError, AttributeError) as exc:
        raise RecordFieldError(f"alert packet field missing or of the wrong type: {exc!r}", where=where) from exc


def _record_of(alert: Mapping[str, Any], where: str) -> DownlinkRecord:
    cand, unc, prov = alert["candidate"], alert["uncertainty"], alert["provenance"]
    record_id = alert["recordId"]
    if not isinstance(record_id, str) or alert["candid"] != alert_id(record_id) or cand["candid"] != alert["candid"]:
        raise RecordFieldError(f"candid {alert['candid']!r} is not the id of record {record_id!r}", where=where)
    probs = {item["label"]: item["probability"] for item in unc["probs"]}
    if len(probs) != len(unc["probs"]):
        raise RecordFieldError("probs names a class twice", where=where)
    packed = alert.get("stamp")
    stamp = None
    if packed is not None:
        stamp = CompressedStamp(shape=tuple(packed["shape"]), data=packed["data"], codec=packed["codec"])
    return DownlinkRecord(
        record_id=record_id, node_id=cand["nodeId"], detector_id=cand["detectorId"],
        series_id=cand["seriesId"], frame=cand["frame"], index=cand["index"],
        frame_time=cand["frameTime"], processed_time=prov["processedTime"],
        x=cand["x"], y=cand["y"], x_err=cand["xErr"], y_err=cand["yErr"], ra=cand["ra"], dec=cand["dec"],
        label=unc["label"], confidence=unc["confidence"], probs=probs, entropy=unc["entropy"],
        aleatoric=unc["aleatoric"], epistemic=unc["epistemic"], anomaly_score=unc["anomalyScore"],
        anomaly_pvalue=unc["anomalyPvalue"], snr=cand["snr"], flux_e=cand["fluxE"],
        flux_err_e=cand["fluxErrE"], a_px=cand["aPx"], b_px=cand["bPx"], theta_rad=cand["thetaRad"],
        flags=cand["flags"], new=cand["isNew"], reasons=tuple(unc["reasons"]), priority=unc["priority"],
        policy_version=prov["policyVersion"], engine_id=prov["engineId"],
        calibration_id=prov["calibrationId"], stamp=stamp, blend_lr=cand.get("blendLr"),
        blend_sep_px=cand.get("blendSepPx"), blend_flux_ratio=cand.get("blendFluxRatio"),
        version=prov["recordVersion"],
    )
