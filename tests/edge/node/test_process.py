"""``astro-edge process`` on every real FITS frame we hold: no error, no NaN, positions inside the frame."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from astropy.io import fits

from edge.cli import main
from edge.node.process import read_frame

CONTRACT = ("frame", "x", "y", "label", "confidence", "probs", "entropy", "aleatoric", "epistemic",
            "anomaly_pvalue", "reasons", "snr", "ra", "dec")


def _real_fits(real_data: Path) -> list[Path]:
    return sorted(p for p in real_data.rglob("*.fits"))


def _config(tmp_path: Path, engine: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[engine]\npath = "{engine}"\n')
    return path


@pytest.mark.filterwarnings("ignore:The following header keyword is invalid")
def test_process_every_real_file(real_data: Path, tmp_path: Path, tiny_engine: Path, capsys) -> None:
    """Every real FITS file goes through the offline pipeline and gives sane, complete output."""
    files = _real_fits(real_data)
    assert len(files) >= 10
    out = tmp_path / "out"
    rc = main(["process", *map(str, files), "--out", str(out), "--config", str(_config(tmp_path, tiny_engine))])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report["failed"]
    assert report["frames"] == len(files) and report["failed"] == []
    summaries = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(summaries) == len(files)
    shapes = {}
    for s in summaries:
        with fits.open(s["file"]) as hdul:
            shapes[s["frame"]] = next(h.data.shape for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2)
        assert s["detections"] == s["sent"] + s["suppressed"]
        assert s["noise_model"] in ("header", "estimated")
    records = [json.loads(line) for line in (out / "downlink.jsonl").read_text().splitlines()]
    assert len(records) == sum(s["sent"] for s in summaries) > 0
    for rec in records:
        for key in CONTRACT:
            assert key in rec
        ny, nx = shapes[rec["frame"]]
        assert 0 <= rec["x"] < nx and 0 <= rec["y"] < ny
        for key in ("confidence", "entropy", "aleatoric", "epistemic", "anomaly_pvalue", "snr"):
            assert math.isfinite(rec[key]), key


def test_a_file_that_is_not_fits_is_named_and_the_rest_still_run(real_data: Path, tmp_path: Path,
                                                                  tiny_engine: Path, capsys) -> None:
    """A corrupt file is reported with its name and exit code 1; the good file is still processed."""
    bad = tmp_path / "broken.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    good = real_data / "sep-ntt" / "image.fits"
    rc = main(["process", str(bad), str(good), "--out", str(tmp_path / "o"),
               "--config", str(_config(tmp_path, tiny_engine))])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["frames"] == 1
    assert len(report["failed"]) == 1 and "broken.fits" in report["failed"][0]


def test_raw_integer_frame_keeps_its_values(real_data: Path) -> None:
    """A raw uint16 frame is read as integers (BZERO applied), with its exposure and time."""
    frame = read_frame(real_data / "saao-raw" / "a8280271.fits", seq=0)
    assert frame.pixels.dtype.kind in "ui" and frame.pixels.shape == (520, 536)
    assert frame.exposure_s == pytest.approx(fits.getheader(real_data / "saao-raw" / "a8280271.fits")["EXPTIME"])
    assert frame.exposure_s > 100
    assert frame.frame_time.endswith("Z")
