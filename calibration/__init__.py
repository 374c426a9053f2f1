"""Detector calibration: masters, bad-pixel mask, bundle file, fast application, noise model.

Public API::

    from calibration import Calibrator, CalibratedFrame, build_bundle, read_bundle

``build_bundle(folder, out_path)`` reads a folder of BIAS/DARK/FLAT frames and writes a bundle;
``read_bundle(path)`` verifies and loads one; ``Calibrator`` applies it to raw frames. This
package imports numpy and astropy only (plus edge.errors and edge.log), never the node.
"""

from __future__ import annotations

from pathlib import Path

from calibration.apply import MASK_BAD, MASK_NONFINITE, MASK_SATURATED, CalibratedFrame, Calibrator
from calibration.bundle import BUNDLE_VERSION, read_bundle, write_bundle
from calibration.frames import Progress, scan_folder
from calibration.masters import Masters, PhotonTransfer, build_masters
from edge.log import get_logger

log = get_logger(__name__)


def build_bundle(folder: Path | str, out_path: Path | str, *, trust_header_gain: bool = False,
                 progress: Progress | None = None) -> tuple[Masters, str]:
    """Build masters from every FITS frame in ``folder`` and write the bundle; return (masters, bundle_id).

    ``progress`` is told of each file read and each master combined (:func:`scan_folder`,
    :func:`build_masters`).
    """
    frames = scan_folder(folder, progress=progress)
    skipped = [f.path.name for f in frames if f.kind not in ("bias", "dark", "flat")]
    if skipped:
        log.info("calib.frames_skipped", folder=str(folder), count=len(skipped), files=skipped[:10])
    masters = build_masters(frames, trust_header_gain=trust_header_gain, progress=progress)
    if trust_header_gain and masters.noise_source != "header":
        log.warning("calib.header_gain_unavailable", folder=str(folder),
                    detail="frames disagree on or lack GAIN/RDNOISE; measured by photon transfer instead")
    elif not trust_header_gain and masters.noise_source == "header":
        log.warning("calib.photon_transfer_unavailable", folder=str(folder),
                    detail="fewer than two biases or two flats of one filter and exposure; used GAIN/RDNOISE")
    bundle_id = write_bundle(masters, out_path)
    return masters, bundle_id


__all__ = [
    "BUNDLE_VERSION",
    "MASK_BAD",
    "MASK_NONFINITE",
    "MASK_SATURATED",
    "CalibratedFrame",
    "Calibrator",
    "Masters",
    "PhotonTransfer",
    "build_bundle",
    "build_masters",
    "read_bundle",
    "write_bundle",
]
