"""Pictures for the review desk: stamps as PNG (asinh stretch), saliency as a heat map, and
line charts as SVG. Pure functions of arrays and numbers; the PNG is written with zlib alone.

Every text that goes into an SVG is escaped here: node ids and class names come from the node.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from html import escape

import numpy as np
from numpy.typing import NDArray

__all__ = ["asinh_stretch", "heat", "line_chart", "png", "upscale"]

#: colours of the chart's series, one per reason in edge.records.REASONS order (colour-blind safe)
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000")


def png(pixels: NDArray[np.uint8]) -> bytes:
    """A PNG of an (h, w) grey or (h, w, 3) RGB uint8 image."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    if arr.ndim == 2:
        colour, channels = 0, 1
    elif arr.ndim == 3 and arr.shape[2] == 3:
        colour, channels = 2, 3
    else:
        raise ValueError(f"png takes (h, w) or (h, w, 3) pixels, got {arr.shape}")
    height, width = arr.shape[:2]
    rows = arr.reshape(height, width * channels)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def asinh_stretch(plane: NDArray[np.floating], *, soft: float | None = None) -> NDArray[np.uint8]:
    """Grey levels of an image plane: arcsinh of (value - median) / soft, the median at black and
    the 99.5th percentile at white. ``soft`` defaults to the plane's robust noise (MAD), so faint
    structure shows and bright cores do not saturate."""
    a = np.nan_to_num(np.asarray(plane, np.float64))
    med = float(np.median(a))
    if soft is None:
        soft = 1.4826 * float(np.median(np.abs(a - med))) or 1.0
    s = np.arcsinh((a - med) / soft)
    top = float(np.percentile(s, 99.5))
    if top <= 0:
        top = float(s.max()) or 1.0
    return (np.clip(s / top, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def heat(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """An RGB heat map of values (0 and below black, the maximum white through red and yellow)."""
    v = np.asarray(values, np.float64)
    top = float(v.max())
    t = np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v)
    rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def upscale(pixels: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    """Each pixel as a factor x factor block (stamps are 32 px: a browser's smoothing would blur them)."""
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def line_chart(times: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
               width: int = 640, height: int = 200) -> str:
    """An SVG line chart: one polyline per series over equally spaced points labelled by ``times``
    (first and last shown), with a legend. Everything textual is escaped."""
    pad_l, pad_r, pad_t, pad_b = 44, 150, 24, 28
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max(len(times), 1)
    top = max([max(v) for v in series.values() if len(v)] + [1])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" class="chart">',
             f'<text x="{pad_l}" y="15" font-size="13">{escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#888"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + plot_h}" stroke="#888"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 4}" font-size="11" text-anchor="end">{top:g}</text>',
             f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" font-size="11" text-anchor="end">0</text>']
    if times:
        parts.append(f'<text x="{pad_l}" y="{height - 8}" font-size="11">{escape(times[0][:19])}</text>')
        parts.append(f'<text x="{pad_l + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">'
                     f'{escape(times[-1][:19])}</text>')
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{pad_l + (plot_w * j / max(n - 1, 1)):.1f},{pad_t + plot_h * (1 - v / top):.1f}"
                          for j, v in enumerate(values))
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        y = pad_t + 14 * i + 8
        parts.append(f'<rect x="{pad_l + plot_w + 12}" y="{y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{pad_l + plot_w + 26}" y="{y + 1}" font-size="11">{escape(name)} '
                     f'({sum(values):g})</text>')
    parts.append("</svg>")
    return "".join(parts)
