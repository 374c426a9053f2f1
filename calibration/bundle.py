"""The calibration bundle: one multi-extension FITS file holding every master and its provenance.

Layout (version 1), every HDU with FITS CHECKSUM/DATASUM:

- primary HDU, no data: ``BUNDVER`` (format version), ``BUNDLEID`` (content hash), ``GAIN``
  (e-/ADU), ``RDNOISE`` (e-), ``NOISESRC``, ``SATURATE`` (raw ADU), ``BIASVAR`` (ADU^2),
  ``TRIMSEC``/``BIASSEC`` when the inputs had them, ``RAWNY``/``RAWNX``, ``NBIAS``, ``NDARK``,
  ``DATE`` (UTC), ``SWVER``, and the photon-transfer figures (``PTCGAINE`` ...) when measured;
- ``BIAS`` float32 ADU; ``DARK`` float32 ADU/s and ``DARKVAR`` float32 (ADU/s)^2 when darks were
  given; one ``FLAT`` float32 per filter (``FILTER`` key, ``NCOMB``, ``RELVAR``); ``BPM`` uint8 bits;
- ``INPUTS`` table: name, sha256, kind, exposure_s, filter of every input frame.

Reading verifies every checksum, the version and the content hash, and raises
``BundleIntegrityError`` naming the file and the HDU. This module must not compute masters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from numpy.typing import NDArray

from calibration.masters import InputRecord, Masters, PhotonTransfer
from edge.errors import BundleIntegrityError

BUNDLE_VERSION = 1

_PTC_KEYS = {
    "PTCGAINE": ("gain_e_per_adu", "photon-transfer gain [e-/ADU]"),
    "PTCGERR": ("gain_err_e_per_adu", "its 1-sigma error [e-/ADU]"),
    "PTCRNE": ("read_noise_e", "photon-transfer read noise [e-]"),
    "PTCRNADU": ("read_noise_adu", "photon-transfer read noise [ADU]"),
    "PTCRNERR": ("read_noise_err_e", "its 1-sigma error [e-]"),
    "PTCNFP": ("n_flat_pairs", "flat pairs used"),
    "PTCNBP": ("n_bias_pairs", "bias pairs used"),
}


def software_version() -> str:
    """The installed astro-edge version, or 'unknown' when running from an uninstalled tree."""
    try:
        return metadata.version("astro-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def _canonical(a: NDArray[Any]) -> bytes:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder(">")).tobytes()


def content_hash(m: Masters) -> str:
    """sha256 (first 16 hex digits) of the masters' pixels and the numbers the Calibrator uses."""
    h = hashlib.sha256()

    # the number as a FITS card writes it and reads it back, then 12 significant digits: hashing
    # the in-memory float instead gave a different id when the card's rounding crossed a 12th digit
    def num(x: float) -> str:
        return f"{float(fits.Card.fromstring(fits.Card('X', float(x)).image).value):.12g}"

    scalars = {"gain": num(m.gain_e_per_adu), "rn": num(m.read_noise_e), "sat": num(m.saturate_adu),
               "biasvar": num(m.bias_var_adu2), "trim": m.trimsec, "bsec": m.biassec, "raw": list(m.raw_shape),
               "relvar": {k: num(m.flat_rel_var[k]) for k in sorted(m.flat_rel_var)}}
    h.update(json.dumps(scalars, sort_keys=True).encode())
    for arr in (m.bias_adu, m.dark_adu_per_s, m.dark_var_adu2_per_s2, m.bad_pixels):
        h.update(b"-" if arr is None else _canonical(arr))
    for name in sorted(m.flats):
        h.update(name.encode() + b"\0" + _canonical(m.flats[name]))
    return h.hexdigest()[:16]


def write_bundle(m: Masters, path: Path | str) -> str:
    """Write the bundle (overwriting ``path``); return its content hash, the ``bundle_id``."""
    path = Path(path)
    bundle_id = content_hash(m)
    primary = fits.PrimaryHDU()
    hd = primary.header
    hd["BUNDVER"] = (BUNDLE_VERSION, "astro-edge calibration bundle format version")
    hd["BUNDLEID"] = (bundle_id, "sha256 of the content (16 hex digits)")
    hd["GAIN"] = (m.gain_e_per_adu, "[e-/ADU]")
    hd["RDNOISE"] = (m.read_noise_e, "[e-] read noise")
    hd["NOISESRC"] = (m.noise_source, "where GAIN/RDNOISE come from")
    hd["SATURATE"] = (m.saturate_adu, "[ADU] raw level flagged as saturated")
    hd["BIASVAR"] = (m.bias_var_adu2, "[ADU^2] variance of the master bias")
    if m.trimsec is not None:
        hd["TRIMSEC"] = m.trimsec
    if m.biassec is not None:
        hd["BIASSEC"] = m.biassec
    hd["RAWNY"] = (m.raw_shape[0], "rows of the untrimmed raw frame")
    hd["RAWNX"] = (m.raw_shape[1], "columns of the untrimmed raw frame")
    hd["NBIAS"] = m.n_bias
    hd["NDARK"] = m.n_dark
    hd["DATE"] = (dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC, bundle written")
    hd["SWVER"] = (software_version(), "astro-edge version")
    if m.photon_transfer is not None:
        for key, (attr, comment) in _PTC_KEYS.items():
            hd[key] = (getattr(m.photon_transfer, attr), comment)
    hdus: list[Any] = [primary, fits.ImageHDU(m.bias_adu, name="BIAS")]
    if m.dark_adu_per_s is not None and m.dark_var_adu2_per_s2 is not None:
        hdus.append(fits.ImageHDU(m.dark_adu_per_s, name="DARK"))
        hdus.append(fits.ImageHDU(m.dark_var_adu2_per_s2, name="DARKVAR"))
    for name in sorted(m.flats):
        flat = fits.ImageHDU(m.flats[name], name="FLAT")
        flat.header["FILTER"] = (name, "'' means any filter")
        flat.header["NCOMB"] = m.n_flat.get(name, 0)
        flat.header["RELVAR"] = (m.flat_rel_var[name], "mean relative variance of the master")
        hdus.append(flat)
    hdus.append(fits.ImageHDU(m.bad_pixels, name="BPM"))
    table = Table(rows=[(r.name, r.sha256, r.kind, r.exposure_s, r.filter_name) for r in m.inputs],
                  names=("name", "sha256", "kind", "exposure_s", "filter"),
                  dtype=("U256", "U64", "U8", "f8", "U64"))
    hdus.append(fits.BinTableHDU(table, name="INPUTS"))
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    return bundle_id


def verify_checksums(path: Path | str) -> list[tuple[str, bool]]:
    """(HDU name, checksum and datasum hold) for every HDU; missing sums count as broken."""
    path = Path(path)
    out = []
    try:
        with warnings.catch_warnings():
            # astropy warns before it fails on a truncated file; the typed error below says it once
            warnings.simplefilter("ignore", AstropyUserWarning)
            hdul = fits.open(path, memmap=False, checksum=False, lazy_load_hdus=False)
        with hdul:
            for i, hdu in enumerate(hdul):
                ok = hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1
                out.append((hdu.name or f"HDU{i}", ok))
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise BundleIntegrityError(f"not a readable FITS bundle ({exc})", where=str(path)) from None
    return out


def read_bundle(path: Path | str) -> tuple[Masters, str]:
    """Read a bundle after verifying checksums, version and content hash; return (masters, bundle_id)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise BundleIntegrityError("no such bundle file; build one with `astro-edge calib build`", where=where)
    broken = [name for name, ok in verify_checksums(path) if not ok]
    if broken:
        raise BundleIntegrityError(f"checksum does not hold for HDU {', '.join(broken)}; the file is corrupt: "
                                   "rebuild it or copy it again", where=where)
    try:
        with fits.open(path, memmap=False) as hdul:
            return _decode(hdul, where)
    except BundleIntegrityError:
        raise
    except (KeyError, OSError, ValueError, TypeError, IndexError) as exc:
        raise BundleIntegrityError(f"bundle content is incomplete ({exc})", where=where) from None


def _native(a: NDArray[Any], dtype: Any) -> NDArray[Any]:
    return np.ascontiguousarray(a, dtype=np.dtype(dtype))


def _decode(hdul: fits.HDUList, where: str) -> tuple[Masters, str]:
    hd = hdul[0].header
    version = hd.get("BUNDVER")
    if version != BUNDLE_VERSION:
        raise BundleIntegrityError(f"bundle format version {version!r} is not {BUNDLE_VERSION}, the one this "
                                   "astro-edge reads; rebuild it with this version", where=where)
    names = [h.name for h in hdul]
    dark = _native(hdul["DARK"].data, np.float32) if "DARK" in names else None
    dark_var = _native(hdul["DARKVAR"].data, np.float32) if "DARKVAR" in names else None
    flats: dict[str, NDArray[np.float32]] = {}
    rel: dict[str, float] = {}
    n_flat: dict[str, int] = {}
    for h in hdul:
        if h.name == "FLAT":
            name = str(h.header.get("FILTER", "")).strip()
            flats[name] = _native(h.data, np.float32)
            rel[name] = float(h.header["RELVAR"])
            n_flat[name] = int(h.header.get("NCOMB", 0))
    ptc = None
    if "PTCGAINE" in hd:
        values: dict[str, Any] = {attr: (int(hd[k]) if attr.startswith("n_") else float(hd[k]))
                                  for k, (attr, _) in _PTC_KEYS.items()}
        ptc = PhotonTransfer(**values)
    inputs = tuple(InputRecord(name=str(r["name"]), sha256=str(r["sha256"]), kind=str(r["kind"]),
                               exposure_s=float(r["exposure_s"]), filter_name=str(r["filter"]))
                   for r in hdul["INPUTS"].data)
    m = Masters(
        bias_adu=_native(hdul["BIAS"].data, np.float32), bias_var_adu2=float(hd["BIASVAR"]),
        dark_adu_per_s=dark, dark_var_adu2_per_s2=dark_var, flats=flats, flat_rel_var=rel,
        bad_pixels=_native(hdul["BPM"].data, np.uint8), gain_e_per_adu=float(hd["GAIN"]),
        read_noise_e=float(hd["RDNOISE"]), noise_source=str(hd["NOISESRC"]), saturate_adu=float(hd["SATURATE"]),
        trimsec=str(hd["TRIMSEC"]) if "TRIMSEC" in hd else None,
        biassec=str(hd["BIASSEC"]) if "BIASSEC" in hd else None,
        raw_shape=(int(hd["RAWNY"]), int(hd["RAWNX"])), inputs=inputs, photon_transfer=ptc,
        n_bias=int(hd["NBIAS"]), n_dark=int(hd["NDARK"]), n_flat=n_flat)
    bundle_id = str(hd["BUNDLEID"])
    if content_hash(m) != bundle_id:
        raise BundleIntegrityError(f"content hash does not match BUNDLEID {bundle_id}; the header or the masters "
                                   "were edited after the bundle was written", where=where)
    return m, bundle_id


def describe(path: Path | str) -> dict[str, Any]:
    """What a bundle holds, for ``astro-edge calib show``: header summary, HDUs, checksum results."""
    path = Path(path)
    checks = verify_checksums(path)
    with fits.open(path, memmap=False) as hdul:
        hd = hdul[0].header
        info: dict[str, Any] = {key: hd[key] for key in (
            "BUNDVER", "BUNDLEID", "GAIN", "RDNOISE", "NOISESRC", "SATURATE", "TRIMSEC", "BIASSEC",
            "NBIAS", "NDARK", "DATE", "SWVER", "PTCGAINE", "PTCGERR", "PTCRNE", "PTCRNERR") if key in hd}
        hdus = []
        for (name, ok), h in zip(checks, hdul, strict=True):
            shape = tuple(h.data.shape) if getattr(h, "data", None) is not None and hasattr(h.data, "shape") else ()
            extra = str(h.header.get("FILTER", "")).strip() if h.name == "FLAT" else ""
            hdus.append({"name": name, "shape": shape, "filter": extra, "checksum_ok": ok})
        n_inputs = len(hdul["INPUTS"].data) if "INPUTS" in [h.name for h in hdul] else 0
        bpm = hdul["BPM"].data if "BPM" in [h.name for h in hdul] else None
        info["bad_pixels"] = int(np.count_nonzero(bpm)) if bpm is not None else 0
    info["inputs"] = n_inputs
    info["hdus"] = hdus
    info["checksums_ok"] = all(ok for _, ok in checks)
    return info
