"""The real ZTF alert packets the layout follows: their writer schema, and cut-outs that open as
gzipped FITS with the pixels of the FITS files decoded from them."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.io import fits

PACKETS = ("472263571115115000.avro", "2019_01_10_739260766315010006.avro")
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def read_packet(path: Path) -> tuple[dict, dict]:
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        [packet] = list(reader)
        return reader.writer_schema, packet


@pytest.mark.parametrize("name", PACKETS)
def test_a_real_ztf_packet_carries_the_names_our_layout_borrows(ztf_alerts: Path, name: str) -> None:
    """Each ZTF packet's writer schema is ztf.alert with candid, objectId, candidate, prv_candidates
    and the three cut-outs as {fileName, stampData} records, and its candid is the file's."""
    schema, packet = read_packet(ztf_alerts / name)
    assert schema["name"] == "ztf.alert"
    fields = {f["name"]: f["type"] for f in schema["fields"]}
    assert {"schemavsn", "publisher", "objectId", "candid", "candidate", "prv_candidates", *CUTOUTS} <= set(fields)
    assert fields["candid"] == "long"
    assert fields["candidate"]["name"] == "ztf.alert.candidate"
    candidate_fields = {f["name"] for f in fields["candidate"]["fields"]}
    assert {"candid", "jd", "ra", "dec", "xpos", "ypos", "magpsf", "sigmapsf", "rb"} <= candidate_fields
    cutout = next(t for t in fields["cutoutScience"] if isinstance(t, dict))
    assert cutout["name"] == "ztf.alert.cutout"
    assert [f["name"] for f in cutout["fields"]] == ["fileName", "stampData"]
    assert str(packet["candid"]) in name
    assert packet["candidate"]["candid"] == packet["candid"]
    assert packet["objectId"].startswith("ZTF")


@pytest.mark.parametrize("name", PACKETS)
def test_a_real_ztf_cutout_is_a_gzipped_fits_file_with_the_decoded_pixels(ztf_alerts: Path, name: str) -> None:
    """Every cut-out of a ZTF packet gunzips to a FITS file that astropy opens, 63x63 pixels equal
    to those of the FITS file kept beside the packet."""
    _, packet = read_packet(ztf_alerts / name)
    for kind in CUTOUTS:
        cut = packet[kind]
        assert cut["fileName"].endswith(".fits.gz")
        with fits.open(io.BytesIO(gzip.decompress(cut["stampData"]))) as hdus:
            data = np.array(hdus[0].data)
        assert data.shape == (63, 63)
        kept = ztf_alerts / "cutouts" / f"{packet['candid']}_{kind}.fits"
        np.testing.assert_array_equal(fits.getdata(kept), data)
