"""``astro-edge twin frames`` and ``astro-edge twin calib``: files on disk, typed errors as exit code 2."""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table

from edge.cli import main


def test_twin_frames_writes_frames_truth_and_catalog(tmp_path, capsys) -> None:
    """The command writes N raw frames with the requested anomalies and transients in the truth."""
    out = tmp_path / "frames"
    rc = main(["twin", "frames", "--n", "2", "--size", "256", "--anomalies", "comet,close_double",
               "--transients", "2", "--seed", "4", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.fits", "frame_0001.fits", "reference_catalog.ecsv",
                                                     "truth.ecsv"]
    truth = Table.read(out / "truth.ecsv")
    anomalies = truth[truth["label"] == "anomaly"]
    assert set(anomalies["family"]) == {"comet", "close_double"} and len(anomalies) == 2 * 2 * 5
    assert np.sum(truth["label"] == "transient") == 4
    with fits.open(out / "frame_0000.fits") as hdul:
        assert hdul[0].data.shape == (256, 256) and hdul[0].header["TWINSEED"] == 4
    stars_per_frame = np.sum((truth["label"] == "star") & (truth["frame"] == 0))
    assert stars_per_frame == round(2000 * (256 / 4096) ** 2)  # --size keeps the default density
    assert "wrote 2 frames" in capsys.readouterr().out


def test_twin_calib_writes_a_calibration_set(tmp_path) -> None:
    """The command writes biases, darks and flats of each filter for the chosen size."""
    rc = main(["twin", "calib", "--size", "64", "--n-bias", "2", "--n-dark", "1", "--n-flat", "2",
               "--filters", "r,i", "--out", str(tmp_path)])
    assert rc == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bias_000.fits", "bias_001.fits", "dark_000.fits", "flat_i_000.fits", "flat_i_001.fits",
                     "flat_r_000.fits", "flat_r_001.fits"]
    assert fits.getheader(tmp_path / "flat_i_001.fits")["FILTER"] == "i"


def test_unknown_anomaly_family_exits_2_with_the_known_ones(tmp_path, capsys) -> None:
    """A misspelt family ends the command with exit code 2 and a line naming the valid families."""
    rc = main(["twin", "frames", "--size", "64", "--anomalies", "lens_ark", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "lens_ark" in err and "lens_arc" in err


def test_bad_size_exits_2(tmp_path, capsys) -> None:
    """A frame size under 16 pixels is refused with exit code 2."""
    assert main(["twin", "calib", "--size", "8", "--out", str(tmp_path)]) == 2
    assert "--size" in capsys.readouterr().err
