"""The node's processes give frame-sized memory back to the system (edge/node/allocator.py; the node runs on
glibc systems, Debian, Ubuntu and Jetson alike, and these tests use glibc's own figures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.node.allocator import MAX_MMAP_THRESHOLD, fix_mmap_threshold

# In a fresh interpreter: free one frame-sized array (8 MiB), then hold another and a small block
# above it, free the second frame, and report where glibc put it and what the process kept.
_PROBE = """
import ctypes, json, sys
import numpy as np
from edge.node.allocator import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = fix_mmap_threshold(int(sys.argv[1]))
first = np.ones(4 * 2**20, np.uint16)  # 8 MiB: mapped, whatever the threshold
del first                            # glibc's default now raises its threshold past 8 MiB
frame = np.ones(4 * 2**20, np.uint16)
mapped_while_held = libc.mallinfo2().hblkhd
pin = np.ones(1000)                  # a small block above the frame in the heap
del frame
info = libc.mallinfo2()
print(json.dumps({"applied": applied, "mapped_while_held": mapped_while_held,
                  "heap_free_after": info.fordblks}))
"""


def _probe(threshold: int) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(threshold)], capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fixed_threshold_gives_each_freed_frame_back() -> None:
    frame = 8 * 2**20
    default = _probe(0)
    fixed = _probe(4 * 2**20)
    assert not default["applied"] and fixed["applied"]
    # glibc's moving threshold: the second frame comes from the heap and stays there once freed
    assert default["mapped_while_held"] < frame
    assert default["heap_free_after"] >= frame
    # fixed: the frame is mapped, and freeing it leaves nothing behind in the heap
    assert fixed["mapped_while_held"] >= frame
    assert fixed["heap_free_after"] < frame // 4


def test_an_impossible_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="mmap threshold"):
        fix_mmap_threshold(MAX_MMAP_THRESHOLD + 1)
    with pytest.raises(ValueError, match="mmap threshold"):
        fix_mmap_threshold(-1)
