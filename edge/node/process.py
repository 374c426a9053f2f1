"""``astro-edge process``: the node's pipeline, offline, on FITS files.

Reads each file's first 2-D image HDU with astropy (raw integer frames with a calibration bundle,
or already calibrated float frames with GAIN/RDNOISE headers or none), runs the very same
:class:`edge.pipeline.Pipeline` as the daemon, and writes ``OUT/downlink.jsonl`` (the records the
node would send down) and ``OUT/frames.jsonl`` (one summary per frame).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.codec import to_json_line
from edge.errors import AstroEdgeError, CalibrationInputError
from edge.log import get_logger
from edge.pipeline import FrameInput, Pipeline
from firmware_bridge.protocol import format_utc

log = get_logger(__name__)

DOWNLINK_NAME = "downlink.jsonl"
FRAMES_NAME = "frames.jsonl"


@dataclass(frozen=True)
class ProcessReport:
    """What an offline run did."""

    frames: int
    failed: tuple[str, ...]
    detections: int
    sent: int
    out_dir: Path


def read_frame(path: str | Path, seq: int, detector_id: str = "offline") -> FrameInput:
    """The first 2-D image of a FITS file as a FrameInput; typed error when there is none."""
    from astropy.io import fits

    path = Path(path)
    try:
        # non-standard cards (e.g. ESO-LOG) make astropy warn; the file is still read, and the
        # warnings are logged once with the file's name rather than raised
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2), None)
                if hdu is None:
                    raise CalibrationInputError("holds no 2-D image HDU", where=str(path))
                # integer frames keep their raw values (BZERO applied by astropy gives uint16)
                pixels = np.array(hdu.data)
                header = {**_plain(hdul[0].header), **_plain(hdu.header)}
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise CalibrationInputError(f"cannot read FITS ({type(exc).__name__}: {exc}); is it a complete FITS file?",
                                    where=str(path)) from exc
    for message in sorted({str(w.message).splitlines()[0] for w in caught}):
        log.warning("fits.header_warning", file=str(path), warning=message)
    exposure = header.get("EXPTIME", header.get("EXPOSURE", 0.0))
    try:
        exposure_s = float(exposure)
    except (TypeError, ValueError):
        exposure_s = 0.0
    return FrameInput(detector_id=str(header.get("DETECTOR", header.get("INSTRUME", detector_id)))[:64] or detector_id,
                      series_id=_series_id(path), seq=seq, frame_time=_frame_time(header, path),
                      exposure_s=exposure_s, pixels=pixels, header=header,
                      filter_name=str(header["FILTER"]) if "FILTER" in header else None)


def _plain(header: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if key and key not in ("COMMENT", "HISTORY", "") and isinstance(card.value, (str, int, float, bool)):
            out[key] = card.value
    return out


def _series_id(path: Path) -> str:
    # one offline file is one series: the id says which file, stably
    return "file-" + hashlib.sha256(path.name.encode()).hexdigest()[:12]


def _frame_time(header: dict[str, Any], path: Path) -> str:
    from astropy.time import Time

    for key in ("DATE-OBS", "DATE_OBS", "DATE"):
        value = header.get(key)
        if isinstance(value, str) and value.strip():
            try:
                text = value.strip()
                if "T" not in text and "TIME-OBS" in header:
                    text = f"{text}T{header['TIME-OBS']}"
                return format_utc(Time(text, scale="utc").to_datetime(timezone=timezone.utc))
            except ValueError:
                continue
    if "MJD-OBS" in header:
        try:
            return format_utc(Time(float(header["MJD-OBS"]), format="mjd", scale="utc").to_datetime(timezone=timezone.utc))
        except (TypeError, ValueError):
            pass
    # no time in the file: the file's modification time stands in, and the log says so
    log.warning("frame.no_time", file=str(path))
    return format_utc(datetime.fromtimestamp(path.stat().st_mtime, timezone.utc))


def process_files(paths: Sequence[str | Path], out_dir: str | Path, pipeline: Pipeline) -> ProcessReport:
    """Run the pipeline on every file; a file that fails is logged, named in the report, and skipped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    detections = sent = frames = 0
    with (out / DOWNLINK_NAME).open("w", encoding="utf-8") as down, (out / FRAMES_NAME).open("w", encoding="utf-8") as fr:
        for seq, path in enumerate(paths):
            try:
                frame = read_frame(path, seq)
                result = pipeline.process(frame)
            except AstroEdgeError as exc:
                log.error("frame.rejected", file=str(path), reason=exc.reason, error=str(exc))
                failed.append(f"{path}: {exc}")
                continue
            for record in result.records:
                down.write(to_json_line(record) + "\n")
            fr.write(to_json_line(result.summary, file=str(path)) + "\n")
            frames += 1
            detections += result.summary.detections
            sent += result.summary.sent
            log.info("frame.processed", file=str(path), detections=result.summary.detections,
                     sent=result.summary.sent, noise_model=result.summary.noise_model)
    return ProcessReport(frames=frames, failed=tuple(failed), detections=detections, sent=sent, out_dir=out)
