"""The digital twin of the instrument: sky, optics, detector, artifacts, anomalies, truth.

Seeded, reproducible frame synthesis for training, tests and the hardware-in-the-loop rig. The
twin imports numpy and astropy (GalSim only in tests and validation); of the project it imports
``edge.errors`` and ``edge.log`` alone, never ``firmware_bridge``, ``calibration`` or ``engines``.
"""

from twin.calib import CalibrationTruth, make_calibration_set
from twin.frames import TwinFrame, reference_catalog, simulate_frame, write_frames
from twin.instrument import (
    ANOMALY_FAMILIES,
    ORDINARY_LABELS,
    DetectorModel,
    TwinConfig,
    dsi_m13_config,
)

__all__ = [
    "ANOMALY_FAMILIES",
    "ORDINARY_LABELS",
    "CalibrationTruth",
    "DetectorModel",
    "TwinConfig",
    "TwinFrame",
    "dsi_m13_config",
    "make_calibration_set",
    "reference_catalog",
    "simulate_frame",
    "write_frames",
]
