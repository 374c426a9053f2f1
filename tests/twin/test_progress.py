"""The twin's long writers report their progress to a callback, which only observes."""

from __future__ import annotations

from pathlib import Path

from twin import DetectorModel, TwinConfig, make_calibration_set, write_frames


class Recorder:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, advance: int, total: int) -> None:
        self.calls.append((stage, advance, total))


def test_write_frames_reports_each_frame_against_the_total(tmp_path: Path, small_config: TwinConfig) -> None:
    """`write_frames` announces its stage with the frame count, then one unit per frame written, and
    writes the same bytes as without a callback."""
    progress = Recorder()
    write_frames(tmp_path / "a", small_config, 3, seed=5, progress=progress)
    assert progress.calls == [("writing frames", 0, 3)] + [("writing frames", 1, 3)] * 3
    write_frames(tmp_path / "b", small_config, 3, seed=5)
    assert (tmp_path / "a" / "frame_0002.fits").read_bytes() == (tmp_path / "b" / "frame_0002.fits").read_bytes()


def test_make_calibration_set_reports_every_frame_of_every_kind(tmp_path: Path) -> None:
    """The total is biases + darks + flats per filter, and the units add up to it."""
    progress = Recorder()
    truth = make_calibration_set(tmp_path, DetectorModel(shape_px=(32, 48)), n_bias=2, n_dark=3, n_flat=2,
                                 filters=("r", "i"), progress=progress)
    totals = {total for _, _, total in progress.calls}
    assert totals == {2 + 3 + 2 * 2} == {len(truth.files)}
    assert progress.calls[0][1] == 0 and sum(advance for _, advance, _ in progress.calls) == len(truth.files)
    assert {stage for stage, _, _ in progress.calls} == {"writing calibration frames"}
