"""``astro-edge link``: tools for the downlink itself; ``link dictionary`` trains a compression dictionary.

Light at import: zstandard, the records and the ground's file names are imported when the
command runs. The dictionary is trained by :func:`edge.link.zdict.train`; this module only reads
the ground folders, writes the file and prints what it achieves.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

#: the shipped dictionary whose id --dict-id defaults to (edge.link.zdict.DICTIONARIES)
SHIPPED_DICTIONARY = "zstd-dict-1"


def register(subparsers: Any) -> None:
    """Add ``link`` and its subcommands to the ``astro-edge`` parser."""
    link = subparsers.add_parser(
        "link", help="downlink tools: train a compression dictionary",
        description="Tools for the downlink between node and ground (docs/downlink.md).")
    sub = link.add_subparsers(dest="link_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "dictionary", help="train a zstd dictionary from what grounds received",
        description="Train a zstd compression dictionary for the downlink from the JSON lines one or "
                    "more grounds wrote (downlink.jsonl, frames.jsonl), re-encoded exactly as the node "
                    "sends them, and print its size, id, sha256 and the compression it gives on those "
                    "messages. A new dictionary ships in edge/link/data under a new name and id "
                    "(docs/downlink.md, \"Compression\").")
    p.add_argument("grounds", nargs="+", type=Path, metavar="GROUND_DIR",
                   help="folders a ground wrote (astro-edge ground --out DIR)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="dictionary file to write")
    p.add_argument("--dict-id", type=_dict_id, default=None, metavar="ID",
                   help=f"zstd dictionary id, decimal or 0x hex (default: the id of {SHIPPED_DICTIONARY}, "
                        "the shipped dictionary)")
    p.set_defaults(func=_dictionary)


def _dict_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (decimal or 0x hex)") from None
    if not 1 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} is not a zstd dictionary id (1 to 2^32 - 1)")
    return value


def ground_messages(folders: Sequence[Path]) -> list[bytes]:
    """Every record and frame summary the grounds in ``folders`` wrote, as the node's msgpack bytes."""
    from edge.codec import encode_msgpack, read_jsonl
    from edge.ground.receiver import FRAMES_NAME, RECORDS_NAME

    messages = []
    for folder in folders:
        files = [folder / name for name in (RECORDS_NAME, FRAMES_NAME) if (folder / name).is_file()]
        if not files:
            raise ConfigError(f"holds neither {RECORDS_NAME} nor {FRAMES_NAME}; give a folder a ground wrote",
                              where=str(folder))
        for path in files:
            messages += [encode_msgpack(m) for m in read_jsonl(path).messages]
    return messages


def _dictionary(args: argparse.Namespace) -> int:
    import zstandard

    # the node's own compressor settings, so the printed ratio is what the downlink gets
    from edge.link.zdict import DICTIONARIES, _compressor, train

    dict_id = DICTIONARIES[SHIPPED_DICTIONARY][1] if args.dict_id is None else args.dict_id
    messages = ground_messages(args.grounds)
    if len(messages) < 20:
        raise ConfigError(f"training a dictionary needs at least 20 messages, the folders hold {len(messages)}",
                          where=" ".join(map(str, args.grounds)))
    data = train(messages, dict_id)
    try:
        args.out.write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write the dictionary: {exc.strerror}", where=str(args.out)) from None
    plain = sum(map(len, messages))
    compress = _compressor(zstandard.ZstdCompressionDict(data)).compress
    packed = sum(len(compress(m)) for m in messages)
    print(f"wrote {args.out}: {len(data)} bytes, id {dict_id:#x}, sha256 {hashlib.sha256(data).hexdigest()[:16]}; "
          f"{len(messages)} messages, {plain} -> {packed} bytes ({packed / plain:.3f})")
    return 0
