"""Tests for calibration.bundle: the checksummed multi-extension FITS bundle."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calibration import BUNDLE_VERSION, read_bundle
from calibration.bundle import describe, verify_checksums, write_bundle
from calibration.frames import scan_folder
from calibration.masters import InputRecord, Masters, build_masters
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


@st.composite
def _masters(draw: st.DrawFn) -> Masters:
    """Small random masters: any shape, with or without darks, one to three filters, a few inputs."""
    ny = draw(st.integers(2, 12))
    nx = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    g = np.random.default_rng(seed)
    with_dark = draw(st.booleans())
    names = draw(st.lists(st.sampled_from(["", "r", "g", "Halpha", "B 2"]), min_size=1, max_size=3, unique=True))
    text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=40)
    inputs = tuple(InputRecord(name=draw(text), sha256=f"{g.integers(0, 2**63):064x}", kind=draw(
        st.sampled_from(["bias", "dark", "flat"])), exposure_s=draw(st.floats(0, 1e4)), filter_name=draw(
        st.sampled_from(names))) for _ in range(draw(st.integers(0, 4))))
    return Masters(
        bias_adu=g.normal(500, 3, (ny, nx)).astype(np.float32), bias_var_adu2=draw(st.floats(0, 100)),
        dark_adu_per_s=g.random((ny, nx), np.float32) if with_dark else None,
        dark_var_adu2_per_s2=g.random((ny, nx), np.float32) if with_dark else None,
        flats={n: g.uniform(0.5, 1.5, (ny, nx)).astype(np.float32) for n in names},
        flat_rel_var={n: draw(st.floats(0, 1e-3)) for n in names},
        bad_pixels=g.integers(0, 16, (ny, nx)).astype(np.uint8),
        gain_e_per_adu=draw(st.floats(0.1, 20)), read_noise_e=draw(st.floats(0, 50)),
        noise_source=draw(st.sampled_from(["photon_transfer", "header"])),
        saturate_adu=draw(st.floats(100, 65535)), trimsec=draw(st.sampled_from([None, "[3:14,1:12]"])),
        biassec=draw(st.sampled_from([None, "[1:2,1:12]"])), raw_shape=(ny, nx + 2), inputs=inputs,
        n_bias=draw(st.integers(0, 50)), n_dark=draw(st.integers(0, 50)), n_flat={n: 3 for n in names})


def _two_by_two(read_noise_e: float) -> Masters:
    """Minimal masters whose read noise a FITS card rounds across the hash's 12th digit."""
    ones = np.ones((2, 2), np.float32)
    return Masters(bias_adu=500 * ones, bias_var_adu2=0.0, dark_adu_per_s=None, dark_var_adu2_per_s2=None,
                   flats={"": ones}, flat_rel_var={"": 0.0}, bad_pixels=np.zeros((2, 2), np.uint8),
                   gain_e_per_adu=1.0, read_noise_e=read_noise_e, noise_source="photon_transfer",
                   saturate_adu=100.0, trimsec=None, biassec=None, raw_shape=(2, 4), inputs=(), n_bias=0,
                   n_dark=0, n_flat={"": 3})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=_masters())
@example(m=_two_by_two(0.00023263580725150007))  # written as 0.000232635807251500: once broke the id
def test_any_masters_survive_a_write_read_round_trip(m: Masters, tmp_path: Path) -> None:
    """Whatever the masters hold, reading the written bundle gives the same arrays, numbers and inputs."""
    path = tmp_path / "rt.fits"
    bundle_id = write_bundle(m, path)
    back, read_id = read_bundle(path)
    assert read_id == bundle_id
    for name in ("bias_adu", "dark_adu_per_s", "dark_var_adu2_per_s2", "bad_pixels"):
        a, b = getattr(m, name), getattr(back, name)
        assert (a is None and b is None) or (np.array_equal(a, b) and b.dtype == a.dtype)
    assert back.flats.keys() == m.flats.keys()
    for name in m.flats:
        np.testing.assert_array_equal(back.flats[name], m.flats[name])
        assert back.flat_rel_var[name] == pytest.approx(m.flat_rel_var[name], rel=1e-10, abs=1e-300)
    for key in ("gain_e_per_adu", "read_noise_e", "saturate_adu", "bias_var_adu2"):
        assert getattr(back, key) == pytest.approx(getattr(m, key), rel=1e-12)
    assert (back.noise_source, back.trimsec, back.biassec, back.raw_shape) == (m.noise_source, m.trimsec,
                                                                                 m.biassec, m.raw_shape)
    assert back.inputs == m.inputs
