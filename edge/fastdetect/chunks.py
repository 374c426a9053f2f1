"""Running a compiled, GIL-free loop over a range in a few threads.

The compiled functions of :mod:`edge.fastdetect` release the GIL (``nogil``), so plain Python
threads run them side by side. Each takes ``(start, stop, *args)`` and writes its part of an
output that the caller allocated. The number of threads comes from ``[detect] threads``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: pieces per thread, so that uneven pieces (crowded rows, big groups) even out
PIECES_PER_THREAD = 4


def in_chunks(fn: Callable[..., None], n: int, threads: int, *args: Any) -> None:
    """Call ``fn(start, stop, *args)`` over ``0 .. n`` in pieces, on ``threads`` threads."""
    if threads <= 1 or n < 2:
        fn(0, n, *args)
        return
    pieces = min(n, threads * PIECES_PER_THREAD)
    bounds = [n * i // pieces for i in range(pieces + 1)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(fn, bounds[i], bounds[i + 1], *args) for i in range(pieces)]:
            future.result()
