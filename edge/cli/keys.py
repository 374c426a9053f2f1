"""``astro-edge keys``: CURVE key pairs for the control and downlink channels.

Light at import: pyzmq is imported when a key pair is made.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``keys`` and its actions to the ``astro-edge`` parser."""
    keys = subparsers.add_parser(
        "keys", help="CURVE key pairs for the control and downlink channels",
        description="Make the CURVE key pairs that encrypt and authenticate the control channel "
                    "(astro-edge ctl) and the downlink (node to ground). Hand out NAME.key; keep "
                    "NAME.key_secret on the machine that owns it. docs/operations.md.")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = sub.add_parser(
        "new", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)",
        description="Write a new CURVE key pair: DIR/NAME.key (public, to hand out) and "
                    "DIR/NAME.key_secret (secret, mode 0600). An existing pair of that name is not "
                    "overwritten.")
    new.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the key files")
    new.add_argument("--name", required=True, metavar="NAME",
                     help="name of the key pair, e.g. node-1 or operator-anna")
    new.add_argument("--signing", action="store_true",
                     help="an Ed25519 key pair to sign engines with instead (astro-edge engines sign): "
                          "NAME.verify_key (public, for [engine] trusted_keys) and NAME.sign_key (secret)")
    new.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    if args.signing:
        from engines.signing import new_signing_key

        public, secret = new_signing_key(args.out, args.name)
    else:
        from edge.link.keys import new_keypair

        public, secret = new_keypair(args.out, args.name)
    print(f"public key (hand out): {public}\nsecret key (keep): {secret}")
    return 0
