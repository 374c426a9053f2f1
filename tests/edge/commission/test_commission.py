"""``astro-edge commission`` end to end: a node config and a report from a foreign camera's night and
from the real frames the repository holds; clear errors for frame sets that cannot be commissioned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from edge.cli import main

#: small and quick: the command's own defaults are measured in bench/commission.py
QUICK = ["--replay-frames", "6", "--epochs", "1", "--teach-rounds", "1", "--twin-rounds", "4", "--twin-frames", "4"]


def _commission(args: list[str], out: Path) -> int:
    return main(["-q", "commission", *args, "--out", str(out)])


@pytest.mark.slow
def test_a_foreign_cameras_night_gives_a_node_config_that_processes_its_next_frame(
        foreign_night: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bias, flats and three science frames of a camera unlike the engine's twin give node.toml,
    report.md with its figure, a calibration bundle, a pixel catalog and an adapted engine; the
    config runs `astro-edge process` on the fourth frame as it is."""
    out = tmp_path / "c"
    sci = foreign_night["science"]
    assert _commission(["--science", *map(str, sci[:3]), "--bias", *map(str, foreign_night["bias"]),
                        "--flat", *map(str, foreign_night["flat"]), *QUICK], out) == 0
    printed = json.loads(capsys.readouterr().out)
    config = tomllib.loads((out / "node.toml").read_text())
    assert Path(config["calibration"]["bundle"]).exists() and Path(config["engine"]["path"]).is_dir()
    assert config["catalog"]["use_header_wcs"] is True and Path(config["catalog"]["reference"]).exists()
    assert 0 < config["triage"]["confidence_min"] <= 0.45 and printed["operating_point"]["detections"] > 0
    report = (out / "report.md").read_text()
    for heading in ("## Calibration", "## The instrument, measured", "## Fitted twin", "## Engine"):
        assert heading in report
    assert (out / "figures" / "real_and_twin.png").stat().st_size > 10_000
    data = json.loads((out / "commissioning.json").read_text())
    assert abs(data["twin"]["distances"]["fwhm_px"]["distance"]) < 0.1
    assert data["calibration"]["noise_source"] != "header"
    manifest = json.loads((Path(config["engine"]["path"]) / "manifest.json").read_text())
    assert "commissioned-foreign-cam" in manifest["version"]
    assert main(["-q", "process", "--config", str(out / "node.toml"), "--out", str(tmp_path / "p"), str(sci[3])]) == 0
    summary = json.loads((tmp_path / "p" / "frames.jsonl").read_text().splitlines()[0])
    assert summary["detections"] > 50 and summary["sent"] <= 0.1 * summary["detections"]


@pytest.mark.slow
@pytest.mark.parametrize("frame", ["sep-ntt/image.fits", "saao-raw/a8280271.fits", "m13-raw/M13_blue_0001.fits"])
def test_each_real_frame_of_the_repository_ends_with_a_config_and_a_report(real_data: Path, frame: str,
                                                                           tmp_path: Path) -> None:
    """One real frame is enough for the command to run: it ends with node.toml and report.md, and the
    report says which steps the frame could not support and why."""
    out = tmp_path / "c"
    assert _commission(["--science", str(real_data / frame), *QUICK], out) == 0
    assert (out / "node.toml").exists() and (out / "report.md").read_text().startswith("# Commissioning report")
    data = json.loads((out / "commissioning.json").read_text())
    if data["measurement"] is None:
        assert "## What could not be done" in (out / "report.md").read_text()
    assert main(["-q", "process", "--config", str(out / "node.toml"), "--out", str(tmp_path / "p"),
                 str(real_data / frame)]) == 0


def test_frames_without_any_source_end_with_a_clear_error(foreign: Any, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Bias frames given as science frames hold no source: exit code 2 and a line that says so."""
    rng = np.random.default_rng(1)
    files = [foreign.write(tmp_path / f"b{i}.fits", rng.normal(1000, 5, (200, 200)).astype(np.uint16), EXPTIME=0.0)
             for i in range(2)]
    assert _commission(["--science", *map(str, files)], tmp_path / "c") == 2
    assert "no source was detected" in capsys.readouterr().err


def test_frames_of_two_cameras_end_with_a_clear_error(real_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Frames of different cameras are refused before anything is built, naming both."""
    assert _commission(["--science", str(real_data / "sep-ntt/image.fits"),
                        str(real_data / "saao-raw/a8280271.fits")], tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "more than one camera" in err and "(256, 256)" in err
