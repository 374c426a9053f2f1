"""The C DAQ client, built once per session from clients/c, and the helpers its tests share: run
the example DAQ against a receiver while reading, and load the client's shared library."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "c"
INSTALL = "./build.sh build-c installs the compiler, make, pkg-config and the -dev packages it needs"


@dataclass(frozen=True)
class CClient:
    """The built client: the example DAQ program and the shared library."""

    example: Path
    library: Path


def make_client(build: Path, cstd: str = "c99") -> subprocess.CompletedProcess[str]:
    """Build the client with its Makefile into ``build`` as C ``cstd`` (warnings are errors)."""
    return subprocess.run(["make", "-C", str(CLIENT), "--no-print-directory", f"BUILD={build}", f"CSTD={cstd}"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def c_client() -> CClient:
    """The C client compiled here from clients/c (into clients/c/build, as ./build.sh build-c does)."""
    missing = [tool for tool in ("make", "pkg-config") if shutil.which(tool) is None]
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        missing.append("a C compiler")
    assert not missing, f"the C client's tests need {', '.join(missing)}: {INSTALL}"
    libs = subprocess.run(["pkg-config", "--exists", "--print-errors", "libzmq", "libxxhash"],
                          capture_output=True, text=True)
    assert libs.returncode == 0, f"libzmq or libxxhash is missing ({libs.stderr.strip()}): {INSTALL}"
    build = CLIENT / "build"
    made = make_client(build)
    assert made.returncode == 0, f"the C client does not build:\n{made.stdout}\n{made.stderr}\n{INSTALL}"
    return CClient(example=build / "example_daq", library=build / "libastro_edge_daq.so")


def run_example(client: CClient, address: str, n_frames: int, *args: str,
                on_idle: Callable[[], Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """Run the example DAQ against ``address``, calling ``on_idle()`` (which reads what arrives,
    and returns a falsy value when nothing did) until the DAQ has exited and nothing more comes;
    the DAQ's printed counters."""
    proc = subprocess.Popen([str(client.example), address, str(n_frames), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while on_idle() or proc.poll() is None:
            assert time.monotonic() < deadline, "the example DAQ did not finish"
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, f"example_daq exited {proc.returncode}: {err}"
    return dict(json.loads(out.strip().splitlines()[-1]))


# the client's result codes (astro_edge_daq.h)
SENT, DROPPED, UNDRAINED = 0, 1, 2
ERR_ARG, ERR_STATE = -1, -5


class Counters(ctypes.Structure):
    """ae_daq_counters."""

    _fields_ = [(name, ctypes.c_uint64) for name in
                ("frames_sent", "frames_dropped", "messages_sent", "messages_dropped", "control_retries",
                 "bytes_sent")]


@pytest.fixture(scope="session")
def libdaq(c_client: CClient) -> ctypes.CDLL:
    """The client's shared library with its functions' signatures declared (ctypes lets go of
    the GIL during each call, so a test thread can read while the client waits)."""
    lib = ctypes.CDLL(str(c_client.library))
    p, c_int, u32, u64, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "ae_daq_open": (p, [ctypes.c_char_p, ctypes.c_char_p, c_int, c_int, ctypes.POINTER(c_int)]),
        "ae_daq_set_control_retry_ms": (None, [p, c_int]),
        "ae_daq_series_start": (c_int, [p, u64, ctypes.c_char_p, i64, p]),
        "ae_daq_send_frame": (c_int, [p, p, u32, u32, c_int, ctypes.c_double, ctypes.c_char_p, c_int, p]),
        "ae_daq_heartbeat": (c_int, [p]),
        "ae_daq_series_end": (c_int, [p]),
        "ae_daq_close": (c_int, [p, c_int]),
        "ae_daq_get_counters": (Counters, [p]),
        "ae_daq_next_seq": (u64, [p]),
        "ae_daq_error": (ctypes.c_char_p, [p]),
        "ae_daq_native_dtype": (c_int, [ctypes.c_char, c_int]),
        "ae_daq_json_escape": (ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib
