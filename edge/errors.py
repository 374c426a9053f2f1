"""The one error hierarchy of astro-edge.

Every package raises these, so that the node's shell loop can catch, count and log them in one
place. Each class also subclasses the builtin a caller would naturally catch (``ValueError`` for
bad data, ``OSError`` for files and sockets, ``RuntimeError`` for engines). This module imports
nothing of the project.

::

    AstroEdgeError
     +-- ConfigError (ValueError)               bad node config, bad command-line value
     +-- ProtocolError (ValueError)             a frame-protocol message that cannot be accepted
     |    +-- PartCountError                    wrong number of multipart parts
     |    +-- HeaderDecodeError                 header part is not valid JSON / not an object
     |    +-- UnsupportedVersionError           unknown htype or protocol version
     |    +-- HeaderFieldError                  a key is missing, has the wrong type or a bad value
     |    +-- PayloadSizeError                  shape x dtype does not match the payload length
     |    +-- CompressionRatioError             a compressed payload declares far more pixels than it could hold
     |    +-- ChecksumError                     payload checksum does not match the header
     |    +-- DecompressionError                compressed payload cannot be decoded
     +-- TransportError (OSError)               a socket could not be bound, connected or used
     +-- PeerSilentError (OSError)              the DAQ (mid-series) or the ground has gone quiet
     +-- TwinError (ValueError)                 bad digital-twin parameters
     +-- CalibrationError (ValueError)          calibration frames or bundle cannot be used
     |    +-- CalibrationInputError             a calibration or science FITS file is unusable
     |    +-- BundleIntegrityError              a bundle's checksum, version or content is broken
     |    +-- MissingMasterError                no master for the frame's filter / exposure
     +-- DetectionError (ValueError)            an image that detection cannot work on
     +-- EngineError (RuntimeError)             a neural engine cannot be loaded or run
     |    +-- EngineIntegrityError              file missing, truncated, sha256 mismatch
     |    +-- EngineCompatibilityError          manifest does not fit this device or backend
     |    +-- EngineOriginError                 an engine offered from outside the engine root
     +-- SpoolError (OSError)                   the store-and-forward spool cannot be used
     +-- StatusFileError (OSError)              the node's status file cannot be written
     +-- GroundStoreError (OSError)             the ground's output folder or id index cannot be used
     +-- RecordError (ValueError)               a downlink record or frame summary cannot be accepted
          +-- RecordDecodeError                 bytes are not msgpack / JSON, or message parts are wrong
          +-- RecordFieldError                  a field is missing, has the wrong type or a bad value
          +-- RecordVersionError                a record version this reader does not speak

Messages say what was wrong, where, and what to do. ``where`` names the file, frame or key.
"""

from __future__ import annotations


class AstroEdgeError(Exception):
    """Root of every error astro-edge raises on purpose."""

    #: stable, short name used as a counter key and in logs (``reason=``)
    reason: str = "error"

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(AstroEdgeError, ValueError):
    """The node config or a command-line value is wrong."""

    reason = "config"


class ProtocolError(AstroEdgeError, ValueError):
    """A frame-protocol message cannot be accepted."""

    reason = "protocol"


class PartCountError(ProtocolError):
    """A multipart message has the wrong number of parts."""

    reason = "part_count"


class HeaderDecodeError(ProtocolError):
    """The header part is not valid UTF-8 JSON or not a JSON object."""

    reason = "header_decode"


class UnsupportedVersionError(ProtocolError):
    """The header names a message type or version this receiver does not speak."""

    reason = "unsupported_version"


class HeaderFieldError(ProtocolError):
    """A header key is missing, has the wrong type, or has an impossible value."""

    reason = "header_field"


class PayloadSizeError(ProtocolError):
    """The payload length disagrees with shape and dtype."""

    reason = "payload_size"


class CompressionRatioError(ProtocolError):
    """A compressed payload declares far more pixels than real detector data compresses to."""

    reason = "compression_ratio"


class ChecksumError(ProtocolError):
    """The payload checksum does not match the header."""

    reason = "checksum"


class DecompressionError(ProtocolError):
    """A compressed payload cannot be decompressed."""

    reason = "decompression"


class TransportError(AstroEdgeError, OSError):
    """A socket could not be bound, connected or used."""

    reason = "transport"


class TwinError(AstroEdgeError, ValueError):
    """Digital-twin parameters are inconsistent or out of range."""

    reason = "twin"


class CalibrationError(AstroEdgeError, ValueError):
    """Calibration frames or a calibration bundle cannot be used."""

    reason = "calibration"


class CalibrationInputError(CalibrationError):
    """A calibration or science FITS file is unusable (shape, header, NaNs, empty folder)."""

    reason = "calibration_input"


class BundleIntegrityError(CalibrationError):
    """A calibration bundle's checksum, version or content is broken."""

    reason = "bundle_integrity"


class MissingMasterError(CalibrationError):
    """No master frame exists for a frame's filter or exposure."""

    reason = "missing_master"


class DetectionError(AstroEdgeError, ValueError):
    """An image that source detection cannot work on."""

    reason = "detection"


class EngineError(AstroEdgeError, RuntimeError):
    """A neural engine cannot be loaded or run."""

    reason = "engine"


class EngineIntegrityError(EngineError):
    """An engine file is missing, truncated, or fails its sha256."""

    reason = "engine_integrity"


class EngineCompatibilityError(EngineError):
    """An engine's manifest does not fit this device, backend or runtime version."""

    reason = "engine_compatibility"


class EngineOriginError(EngineError):
    """An engine offered from outside the node's engine root."""

    reason = "engine_origin"


class SpoolError(AstroEdgeError, OSError):
    """The store-and-forward spool cannot be used."""

    reason = "spool"


class PeerSilentError(AstroEdgeError, OSError):
    """A peer the node expects to hear from (the DAQ mid-series, the ground) has gone quiet."""

    reason = "peer_silent"


class StatusFileError(AstroEdgeError, OSError):
    """The node's status file cannot be written (the node goes on without it)."""

    reason = "status_file"


class GroundStoreError(AstroEdgeError, OSError):
    """The ground receiver's output folder or its index cannot be used."""

    reason = "ground_store"


class RecordError(AstroEdgeError, ValueError):
    """A downlink record or frame summary cannot be encoded, decoded or accepted."""

    reason = "record"


class RecordDecodeError(RecordError):
    """Bytes are not msgpack or JSON, or a downlink message has the wrong parts."""

    reason = "record_decode"


class RecordFieldError(RecordError):
    """A record field is missing, has the wrong type, or has an impossible value."""

    reason = "record_field"


class RecordVersionError(RecordError):
    """A record carries a kind or version this reader does not speak."""

    reason = "record_version"


__all__ = [
    "AstroEdgeError",
    "BundleIntegrityError",
    "CalibrationError",
    "CalibrationInputError",
    "ChecksumError",
    "CompressionRatioError",
    "ConfigError",
    "DecompressionError",
    "DetectionError",
    "EngineCompatibilityError",
    "EngineError",
    "EngineIntegrityError",
    "EngineOriginError",
    "GroundStoreError",
    "HeaderDecodeError",
    "HeaderFieldError",
    "MissingMasterError",
    "PartCountError",
    "PayloadSizeError",
    "PeerSilentError",
    "ProtocolError",
    "RecordDecodeError",
    "RecordError",
    "RecordFieldError",
    "RecordVersionError",
    "SpoolError",
    "StatusFileError",
    "TransportError",
    "TwinError",
    "UnsupportedVersionError",
]
