"""The review desk's pictures: PNG stamps, the asinh stretch, the heat map and the SVG charts."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge.ground.images import asinh_stretch, heat, line_chart, png, upscale


def read_png(data: bytes) -> np.ndarray:
    """Pixels of a PNG written with filter 0 on every row (what png() writes), checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = body
        pos += 12 + n
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert depth == 8 and (raw[:, 0] == 0).all() and b"IEND" in chunks
    out = raw[:, 1:].reshape(height, width, channels)
    return out[..., 0] if channels == 1 else out


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3]))))
def test_png_round_trips_grey_and_colour_pixels(pixels: np.ndarray) -> None:
    """Any grey or RGB uint8 image comes back from its PNG pixel for pixel."""
    image = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    assert np.array_equal(read_png(png(image)), image)


def test_png_refuses_what_it_cannot_write() -> None:
    """Four channels are not a picture png() writes: said, not guessed."""
    with pytest.raises(ValueError, match="png takes"):
        png(np.zeros((4, 4, 4), np.uint8))


def test_the_stretch_puts_sky_at_black_and_a_source_at_white_without_losing_faint_light() -> None:
    """On a noisy stamp with a bright source, the sky sits near black, the core is white, and a
    faint wing at 3 sigma is visibly above the sky."""
    rng = np.random.default_rng(0)
    stamp = rng.normal(0.0, 1.0, (32, 32))
    stamp[16, 16] = 500.0
    stamp[16, 10:13] += 3.0
    grey = asinh_stretch(stamp)
    assert grey[16, 16] == 255 and np.median(grey) < 20
    assert grey[16, 10:13].mean() > np.median(grey) + 30
    assert asinh_stretch(np.zeros((8, 8))).max() == 0


def test_heat_and_upscale_keep_the_order_of_values_and_the_block_size() -> None:
    """The heat map grows brighter with the value, and each stamp pixel becomes a block."""
    values = np.linspace(0.0, 1.0, 16).reshape(4, 4)
    rgb = heat(values).astype(int).sum(axis=-1).ravel()
    assert (np.diff(rgb) >= 0).all() and rgb[0] == 0 and rgb[-1] == 765
    big = upscale(np.arange(4, dtype=np.uint8).reshape(2, 2), 3)
    assert big.shape == (6, 6) and (big[:3, :3] == 0).all() and (big[3:, 3:] == 3).all()


def test_a_chart_escapes_the_names_it_was_given() -> None:
    """Node ids and series names with markup appear escaped in the SVG, and each series is drawn."""
    svg = line_chart(["2026-12-04T10:00", "2026-12-04T11:00"], {"<script>x</script>": [1, 2], "unknown": [0, 3]},
                     title="node <b>1</b>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "node &lt;b&gt;1&lt;/b&gt;" in svg
    assert svg.count("<polyline") == 2
