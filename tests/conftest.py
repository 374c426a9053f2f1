"""Fixtures for the whole suite: where the real data lives, fixed seeds, hypothesis under CI."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from hypothesis import settings

# Under CI the property tests draw the same examples every run, so a submission passes or fails
# on its code, not on the draw; elsewhere they draw new ones and keep looking for failures.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO / "tests" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The repository's folder of real telescope frames (tests/data/real, README beside them)."""
    return REAL_DATA


@pytest.fixture(scope="session")
def ntt(real_data: Path) -> dict[str, np.ndarray]:
    """The sep-ntt frame, SExtractor's RMS map squared and its catalog (FLAGS == 0 rows, 0-based)."""
    folder = real_data / "sep-ntt"
    with warnings.catch_warnings():
        # the file's non-standard ESO-LOG header cards warn on read; that is the file's, not ours
        warnings.simplefilter("ignore", AstropyUserWarning)
        with fits.open(folder / "image.fits", memmap=False) as hdul:
            image = hdul[0].data.astype(np.float32)
        with fits.open(folder / "rms.fits", memmap=False) as hdul:
            rms = hdul[0].data.astype(np.float32)
    cat = np.loadtxt(folder / "image.cat")
    good = cat[cat[:, 20] == 0]
    return {"image": image, "variance": rms**2, "x": good[:, 1] - 1, "y": good[:, 2] - 1,
            "errx2": good[:, 8], "erry2": good[:, 9]}


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator with a fixed seed, so every test sees the same numbers."""
    return np.random.default_rng(20261128)


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """Each test starts and ends with structlog's defaults, so a command that configured logging
    to a captured stream cannot leave later tests writing to a closed file."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class DiskFault:
    """A disk that fails on command under one path prefix (tests/faults/ioshim.c, preloaded into
    the processes started with :attr:`env`): ``fail("ENOSPC" | "EIO" | "EROFS")`` makes every
    write and sync there fail in the kernel's words until ``heal()``."""

    def __init__(self, library: Path, prefix: Path, control: Path) -> None:
        self.prefix = prefix
        self.control = control
        #: the environment of a process whose writes under ``prefix`` obey this fault
        self.env = {**os.environ, "LD_PRELOAD": str(library), "IOSHIM_PREFIX": str(prefix),
                    "IOSHIM_CONTROL": str(control)}

    def fail(self, error: str) -> None:
        """From now on, writes and syncs under the prefix fail with ``error``."""
        assert error in ("ENOSPC", "EIO", "EROFS"), error
        self.control.write_text(error)

    def heal(self) -> None:
        """The disk works again."""
        self.control.unlink(missing_ok=True)

    def refusals(self) -> int:
        """How many calls the shim has refused so far, over every process."""
        counts = self.control.with_name(self.control.name + ".count")
        return len(counts.read_text().splitlines()) if counts.exists() else 0


@pytest.fixture(scope="session")
def ioshim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault shim, compiled for this machine (./build.sh setup installs a C compiler)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the disk-fault tests compile tests/faults/ioshim.c: install a C compiler (./build.sh setup does)"
    library = tmp_path_factory.mktemp("ioshim") / "libioshim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(library),
                    str(REPO / "tests" / "faults" / "ioshim.c"), "-ldl"], check=True)
    return library


@pytest.fixture
def disk_fault(ioshim: Path, tmp_path: Path):
    """``disk_fault(prefix)``: a :class:`DiskFault` for the files under ``prefix``."""
    made: list[DiskFault] = []

    def make(prefix: Path) -> DiskFault:
        fault = DiskFault(ioshim, prefix, tmp_path / f"ioshim-{len(made)}.ctl")
        made.append(fault)
        return fault

    yield make
    for fault in made:
        fault.heal()
