"""Downlink compression: zstd with a dictionary of what downlink messages have in common.

A record's msgpack is mostly the same 40 keys, class and reason names, ids and times every
time; its stamp is already zstd. Plain zstd finds little to share inside one small message,
while a dictionary that holds those common strings shrinks a whole message by about a third
(docs/downlink.md, "Compression"). Each dictionary ships with the package under a name, and its
zstd dictionary id is written in every frame, so the ground picks the right one; a new dictionary
gets a new name and id, and the old ones stay here so that old spools and recordings still read.

:func:`train` makes a new dictionary from messages; ``astro-edge link dictionary GROUND_DIR ...
--out FILE`` (:mod:`edge.cli.link`) feeds it what grounds wrote. Pure: no sockets, no files
except the shipped dictionaries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from importlib import resources

import zstandard

from edge.errors import RecordDecodeError

#: compression name -> (dictionary file in edge/link/data, zstd dictionary id)
DICTIONARIES: dict[str, tuple[str, int]] = {"zstd-dict-1": ("downlink-dict-1.zdict", 0x41450001)}
#: the names ``[downlink] compression`` accepts
COMPRESSIONS: tuple[str, ...] = ("none", *DICTIONARIES)
#: a compressed message may not decompress to more than this (a stamp is at most 2^20 values)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: the dictionary size and zstd level a new dictionary is trained and used with
DICT_BYTES = 8192
LEVEL = 3


@functools.cache
def _dictionary(name: str) -> zstandard.ZstdCompressionDict:
    filename, dict_id = DICTIONARIES[name]
    data = resources.files("edge.link").joinpath("data").joinpath(filename).read_bytes()
    zdict = zstandard.ZstdCompressionDict(data)
    if zdict.dict_id() != dict_id:
        raise RuntimeError(f"dictionary {filename} has id {zdict.dict_id():#x}, expected {dict_id:#x}: "
                           "the package's data files are damaged")
    return zdict


def _compressor(zdict: zstandard.ZstdCompressionDict) -> zstandard.ZstdCompressor:
    # the frame carries its size, a checksum and the dictionary id: what decompress() insists on
    return zstandard.ZstdCompressor(level=LEVEL, dict_data=zdict, write_checksum=True,
                                    write_content_size=True, write_dict_id=True)


def compressor(name: str) -> Callable[[bytes], bytes]:
    """A function that compresses one message with the named dictionary (``"none"``: unchanged)."""
    if name == "none":
        return bytes
    if name not in DICTIONARIES:
        raise ValueError(f"unknown downlink compression {name!r}; known: {list(COMPRESSIONS)}")
    return _compressor(_dictionary(name)).compress


@functools.cache
def _decompressors() -> dict[int, zstandard.ZstdDecompressor]:
    return {dict_id: zstandard.ZstdDecompressor(dict_data=_dictionary(name))
            for name, (_, dict_id) in DICTIONARIES.items()}


def decompress(payload: bytes) -> bytes:
    """The message inside one compressed downlink payload; RecordDecodeError when it is not a zstd
    frame made with a dictionary this package knows, states no size, or would exceed MAX_MESSAGE_BYTES."""
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise RecordDecodeError(f"compressed payload is not a zstd frame: {exc}") from None
    dctx = _decompressors().get(params.dict_id)
    if dctx is None:
        known = {hex(i) for _, i in DICTIONARIES.values()}
        raise RecordDecodeError(f"compressed payload uses dictionary id {params.dict_id:#x}; known: {sorted(known)}")
    if not 0 < params.content_size <= MAX_MESSAGE_BYTES:
        raise RecordDecodeError(f"compressed payload states {params.content_size} bytes; "
                                f"a message is 1 to {MAX_MESSAGE_BYTES} bytes")
    try:
        out = dctx.decompress(payload, max_output_size=MAX_MESSAGE_BYTES)
    except zstandard.ZstdError as exc:
        raise RecordDecodeError(f"compressed payload does not decompress: {exc}") from None
    if len(out) != params.content_size:
        raise RecordDecodeError(f"compressed payload gave {len(out)} bytes, its header says {params.content_size}")
    return out


def train(messages: Sequence[bytes], dict_id: int, *, size: int = DICT_BYTES) -> bytes:
    """A zstd dictionary of ``size`` bytes trained on ``messages`` (the bytes the node sends)."""
    if len(messages) < 20:
        raise ValueError(f"training a dictionary needs at least 20 messages, got {len(messages)}")
    return zstandard.train_dictionary(size, list(messages), dict_id=dict_id, level=LEVEL, threads=1).as_bytes()
