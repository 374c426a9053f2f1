"""Tests for calibration.bundle: the checksummed multi-extension FITS bundle."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from calibration import BUNDLE_VERSION, read_bundle
from calibration.bundle import describe, verify_checksums
from calibration.frames import scan_folder
from calibration.masters import build_masters
from edge.errors import BundleIntegrityError


def test_bundle_round_trip_keeps_every_master(bundle_path: Path, calib_folder: Path) -> None:
    """Reading a bundle back gives the masters that were built, bit for bit, and a stable bundle id."""
    built = build_masters(scan_folder(calib_folder))
    m, bundle_id = read_bundle(bundle_path)
    np.testing.assert_array_equal(m.bias_adu, built.bias_adu)
    np.testing.assert_array_equal(m.dark_adu_per_s, built.dark_adu_per_s)
    np.testing.assert_array_equal(m.flats["r"], built.flats["r"])
    np.testing.assert_array_equal(m.bad_pixels, built.bad_pixels)
    assert m.gain_e_per_adu == built.gain_e_per_adu and m.read_noise_e == built.read_noise_e
    for key, value in vars(built.photon_transfer).items():
        assert getattr(m.photon_transfer, key) == pytest.approx(value, rel=1e-10)
    assert read_bundle(bundle_path)[1] == bundle_id and len(bundle_id) == 16


def test_bundle_records_inputs_with_their_sha256(bundle_path: Path, calib_folder: Path) -> None:
    """Provenance lists every input file with the sha256 of its bytes, its kind and exposure."""
    m, _ = read_bundle(bundle_path)
    files = sorted(calib_folder.glob("*.fits"))
    assert sorted(r.name for r in m.inputs) == [p.name for p in files]
    for rec in m.inputs:
        assert rec.sha256 == hashlib.sha256((calib_folder / rec.name).read_bytes()).hexdigest()
    assert {r.kind for r in m.inputs} == {"bias", "dark", "flat"}
    header = fits.getheader(bundle_path)
    assert header["BUNDVER"] == BUNDLE_VERSION and "SWVER" in header and "DATE" in header


def test_every_hdu_carries_a_valid_checksum(bundle_path: Path) -> None:
    """Each HDU of a fresh bundle has CHECKSUM and DATASUM that hold."""
    checks = verify_checksums(bundle_path)
    assert [name for name, _ in checks][:2] == ["PRIMARY", "BIAS"]
    assert all(ok for _, ok in checks)
    assert describe(bundle_path)["checksums_ok"]


def test_flipped_byte_in_a_master_is_detected(bundle_path: Path, tmp_path: Path) -> None:
    """One changed byte inside the BIAS data makes reading raise BundleIntegrityError naming the HDU."""
    bad = tmp_path / "bad.fits"
    shutil.copy(bundle_path, bad)
    with fits.open(bundle_path) as hdul:
        offset = hdul.fileinfo(1)["datLoc"] + 1000
    raw = bytearray(bad.read_bytes())
    raw[offset] ^= 0x40
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleIntegrityError, match=r"bad\.fits.*checksum.*BIAS"):
        read_bundle(bad)
    assert not describe(bad)["checksums_ok"]


def test_unknown_version_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    """A bundle whose BUNDVER this code does not read raises BundleIntegrityError naming the version."""
    newer = tmp_path / "newer.fits"
    with fits.open(bundle_path) as hdul:
        hdul[0].header["BUNDVER"] = BUNDLE_VERSION + 1
        hdul.writeto(newer, checksum=True)
    with pytest.raises(BundleIntegrityError, match="version 2"):
        read_bundle(newer)


def test_edited_gain_with_fresh_checksums_is_caught_by_the_content_hash(bundle_path: Path, tmp_path: Path) -> None:
    """Changing GAIN and re-checksumming still fails: the content hash no longer matches BUNDLEID."""
    edited = tmp_path / "edited.fits"
    with fits.open(bundle_path) as hdul:
        hdul[0].header["GAIN"] = 3.0
        hdul.writeto(edited, checksum=True)
    with pytest.raises(BundleIntegrityError, match="content hash"):
        read_bundle(edited)


def test_truncated_or_missing_bundle_is_a_typed_error(bundle_path: Path, tmp_path: Path) -> None:
    """A truncated file and a missing file both raise BundleIntegrityError naming the path."""
    cut = tmp_path / "cut.fits"
    cut.write_bytes(bundle_path.read_bytes()[:9000])
    with pytest.raises(BundleIntegrityError, match=r"cut\.fits"):
        read_bundle(cut)
    with pytest.raises(BundleIntegrityError, match=r"absent\.fits"):
        read_bundle(tmp_path / "absent.fits")
