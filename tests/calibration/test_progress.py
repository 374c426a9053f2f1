"""`build_bundle` reports each frame read and each master combined; the bundle does not change."""

from __future__ import annotations

from pathlib import Path

from calibration import build_bundle


def test_build_bundle_reports_every_file_and_every_master_against_their_totals(calib_folder: Path,
                                                                                 tmp_path: Path) -> None:
    """Reading counts the folder's FITS files; combining counts the bias, the dark, the r flat and
    the gain; each stage starts at 0 and its units add up to its total; the bundle id is the one
    built without a callback."""
    calls: list[tuple[str, int, int]] = []
    _, bundle_id = build_bundle(calib_folder, tmp_path / "b.fits",
                                progress=lambda stage, advance, total: calls.append((stage, advance, total)))
    n_files = len(list(calib_folder.glob("*.fits")))
    stages: dict[str, list[tuple[int, int]]] = {}
    for stage, advance, total in calls:
        stages.setdefault(stage, []).append((advance, total))
    assert list(stages) == ["reading calibration frames", "combining masters"]
    for stage, expected in (("reading calibration frames", n_files), ("combining masters", 4)):
        assert stages[stage][0] == (0, expected)
        assert {total for _, total in stages[stage]} == {expected}
        assert sum(advance for advance, _ in stages[stage]) == expected
    assert build_bundle(calib_folder, tmp_path / "c.fits")[1] == bundle_id
