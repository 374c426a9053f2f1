"""Tests for ``astro-edge calib``: build, show and overscan through the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from astropy.io import fits

from calibration import read_bundle
from edge.cli import main


def test_build_then_show_reports_the_bundle_and_its_checksums(calib_folder: Path, tmp_path: Path, capsys) -> None:
    """`calib build DIR --out` writes a readable bundle; `calib show` lists its HDUs with checksums ok."""
    out = tmp_path / "bundle.fits"
    assert main(["calib", "build", str(calib_folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    masters, bundle_id = read_bundle(out)
    assert bundle_id in printed and "photon_transfer" in printed
    assert main(["calib", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert bundle_id in shown and "BROKEN" not in shown
    for name in ("BIAS", "DARK", "DARKVAR", "FLAT", "BPM", "INPUTS"):
        assert f"HDU {name}" in shown
    assert "filter='r'" in shown and f"inputs       {len(masters.inputs)}" in shown


def test_trust_header_gain_flag_uses_the_headers(calib_folder: Path, tmp_path: Path, capsys) -> None:
    """`--trust-header-gain` makes the bundle carry the frames' GAIN and RDNOISE."""
    out = tmp_path / "hdr.fits"
    assert main(["calib", "build", str(calib_folder), "--out", str(out), "--trust-header-gain"]) == 0
    assert "(header)" in capsys.readouterr().out
    assert fits.getheader(out)["NOISESRC"] == "header"


def test_show_exits_1_on_a_broken_checksum(bundle_path: Path, tmp_path: Path, capsys) -> None:
    """`calib show` on a bundle with a flipped data byte marks that HDU BROKEN and exits 1."""
    bad = tmp_path / "bad.fits"
    data = bytearray(bundle_path.read_bytes())
    with fits.open(bundle_path) as hdul:
        data[hdul.fileinfo(1)["datLoc"] + 4] ^= 0x01
    bad.write_bytes(bytes(data))
    assert main(["calib", "show", str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    bias_line = next(line for line in lines if "HDU BIAS" in line)
    assert bias_line.endswith("checksum BROKEN")
    assert all(line.endswith("checksum ok") for line in lines if "HDU" in line and "BIAS" not in line)


def test_build_on_an_empty_folder_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    """An empty folder ends `calib build` with exit code 2 and a message naming the folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["calib", "build", str(empty), "--out", str(tmp_path / "x.fits")]) == 2
    err = capsys.readouterr().err
    assert "astro-edge calib:" in err and str(empty) in err and "no FITS files" in err
    assert not (tmp_path / "x.fits").exists()


def test_overscan_reports_saao_level_and_read_noise_in_adu_and_electrons(real_data: Path, capsys) -> None:
    """`calib overscan` on the SAAO frame prints the level, the read noise in ADU and in e- at GAIN 1.9, and the trimmed shape."""
    assert main(["calib", "overscan", str(real_data / "saao-raw" / "a8280271.fits")]) == 0
    out = capsys.readouterr().out
    level = float(out.split("level")[1].split("ADU")[0])
    rn_adu = float(out.split("read noise")[1].split("+-")[0])
    rn_e = float(out.split("read noise")[2].split("+-")[0])
    assert 205 < level < 225
    assert rn_e == pytest.approx(rn_adu * 1.9, abs=0.01)
    assert "gain 1.9" in out and "trimmed shape 520x512" in out and "header RDNOISE 5.0" in out
    sky_gain = float(out.split("gain from the sky")[1].split("+-")[0])
    assert sky_gain == pytest.approx(1.9, rel=0.03)
