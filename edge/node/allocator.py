"""The C heap of a long-running node process: frame-sized blocks are mapped and given back.

glibc serves a block above its mmap threshold with a mapping of its own and unmaps it on free;
a smaller block comes from the heap, where freed space below the top stays with the process.
By default the threshold moves: each time a mapped block is freed, the threshold rises to that
block's size (up to 32 MiB). After a node's first frames every frame-sized temporary (the raw
frame, the calibrated image, its variance, the background) therefore comes from the heap, and
what is freed between them is kept. A worker's memory then rises in steps whenever a frame
arranges its temporaries differently. A fixed threshold turns the moving one off:
blocks above it are always mapped and always given back, at the cost of fresh page faults on
each one.

Only glibc has these knobs (``mallopt``); elsewhere :func:`fix_mmap_threshold` says so and
changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from edge.log import get_logger

log = get_logger(__name__)

#: glibc's ``mallopt`` parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
#: glibc refuses a threshold above HEAP_MAX_SIZE / 2, 32 MiB on 64-bit systems
MAX_MMAP_THRESHOLD = 32 * 2**20


def fix_mmap_threshold(nbytes: int) -> bool:
    """Map every block of at least ``nbytes`` and give it back on free; True when applied.

    ``nbytes`` 0 leaves the C library's default (glibc: the moving threshold) alone. Logs
    ``heap.mmap_threshold`` with what was done, once per call.
    """
    if nbytes == 0:
        log.info("heap.mmap_threshold", applied=False, detail="the C library's default")
        return False
    if not 0 < nbytes <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"an mmap threshold must be 1 to {MAX_MMAP_THRESHOLD} bytes, not {nbytes}")
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        log.info("heap.mmap_threshold", applied=False, detail=f"not glibc ({libc_name or 'unknown'})")
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(nbytes)))
    if ok:
        log.info("heap.mmap_threshold", applied=True, bytes=nbytes, detail="fixed")
    else:  # asked for and not done: the node's memory will grow as it did without the setting
        log.warning("heap.mmap_threshold", applied=False, bytes=nbytes, detail="glibc refused the value")
    return ok
